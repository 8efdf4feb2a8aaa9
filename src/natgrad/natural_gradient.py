"""The entry point: the natural parameter gradient v = G⁻ ∇ξ(L∘φ), G = Jᵀ g J, by the cheapest exact route."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.func import grad as func_grad

from natgrad._checks import check_finite, check_params
from natgrad._routes._dense import solve_dense
from natgrad._routes._krylov import solve_krylov
from natgrad._routes._problem import Problem, output_factor_coefficients
from natgrad._tree import Params, num_params, unflatten_like
from natgrad.linalg import Damped, GInverse, Inverse, MinNorm, MoorePenrose
from natgrad.metrics import Euclidean, Metric
from natgrad.models import Linearization

CALL = "natural_gradient"
ROUTES = ("auto", "primal", "dual", "lstsq", "krylov")
DEFAULT_MEMORY_BUDGET = 2**30  # bytes


@dataclass
class NaturalGradient:
    """The result of :func:`natural_gradient`.

    Attributes:
        direction: v = G⁻ ∇ξ(L∘φ), structured like ``params``.
        pushforward: J v, shaped like ``phi(params)``.
        gradient: the Euclidean gradient ∇ξ(L∘φ) = Jᵀ ∇z L, structured like ``params``.
        rank: numerical rank of G (= of g^{1/2} J) retained by the solve; None on the krylov route.
        method: the route that ran: "primal", "dual", "lstsq" or "krylov".
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
    """Bytes a route allocates for its matrices: A (r×d) plus G (d×d), K (r×r) or the SVD workspace."""
    if route == "primal":
        return itemsize * (r * d + 3 * d * d)
    if route == "dual":
        return itemsize * (2 * r * d + 3 * r * r)
    if route == "lstsq":
        return itemsize * (3 * r * d + 2 * min(r, d) ** 2)
    return itemsize * 8 * (r + d)


def choose_route(r: int, d: int, itemsize: int, budget: int) -> str:
    """The ``method="auto"`` rule.

    Materialise A = Bᵀ J when it fits the memory budget and decompose the smaller Gram matrix: primal (G, d×d)
    when d ≤ r, dual (K, r×r) when r < d. When neither fits, the matrix-free krylov route.
    """
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
        method: "auto" (see :func:`choose_route`), "primal", "dual", "lstsq" or "krylov".
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

    lin = Linearization(phi, params, call=CALL)
    z = lin.z
    if z.dtype != dtype or z.device != device:
        raise TypeError(
            f"{CALL}: phi(params) returned {z.dtype} on {z.device} but the parameters are {dtype} on {device}; "
            "phi must keep the parameters' dtype and device"
        )
    check_finite(CALL, "phi(params) (the model outputs)", z, "check the parameters and inputs")
    loss_value, output_grad = _output_gradient(loss, z)
    check_finite(CALL, "loss(phi(params))", loss_value, "the loss must be finite at the current point")
    check_finite(CALL, "the output gradient ∇z L", output_grad)
    output_grad = output_grad.reshape(-1)
    inverse = _check_inverse(inverse, d, lin.flat)
    local = metric.at(z, call=CALL)
    check_finite(CALL, "the metric factor", local.factor_t_matmul(torch.ones_like(output_grad)))
    grad = lin.vjp(output_grad)
    check_finite(CALL, "the parameter gradient ∇ξ(L∘φ)", grad)
    problem = Problem(lin, local, output_grad, grad, output_factor_coefficients(local, output_grad))

    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    itemsize = lin.flat.element_size()
    r = local.r
    route = choose_route(r, d, itemsize, budget) if method == "auto" else method
    need = route_memory(route, r, d, itemsize)
    if route != "krylov" and need > budget:
        fits = [m for m in ("primal", "dual", "lstsq") if route_memory(m, r, d, itemsize) <= budget] + [
            "krylov"
        ]
        raise MemoryError(
            f"{CALL}: method={route!r} needs about {need / 2**20:.1f} MiB for r={r} weighted outputs and "
            f"d={d} parameters, over the memory budget of {budget / 2**20:.1f} MiB; use method={fits[0]!r} "
            "or raise memory_budget"
        )
    if route == "krylov":
        eps = torch.finfo(dtype).eps
        tol = (1e-12 if eps < 1e-10 else 1e-6) if tol is None else float(tol)
        max_iter = 10 * min(r, d) + 50 if max_iter is None else int(max_iter)
        v, rank, info = solve_krylov(problem, inverse, tol, max_iter)
    else:
        chunk = max(1, min(r, d, budget // max(1, 4 * itemsize * (lin.n + d))))
        v, rank, info = solve_dense(problem, inverse, route, chunk)
    check_finite(CALL, "the natural gradient", v, "the Gram matrix may be too ill-conditioned; try Damped")
    pushforward = lin.jvp(v).reshape(z.shape)
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
