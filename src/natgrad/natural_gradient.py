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
    """The ``method="auto"`` rule: the first route in the registry's order that applies, fits and can run.

    With ``structured=True`` (phi from ``from_module``, a supported model, an inverse other than MinNorm) and
    r < d: the structured route, which assembles K (r×r) layer by layer without A, whenever K fits the budget.
    Otherwise materialise A = Bᵀ J when it fits the memory budget and decompose the smaller Gram matrix:
    primal (G, d×d) when d ≤ r, dual (K, r×r) when r < d. When neither fits: the matrix-free
    structured-krylov route for module models with r < d (preconditioned, certified, never resolving a
    direction below the cutoff), else the matrix-free krylov route. If the structured route turns out not to apply while it runs (a layer it cannot handle), ``auto`` falls
    back to the rule without it.

    Measured (``benchmarks/crossover.py``, MLPs with d/r from 0.09 to 530, float32): primal was the fastest
    route at every point with d ≤ r; with d > r the structured route was fastest at 14 of 16 points and
    within 1.85× of the fastest (primal or dual, at d/r ≤ 3) at the other two. The split at d = r stands.
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
