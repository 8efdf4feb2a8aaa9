"""The entry point: the natural parameter gradient v = G⁻ ∇ξ(L∘φ), G = Jᵀ g J, by the cheapest exact route."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import torch
from torch import Tensor
from torch.func import grad as func_grad

from natgrad._checks import check_finite, check_params, check_real
from natgrad._routes._dense import solve_dense
from natgrad._routes._krylov import solve_krylov
from natgrad._routes._problem import Problem, output_factor_coefficients
from natgrad._routes._structured import StructuredUnsupported, solve_structured, unsupported_reason
from natgrad._tree import Params, num_params, unflatten_like
from natgrad.linalg import Damped, GInverse, Inverse, MinNorm, MoorePenrose
from natgrad.metrics import Euclidean, Metric
from natgrad.models import Linearization, module_record

CALL = "natural_gradient"
ROUTES = ("auto", "primal", "dual", "lstsq", "krylov", "structured")
DEFAULT_MEMORY_BUDGET = 2**30  # bytes


@dataclass
class NaturalGradient:
    """The result of :func:`natural_gradient`.

    Attributes:
        direction: v = G⁻ ∇ξ(L∘φ), structured like ``params``.
        pushforward: J v, shaped like ``phi(params)``.
        gradient: the Euclidean gradient ∇ξ(L∘φ) = Jᵀ ∇z L, structured like ``params``.
        rank: numerical rank of G (= of g^{1/2} J) retained by the solve; None on the krylov route.
        method: the route that ran: "primal", "dual", "lstsq", "krylov" or "structured".
        output: z = phi(params).
        loss: L(z).
        info: route details (cutoff used, whether ∇z L lies in the range of g, Krylov iterations).
    """

    direction: Params
    pushforward: Tensor
    gradient: Params
    rank: int | None
    method: str
    output: Tensor
    loss: Tensor
    info: dict[str, Any] = field(default_factory=dict)


def route_memory(route: str, r: int, d: int, itemsize: int) -> int:
    """Bytes a route allocates for its matrices: A (r×d) plus G (d×d), K (r×r) or the SVD workspace.

    The structured route holds K (r×r) and its eigenvectors but never A; the per-layer signals it also keeps
    (r × the activations of one example, summed over layers) are not counted.
    """
    if route == "structured":
        return itemsize * (3 * r * r + 8 * (r + d))
    if route == "primal":
        return itemsize * (r * d + 3 * d * d)
    if route == "dual":
        return itemsize * (2 * r * d + 3 * r * r)
    if route == "lstsq":
        return itemsize * (3 * r * d + 2 * min(r, d) ** 2)
    return itemsize * 8 * (r + d)


def _format_bytes(size: float) -> str:
    """Human-readable size: 512 B, 3.2 KiB, 1.0 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def choose_route(r: int, d: int, itemsize: int, budget: int, structured: bool = False) -> str:
    """The ``method="auto"`` rule.

    With ``structured=True`` (phi from ``from_module``, a supported model, an inverse other than MinNorm) and
    r < d: the structured route, which assembles K (r×r) layer by layer without A, whenever K fits the budget.
    Otherwise materialise A = Bᵀ J when it fits the memory budget and decompose the smaller Gram matrix:
    primal (G, d×d) when d ≤ r, dual (K, r×r) when r < d. When neither fits, the matrix-free krylov route.
    If the structured route turns out not to apply while it runs (a layer it cannot handle), ``auto`` falls
    back to the rule without it.

    Measured (``benchmarks/crossover.py``, MLPs with d/r from 0.09 to 530, float32): primal was the fastest
    route at every point with d ≤ r; with d > r the structured route was fastest at 14 of 16 points and
    within 1.85× of the fastest (primal or dual, at d/r ≤ 3) at the other two. The split at d = r stands.
    """
    if structured and r < d and route_memory("structured", r, d, itemsize) <= budget:
        return "structured"
    preferred = "primal" if d <= r else "dual"
    return preferred if route_memory(preferred, r, d, itemsize) <= budget else "krylov"


def _check_inverse(inverse: Any, d: int, like: Tensor) -> Inverse:
    if inverse is None:
        return MoorePenrose()
    if not isinstance(inverse, MoorePenrose | GInverse | MinNorm | Damped):
        raise TypeError(
            f"{CALL}: inverse must be MoorePenrose, GInverse, MinNorm or Damped, got {type(inverse).__name__}"
        )
    if isinstance(inverse, GInverse | MinNorm):
        inverse.check(CALL, d, like)
    return inverse


def _output_gradient(loss: Callable[[Tensor], Tensor], z: Tensor) -> tuple[Tensor, Tensor]:
    value_box: list[Tensor] = []

    def scalar_loss(x: Tensor) -> Tensor:
        value = loss(x)
        if not isinstance(value, Tensor) or value.numel() != 1:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{CALL}: loss(z) must return a scalar Tensor, got {got}")
        value = value.reshape(())
        value_box.append(value)
        return value

    g = func_grad(scalar_loss)(z)
    return value_box[0].detach(), g


def _structured_error(reason: str) -> str:
    return (
        f"{CALL}: method='structured' cannot be used here: {reason}; use method='dual' (same result with A "
        "materialised) or method='auto'"
    )


def natural_gradient(
    phi: Callable[[Params], Tensor],
    params: Params,
    loss: Callable[[Tensor], Tensor],
    metric: Metric | None = None,
    inverse: Inverse | None = None,
    method: str = "auto",
    *,
    memory_budget: int | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
) -> NaturalGradient:
    """The natural parameter gradient v = G⁻ ∇ξ(L∘φ) with G = Jᵀ g(z) J, z = φ(ξ), J = Dφ(ξ).

    Args:
        phi: callable from params (a Tensor or a dict of Tensors) to a Tensor of any shape.
        params: the point ξ.
        loss: callable from phi's output to a scalar L(z).
        metric: output metric g (default ``Euclidean()``).
        inverse: generalized inverse (default ``MoorePenrose()``; also ``GInverse``, ``MinNorm``, ``Damped``).
        method: "auto" (see :func:`choose_route`), "primal", "dual", "lstsq", "krylov" or "structured"
            (phi from :func:`~natgrad.from_module` only; the kernel K is built layer by layer).
        memory_budget: bytes the dense routes may allocate (default 1 GiB). An explicit route that would
            exceed it raises an error naming a route that fits.
        tol: relative tolerance of the krylov route (default 1e-12 in float64, 1e-6 in float32).
        max_iter: iteration cap of each Krylov solve (default 10·min(r, d) + 50).

    Returns:
        :class:`NaturalGradient` with direction, pushforward, gradient, rank, method, output, loss.
    """
    if method not in ROUTES:
        raise ValueError(f"{CALL}: method must be one of {', '.join(map(repr, ROUTES))}, got {method!r}")
    if not callable(phi) or not callable(loss):
        raise TypeError(f"{CALL}: phi and loss must be callables (params -> Tensor, Tensor -> scalar)")
    metric = Euclidean() if metric is None else metric
    if not isinstance(metric, Metric):
        raise TypeError(f"{CALL}: metric must be a natgrad.metrics.Metric, got {type(metric).__name__}")
    dtype, device = check_params(CALL, params)
    d = num_params(params)
    if d == 0:
        raise ValueError(f"{CALL}: params have no entries (d = 0); expected at least one scalar parameter")
    budget = (
        DEFAULT_MEMORY_BUDGET
        if memory_budget is None
        else int(check_real(CALL, "memory_budget", memory_budget))
    )
    if tol is not None and not (0 < check_real(CALL, "tol", tol) < 1):
        raise ValueError(f"{CALL}: tol must be in (0, 1) (a relative residual), got {tol!r}")
    if max_iter is not None and (
        isinstance(max_iter, bool) or not isinstance(max_iter, Integral) or max_iter < 1
    ):
        raise ValueError(f"{CALL}: max_iter must be a positive int, got {max_iter!r}")
    record = module_record(phi)
    if method == "structured":  # refuse before running phi (a BatchNorm in training mode breaks torch.func)
        reason = unsupported_reason(record, params)
        if reason is not None:
            raise ValueError(_structured_error(reason))

    lin = Linearization(phi, params, call=CALL)
    z = lin.z
    if z.dtype != dtype or z.device != device:
        raise TypeError(
            f"{CALL}: phi(params) returned {z.dtype} on {z.device} but the parameters are {dtype} on {device}; "
            "phi must keep the parameters' dtype and device"
        )
    if z.numel() == 0:
        raise ValueError(
            f"{CALL}: phi(params) returned an empty tensor of shape {tuple(z.shape)}; expected n ≥ 1 outputs"
        )
    check_finite(CALL, "phi(params) (the model outputs)", z, "check the parameters and inputs")
    loss_value, output_grad = _output_gradient(loss, z)
    check_finite(CALL, "loss(phi(params))", loss_value, "the loss must be finite at the current point")
    check_finite(
        CALL,
        "the output gradient ∇z L",
        output_grad,
        "the loss is not differentiable at z (e.g. sqrt or log at 0)",
    )
    output_grad = output_grad.reshape(-1)
    inverse = _check_inverse(inverse, d, lin.flat)
    local = metric.at(z, call=CALL)
    check_finite(
        CALL,
        "the metric factor",
        local.factor_t_matmul(torch.ones_like(output_grad)),
        f"{metric!r} is not finite at z",
    )
    grad = lin.vjp(output_grad)
    check_finite(
        CALL,
        "the parameter gradient ∇ξ(L∘φ)",
        grad,
        "phi is not differentiable at params (e.g. sqrt at 0) or its derivative overflows",
    )
    problem = Problem(lin, local, output_grad, grad, output_factor_coefficients(local, output_grad))

    itemsize = lin.flat.element_size()
    r = local.r
    refused = None
    if method == "structured":
        reason = unsupported_reason(record, params, z)
        if reason is not None:
            raise ValueError(_structured_error(reason))
        route = method
    elif method == "auto":
        structured = not isinstance(inverse, MinNorm) and unsupported_reason(record, params, z) is None
        route = choose_route(r, d, itemsize, budget, structured=structured)
    else:
        route = method
    # MinNorm on the structured route runs the dual route (see _routes/_structured.py).
    sized = "dual" if route == "structured" and isinstance(inverse, MinNorm) else route
    need = route_memory(sized, r, d, itemsize)
    if route != "krylov" and need > budget:
        fits = [
            m for m in ("primal", "dual", "lstsq", "structured") if route_memory(m, r, d, itemsize) <= budget
        ]
        fits = [m for m in fits if m != "structured" or record is not None] + ["krylov"]
        raise MemoryError(
            f"{CALL}: method={route!r} needs about {_format_bytes(need)} for r={r} weighted outputs and "
            f"d={d} parameters, over the memory budget of {_format_bytes(budget)}; use method={fits[0]!r} "
            "or raise memory_budget"
        )
    chunk = max(1, min(r, d, budget // max(1, 4 * itemsize * (lin.n + d))))
    solved, pushforward = None, None
    if route == "structured":
        try:
            *solved, pushforward = solve_structured(problem, inverse, record, params, chunk)
        except StructuredUnsupported as error:
            if method != "auto":
                raise ValueError(_structured_error(str(error))) from error
            refused = str(error)
            route = choose_route(r, d, itemsize, budget)  # auto: the rule without the structured route
    if solved is None and route == "krylov":
        eps = torch.finfo(dtype).eps
        tol = (1e-12 if eps < 1e-10 else 1e-6) if tol is None else float(tol)
        max_iter = 10 * min(r, d) + 50 if max_iter is None else int(max_iter)
        solved = solve_krylov(problem, inverse, tol, max_iter)
    elif solved is None:
        solved = solve_dense(problem, inverse, route, chunk)
    v, rank, info = solved
    info = {**lin.info, **info}  # how J t was formed, coupled examples
    if refused is not None:
        info = {**info, "structured_refused": refused}
    check_finite(CALL, "the natural gradient", v, "the Gram matrix may be too ill-conditioned; try Damped")
    pushforward = (lin.jvp(v) if pushforward is None else pushforward).reshape(z.shape)
    return NaturalGradient(
        direction=unflatten_like(v, params),
        pushforward=pushforward,
        gradient=unflatten_like(grad, params),
        rank=rank,
        method=route,
        output=z,
        loss=loss_value,
        info=info,
    )
