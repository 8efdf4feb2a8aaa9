"""A reusable factorisation of G = Jᵀ g J at one point: factorise once, solve for many losses.

``natural_gradient`` is :func:`factorize` followed by one :meth:`GramFactorization.solve`; the optimizer's line
search and momentum, and the diagnostics that need many right-hand sides at one point, keep the factorisation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from numbers import Integral
from typing import Any, Generic, cast

import torch
from torch import Tensor

from natgrad._checks import check_finite, check_params, check_real, check_tensor
from natgrad._loss import output_gradient
from natgrad._result import NaturalGradient, ParamsT, Status
from natgrad._routes._factorization import Factorization, SolveInfo, merge_info
from natgrad._routes._inverse import apply_inverse, cutoff, scaling
from natgrad._routes._problem import Problem, RightHandSide, output_factor_coefficients
from natgrad._routes._registry import (
    DEFAULT_MEMORY_BUDGET,
    by_name,
    check_memory,
    explain_choice,
    methods,
)
from natgrad._routes._route import Route, RouteName
from natgrad._routes._structured import STRUCTURED
from natgrad._routes._structured_krylov import STRUCTURED_KRYLOV
from natgrad._tree import Parametrisation, Params, num_params, unflatten_like
from natgrad.exceptions import ConvergenceError, InvalidInputError, InvalidTypeError, StructuredUnsupported
from natgrad.linalg import Damped, GInverse, Inverse, MinNorm, MoorePenrose
from natgrad.metrics import Euclidean, Metric
from natgrad.models import Linearization, module_record


def default_tolerance(dtype: torch.dtype) -> float:
    """Relative residual tolerance of the Krylov solves: 1e-12 in float64, 1e-6 in float32."""
    return 1e-12 if torch.finfo(dtype).eps < 1e-10 else 1e-6


def structured_error(call: str, reason: str, method: str = "structured") -> StructuredUnsupported:
    """The error for an explicit ``method="structured"`` (or ``"structured-krylov"``) that cannot run, with the fix."""
    return StructuredUnsupported(
        f"{call}: method={method!r} cannot be used here: {reason}; use method='dual' (same result with A "
        "materialised) or method='auto'",
        reason,
    )


def check_inverse(call: str, inverse: Any, d: int, like: Tensor) -> Inverse:
    """The inverse to use (default Moore–Penrose), validated against d parameters like ``like``."""
    if inverse is None:
        return MoorePenrose()
    if not isinstance(inverse, MoorePenrose | GInverse | MinNorm | Damped):
        raise InvalidTypeError(
            f"{call}: inverse must be MoorePenrose, GInverse, MinNorm or Damped, got {type(inverse).__name__}"
        )
    if isinstance(inverse, GInverse | MinNorm):
        inverse.check(call, d, like)
    return inverse


class GramFactorization(Generic[ParamsT]):
    """G = Jᵀ g J factorised at one point by one route, for any number of losses or output gradients.

    Made by :func:`factorize`. ``solve(loss)`` gives the same :class:`NaturalGradient` as
    ``natural_gradient(phi, params, loss, metric, inverse, method)``; ``solve_output_gradient(∇z L)`` the same
    for a given output gradient. Both accept another ``inverse`` with the same cutoff (any ``Damped(λ)``, a
    ``GInverse``), which reuses the factorisation.

    Attributes:
        method: the route that factorised G (after ``auto``'s choice and any fallback).
        rank: numerical rank of G retained by the cutoff (None on the krylov route).
        output: z = phi(params).
        inverse: the inverse the factorisation was made for.
        rtol: the eigenvalue cutoff applied.
    """

    def __init__(
        self,
        call: str,
        problem: Problem,
        route: Route,
        inverse: Inverse,
        auto_reason: str | None,
        eager: bool = True,
    ) -> None:
        self._call, self._problem, self._route, self.inverse = call, problem, route, inverse
        self._auto, self._auto_reason = auto_reason is not None, auto_reason
        self._refused: str | None = None
        self._fac: Factorization | None = None
        if eager:
            self._factorization()

    @property
    def method(self) -> RouteName:
        """The route that factorised G (after ``auto``'s choice and any fallback)."""
        return self._route.name

    @property
    def rank(self) -> int | None:
        """Numerical rank of G retained by the cutoff (None on the krylov route)."""
        return self._factorization().rank

    @property
    def output(self) -> Tensor:
        """z = phi(params), detached."""
        return self._problem.lin.z

    @property
    def rtol(self) -> float:
        """The eigenvalue cutoff λ > rtol·λ_max applied to G."""
        return self._problem.rtol

    @property
    def preconditioner(self) -> object:
        """The ``structured-krylov`` preconditioner its solves ran on, for ``factorize(..., preconditioner=)``
        at a nearby point of the same batch (None for the other routes)."""
        fac = self._factorization()
        reusable = getattr(fac, "reusable", None)
        return reusable() if callable(reusable) else None

    def _fall_back(self, error: StructuredUnsupported) -> None:
        """``auto``: a structured route gave up; continue with the rule without either (they share the layer
        formulas, so what defeats one defeats the other)."""
        if not self._auto:
            raise structured_error(self._call, error.reason, self._route.name) from error
        self._refused = error.reason
        refused: dict[str, str] = {
            r.name: f"refused: {error.reason}" for r in (STRUCTURED, STRUCTURED_KRYLOV)
        }
        self._route, self._auto_reason = explain_choice(self._problem, refused)
        self._fac = None

    def _factorization(self) -> Factorization:
        while self._fac is None:
            try:
                self._fac = self._route.delegate(self._problem).factorize(self._problem)
            except StructuredUnsupported as error:
                self._fall_back(error)
        return self._fac

    def solve(
        self, loss: Callable[[Tensor], Tensor], *, inverse: Inverse | None = None, throw: bool = True
    ) -> NaturalGradient[ParamsT]:
        """The natural gradient of ``loss`` at this point: v = G⁻ Jᵀ ∇z L.

        Args:
            loss: callable from phi's output to a scalar L(z).
            inverse: another inverse with the factorisation's cutoff (default: the one it was made for).
            throw: raise :class:`~natgrad.ConvergenceError` when a Krylov solve stops above its tolerance
                (False: return the result with ``status == "max_iter_reached"``).
        """
        call, z = self._call, self.output
        if not callable(loss):
            raise InvalidTypeError(f"{call}: loss must be a callable (Tensor -> scalar Tensor)")
        loss_value, grad_z = output_gradient(call, loss, z)
        check_finite(call, "loss(phi(params))", loss_value, "the loss must be finite at the current point")
        check_finite(
            call,
            "the output gradient ∇z L",
            grad_z,
            "the loss is not differentiable at z (e.g. sqrt or log at 0)",
        )
        return self._solve(grad_z.reshape(-1), loss_value, inverse, throw)

    def solve_output_gradient(
        self,
        output_grad: Tensor,
        *,
        loss: Tensor | None = None,
        inverse: Inverse | None = None,
        throw: bool = True,
    ) -> NaturalGradient[ParamsT]:
        """The natural gradient for a given output gradient ∇z L (shaped like z, or flat with n entries).

        Args:
            output_grad: ∇z L.
            loss: the loss value to report in the result (default None).
            inverse: as in :meth:`solve`.
            throw: as in :meth:`solve`.
        """
        call, z = self._call, self.output
        check_tensor(call, "output_grad", output_grad)
        if output_grad.numel() != z.numel() or output_grad.ndim not in (1, z.ndim):
            raise InvalidInputError(
                f"{call}: output_grad must have the shape of phi(params) {tuple(z.shape)} or ({z.numel()},), "
                f"got {tuple(output_grad.shape)}"
            )
        if output_grad.dtype != z.dtype or output_grad.device != z.device:
            raise InvalidTypeError(
                f"{call}: output_grad must be {z.dtype} on {z.device} (like phi(params)), got "
                f"{output_grad.dtype} on {output_grad.device}"
            )
        check_finite(call, "output_grad", output_grad)
        return self._solve(output_grad.detach().reshape(-1), loss, inverse, throw)

    def refuses(self, inverse: Inverse) -> str | None:
        """Why ``solve(..., inverse=inverse)`` cannot reuse this factorisation, or None when it can.

        Any ``Damped(λ)`` can; MoorePenrose and GInverse need the factorisation's cutoff; MinNorm only the very
        MinNorm it was made for (h changes the factored matrix).
        """
        problem = self._problem
        inverse = check_inverse(self._call, inverse, problem.d, problem.lin.flat)
        if isinstance(inverse, MinNorm) != isinstance(self.inverse, MinNorm) or (
            isinstance(inverse, MinNorm) and inverse is not self.inverse
        ):
            return (
                f"this factorisation was made for {type(self.inverse).__name__}, got {type(inverse).__name__}; "
                "MinNorm changes the factored matrix, so call factorize again"
            )
        if not isinstance(inverse, Damped):
            wanted = cutoff(inverse, problem.lin.flat.dtype, problem.r, problem.d)
            if wanted != problem.rtol:
                return (
                    f"the inverse's cutoff rtol={wanted:.3g} differs from the factorisation's "
                    f"rtol={problem.rtol:.3g}; call factorize again with this inverse"
                )
        return None

    def _check_override(self, inverse: Inverse) -> Inverse:
        call, problem = self._call, self._problem
        inverse = check_inverse(call, inverse, problem.d, problem.lin.flat)
        reason = self.refuses(inverse)
        if reason is not None:
            raise InvalidInputError(f"{call}: {reason}")
        return inverse

    def _solve(
        self, grad_z: Tensor, loss_value: Tensor | None, inverse: Inverse | None, throw: bool
    ) -> NaturalGradient[ParamsT]:
        call, problem = self._call, self._problem
        inverse = self.inverse if inverse is None else self._check_override(inverse)
        lin = problem.lin
        grad = lin.vjp(grad_z)
        check_finite(
            call,
            "the parameter gradient ∇ξ(L∘φ)",
            grad,
            "phi is not differentiable at params (e.g. sqrt at 0) or its derivative overflows",
        )
        c = output_factor_coefficients(problem.metric, grad_z)
        rhs = RightHandSide(grad_z, grad, c)
        while True:
            fac = self._factorization()
            try:
                solved = apply_inverse(fac, inverse, rhs, problem.scaling)
                break
            except StructuredUnsupported as error:
                self._fall_back(error)
        info = self._info(fac, inverse, c is not None)
        v = solved.direction
        check_finite(
            call, "the natural gradient", v, "the Gram matrix may be too ill-conditioned; try Damped"
        )
        pushforward = (lin.jvp(v) if solved.pushforward is None else solved.pushforward).reshape(lin.z.shape)
        status: Status = "success" if info.get("converged", True) else "max_iter_reached"
        certificate = info.get("certificate") or {}
        if status == "success" and certificate.get("certified") is False:
            # The measured residual is below tol, but a residual read in the model's dtype means nothing below
            # eps·‖A‖‖v‖/‖c‖: the tolerance is not certified, and the result says so.
            status = "at_rounding_floor"
            warnings.warn(
                f"{call}: method='structured-krylov': the measured pushforward residual "
                f"{certificate['residual']:.3g} meets tol {problem.tol:.3g}, but the "
                f"{lin.z.dtype} rounding floor eps·‖A‖‖v‖/‖c‖ = {certificate['rounding_floor']:.3g} is above it, so tol is not "
                "certified (status 'at_rounding_floor'); use a float64 model, tol above the floor, or "
                "method='structured'",
                RuntimeWarning,
                stacklevel=3,
            )
        result = NaturalGradient(
            direction=cast(ParamsT, unflatten_like(v, problem.params)),
            pushforward=pushforward,
            gradient=cast(ParamsT, unflatten_like(grad, problem.params)),
            rank=fac.result_rank(),
            method=self.method,
            output=lin.z,
            loss=loss_value,
            info=info,
            status=status,
        )
        if status != "success" and throw and info.get("near_singular"):
            raise ConvergenceError(
                f"{call}: krylov route stopped before resolving a direction whose singular value is below the "
                f"Moore–Penrose cutoff (rtol {problem.rtol:.3g}); the last iterate before it is not certified; use "
                "method='structured-krylov' (module models) or a dense route, or pass throw=False to get it",
                result,
            )
        if status == "max_iter_reached" and throw:
            raise ConvergenceError(
                f"{call}: krylov route stopped after {problem.max_iter} iterations at relative residual "
                f"{info['residual']:.3g} > tol {problem.tol:.3g}; raise max_iter, loosen tol, use "
                "method='dual', or pass throw=False to get the result with status 'max_iter_reached'",
                result,
            )
        return result

    def _info(self, fac: Factorization, inverse: Inverse, consistent: bool) -> SolveInfo:
        # how J t is formed and whether examples are coupled (models/_linearized.py), then the route's details
        parts: list[dict[str, Any]] = [dict(self._problem.lin.info), {"consistent": consistent}]
        if not isinstance(inverse, Damped) and fac.rank is not None:  # a damped solve applies no cutoff
            parts.append({"rtol": self._problem.rtol if fac.applied_rtol is None else fac.applied_rtol})
        parts.append(dict(fac.info()))
        actual = self._route.delegate(self._problem)
        if actual is not self._route:
            parts.append({"fallback": actual.name})
        if self._refused is not None:
            parts.append({"structured_refused": self._refused})
        if self._auto_reason is not None:
            parts.append({"auto": self._auto_reason})
        return merge_info(*parts)

    def release(self) -> None:
        """Free what the factorisation holds beyond its matrices (the structured route's autograd graph)."""
        if self._fac is not None:
            self._fac.release()


def _check_budget(call: str, memory_budget: object) -> int:
    budget = check_real(call, "memory_budget", memory_budget)
    if not (math.isfinite(budget) and budget >= 0):
        raise InvalidInputError(
            f"{call}: memory_budget must be a finite number of bytes ≥ 0, got {memory_budget!r}; "
            "pass None for the default (1 GiB)"
        )
    return int(budget)


def check_point(
    call: str, phi: object, metric: Metric | None, params: Params
) -> tuple[Metric, torch.dtype, torch.device, int]:
    """Checks of (phi, metric, params) before phi runs; returns (metric or Euclidean(), dtype, device, d)."""
    if not callable(phi):
        raise InvalidTypeError(f"{call}: phi must be a callable (params -> Tensor)")
    metric = Euclidean() if metric is None else metric
    if not isinstance(metric, Metric):
        raise InvalidTypeError(
            f"{call}: metric must be a natgrad.metrics.Metric, got {type(metric).__name__}"
        )
    dtype, device = check_params(call, params)
    if torch.finfo(dtype).bits < 32:
        raise InvalidTypeError(
            f"{call}: parameters are {dtype}; the Gram matrix decompositions (eigh, SVD, Cholesky) need float32 or "
            "float64; convert the parameters (and the model) with .float() or .double()"
        )
    d = num_params(params)
    if d == 0:
        raise InvalidInputError(
            f"{call}: params have no entries (d = 0); expected at least one scalar parameter"
        )
    return metric, dtype, device, d


def check_output_like_params(call: str, z: Tensor, dtype: torch.dtype, device: torch.device) -> None:
    """phi(params) must keep the parameters' dtype and device."""
    if z.dtype != dtype or z.device != device:
        raise InvalidTypeError(
            f"{call}: phi(params) returned {z.dtype} on {z.device} but the parameters are {dtype} on {device}; "
            "phi must keep the parameters' dtype and device"
        )


def prepare(
    call: str,
    phi: Parametrisation,
    params: ParamsT,
    metric: Metric | None,
    inverse: Inverse | None,
    method: str,
    memory_budget: int | None,
    tol: float | None,
    max_iter: int | None,
    eager: bool,
    preconditioner: object = None,
) -> GramFactorization[ParamsT]:
    """Validate the inputs, linearise φ, pick and check the route: the shared body of the public calls."""
    if method not in methods():
        raise InvalidInputError(
            f"{call}: method must be one of {', '.join(map(repr, methods()))}, got {method!r}"
        )
    metric, dtype, device, d = check_point(call, phi, metric, params)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else _check_budget(call, memory_budget)
    if tol is not None and not (0 < check_real(call, "tol", tol) < 1):
        raise InvalidInputError(f"{call}: tol must be in (0, 1) (a relative residual), got {tol!r}")
    if max_iter is not None and (
        isinstance(max_iter, bool) or not isinstance(max_iter, Integral) or max_iter < 1
    ):
        raise InvalidInputError(f"{call}: max_iter must be a positive int, got {max_iter!r}")
    record = module_record(phi)
    requested = None if method == "auto" else by_name(method)
    if requested is not None:  # refuse before running phi (a BatchNorm in training mode breaks torch.func)
        reason = requested.refuses(record, params)
        if reason is not None:
            raise structured_error(call, reason, requested.name)

    lin = Linearization(phi, params, call=call)
    z = lin.z
    check_output_like_params(call, z, dtype, device)
    if z.numel() == 0:
        raise InvalidInputError(
            f"{call}: phi(params) returned an empty tensor of shape {tuple(z.shape)}; expected n ≥ 1 outputs"
        )
    check_finite(call, "phi(params) (the model outputs)", z, "check the parameters and inputs")
    inverse = check_inverse(call, inverse, d, lin.flat)
    local = metric.at(z, call=call)
    check_finite(
        call,
        "the metric factor",
        local.factor_t_matmul(torch.ones_like(z.reshape(-1))),
        f"{metric!r} is not finite at z",
    )
    r = local.r
    problem = Problem(
        lin=lin,
        metric=local,
        record=record,
        params=params,
        rtol=cutoff(inverse, dtype, r, d),
        tol=default_tolerance(dtype) if tol is None else float(tol),
        max_iter=10 * min(r, d) + 50 if max_iter is None else int(max_iter),
        budget=budget,
        scaling=scaling(inverse, call),
        preconditioner=preconditioner,
    )
    auto_reason = None
    if requested is None:
        route, auto_reason = explain_choice(problem)
    else:
        reason = requested.supports(problem)
        if reason is not None:
            raise structured_error(call, reason, requested.name)
        route = requested
    check_memory(call, route, problem)
    return GramFactorization[ParamsT](call, problem, route, inverse, auto_reason, eager=eager)


def factorize(
    phi: Parametrisation,
    params: ParamsT,
    metric: Metric | None = None,
    inverse: Inverse | None = None,
    method: str = "auto",
    *,
    memory_budget: int | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    preconditioner: object = None,
) -> GramFactorization[ParamsT]:
    """Factorise G = Jᵀ g J at ξ = ``params`` once, for natural gradients of many losses at that point.

    Arguments as in :func:`natgrad.natural_gradient` (without the loss). ``fac.solve(loss)`` equals
    ``natural_gradient(phi, params, loss, metric, inverse, method)``; ``fac.solve_output_gradient(∇z L)``
    solves for an output gradient directly; both take ``inverse=Damped(λ)`` (any λ) or another inverse with
    the same cutoff to reuse the factorisation.

    ``preconditioner``: the ``fac.preconditioner`` of an earlier ``structured-krylov`` factorisation (an
    optimizer's previous step). The route preconditions its damped solves with it instead of building one
    when it was built on the same batch and its solves stayed cheap, else builds a new one; the certificate
    is the same either way, and ``info["certificate"]["preconditioner"]`` says what happened. Other routes
    ignore it.

    Returns:
        :class:`GramFactorization`.
    """
    return prepare(
        "factorize",
        phi,
        params,
        metric,
        inverse,
        method,
        memory_budget,
        tol,
        max_iter,
        eager=True,
        preconditioner=preconditioner,
    )


__all__ = ["GramFactorization", "Parametrisation", "factorize"]
