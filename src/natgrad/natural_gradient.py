"""The entry point: the natural parameter gradient v = G⁻ ∇ξ(L∘φ), G = Jᵀ g J, by the cheapest exact route."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from natgrad._factorize import prepare
from natgrad._result import NaturalGradient, ParamsT
from natgrad._routes._registry import DEFAULT_MEMORY_BUDGET, ROUTES, by_name, choose, methods
from natgrad._routes._structured import STRUCTURED
from natgrad._routes._structured_krylov import STRUCTURED_KRYLOV
from natgrad._tree import Parametrisation
from natgrad.exceptions import InvalidTypeError
from natgrad.linalg import Inverse
from natgrad.metrics import Metric

CALL = "natural_gradient"

__all__ = ["DEFAULT_MEMORY_BUDGET", "NaturalGradient", "choose_route", "natural_gradient", "route_memory"]


def route_memory(route: str, r: int, d: int, itemsize: int) -> int:
    """Bytes the route ``route`` allocates for its matrices (see each route's ``memory``)."""
    return by_name(route).memory(r, d, itemsize)


def choose_route(r: int, d: int, itemsize: int, budget: int, structured: bool = False) -> str:
    """The ``method="auto"`` rule: among the routes that apply, the most preferred one that fits the budget.

    d ≤ r: primal (eigh of G, d × d), then structured-krylov (``structured=True``), then krylov. r < d, with
    ``structured=True`` (phi from ``from_module``, supported layers, an inverse other than MinNorm): structured
    (K, r × r, assembled layer by layer without A), then dual (K from a dense A), then structured-krylov
    (matrix-free, preconditioned, certified), then krylov; without it: dual, then krylov. "Fits" is what the
    registry counts for the route (``route_memory``; on a real problem also the structured routes' per-layer
    factors). A solve's ``info["auto"]`` says which part of the rule chose its route and why every preferred
    route was passed over. If a structured route turns out not to apply while it runs, ``auto`` continues
    without either structured route.

    Measured (``benchmarks/crossover.py``: MLPs 32-w-w-10 with w = 4–256 and two CNNs, r = 144–4,608, float32,
    single-threaded CPU time in gradients): primal was the fastest route at all 5 points with d ≤ r, 2.4–3.0×
    ahead of structured-krylov; at the 17 points with d > r the dense structured route was the fastest at 16
    (dual was 7 % faster at r = 144, d = 202), and structured-krylov cost 1.9–27× the dense structured route
    at every one, so the dense route goes first while K fits and the matrix-free one takes over beyond it.
    """
    layered = (STRUCTURED, STRUCTURED_KRYLOV)  # both need phi from from_module
    usable = ROUTES if structured else tuple(route for route in ROUTES if route not in layered)
    return choose(r, d, itemsize, budget, usable).name


def natural_gradient(
    phi: Parametrisation,
    params: ParamsT,
    loss: Callable[[Tensor], Tensor],
    metric: Metric | None = None,
    inverse: Inverse | None = None,
    method: str = "auto",
    *,
    memory_budget: int | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    throw: bool = True,
) -> NaturalGradient[ParamsT]:
    """The natural parameter gradient v = G⁻ ∇ξ(L∘φ) with G = Jᵀ g(z) J, z = φ(ξ), J = Dφ(ξ).

    Args:
        phi: callable from params (a Tensor or a dict of Tensors) to a Tensor of any shape.
        params: the point ξ.
        loss: callable from phi's output to a scalar L(z).
        metric: output metric g (default ``Euclidean()``).
        inverse: generalized inverse (default ``MoorePenrose()``; also ``GInverse``, ``MinNorm``, ``Damped``).
        method: "auto" (see :func:`choose_route`), "primal", "dual", "lstsq", "krylov", "structured" or
            "structured-krylov" (these two: phi from :func:`~natgrad.from_module` only; K is built layer by
            layer, or applied matrix-free from the per-layer factors).
        memory_budget: bytes the dense routes may allocate (default 1 GiB). An explicit route that would
            exceed it raises :class:`~natgrad.MemoryBudgetError` naming a route that fits.
        tol: relative tolerance of the krylov route (default 1e-12 in float64, 1e-6 in float32).
        max_iter: iteration cap of each Krylov solve (default 10·min(r, d) + 50).
        throw: raise :class:`~natgrad.ConvergenceError` when a Krylov solve stops above ``tol`` (False: return
            the result with ``status == "max_iter_reached"``).

    Returns:
        :class:`NaturalGradient` with direction, pushforward, gradient, rank, method, output, loss, status.
        The same as ``factorize(phi, params, metric, inverse, method).solve(loss)``.
    """
    if method in methods() and (not callable(phi) or not callable(loss)):
        raise InvalidTypeError(f"{CALL}: phi and loss must be callables (params -> Tensor, Tensor -> scalar)")
    fac = prepare(CALL, phi, params, metric, inverse, method, memory_budget, tol, max_iter, eager=False)
    try:
        return fac.solve(loss, throw=throw)
    finally:
        fac.release()
