"""The ordered route registry: the ``method=`` list, the memory check and its message, and ``auto``.

Adding a route is one module defining a :class:`~natgrad._routes._route.Route` plus one entry in ``ROUTES``:
it then appears in the ``method=`` list and its error message, in the memory check, and (through its
``auto_rank``) in ``auto``, which takes the route of lowest rank that applies at the shape, supports the problem
and fits the budget. A route over the budget names the first route in ``ROUTES`` that fits, bounded routes
before matrix-free ones.
"""

from __future__ import annotations

from collections.abc import Mapping

from natgrad._routes._dense import DUAL, LSTSQ, PRIMAL
from natgrad._routes._krylov import KRYLOV
from natgrad._routes._problem import Problem
from natgrad._routes._route import Route
from natgrad._routes._structured import STRUCTURED
from natgrad._routes._structured_krylov import STRUCTURED_KRYLOV
from natgrad.exceptions import MemoryBudgetError

ROUTES: tuple[Route, ...] = (PRIMAL, DUAL, LSTSQ, KRYLOV, STRUCTURED, STRUCTURED_KRYLOV)


def methods() -> tuple[str, ...]:
    """The valid ``method=`` strings: "auto" and every registered route."""
    return ("auto", *(route.name for route in ROUTES))


def by_name(name: str) -> Route:
    """The registered route called ``name``."""
    return next(route for route in ROUTES if route.name == name)


DEFAULT_MEMORY_BUDGET = 2**30  # bytes


def format_bytes(size: float) -> str:
    """Human-readable size: 512 B, 3.2 KiB, 1.0 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def fits(route: Route, r: int, d: int, itemsize: int, budget: int) -> bool:
    """Whether the route's allocation fits the budget (matrix-free routes always do)."""
    return not route.bounded or route.memory(r, d, itemsize) <= budget


def need(route: Route, problem: Problem) -> int:
    """Bytes the route allocates on this problem: its workspace and what it holds (per-layer factors)."""
    held = getattr(route, "held_memory", None)  # optional: data sized by the model, not by (r, d)
    return route.memory(problem.r, problem.d, problem.itemsize) + (0 if held is None else held(problem))


def fits_problem(route: Route, problem: Problem) -> bool:
    """Whether the route's allocation on this problem fits the budget (matrix-free routes always do)."""
    return not route.bounded or need(route, problem) <= problem.budget


# Why ``auto`` takes each route when it does (the measured rule; see ``choose_route`` for the measurement).
AUTO_RULE = {
    "primal": "d ≤ r: eigh of G (d × d), the smaller Gram matrix, from a dense A",
    "dual": "r < d: K (r × r) from a dense A, the smaller Gram matrix",
    "structured": "r < d and a module model: K (r × r) assembled layer by layer, never A",
    "structured-krylov": "a module model and no dense route fits: matrix-free K products, preconditioned LSQR",
    "krylov": "no dense or structured route applies and fits: LSQR / CG on products with J",
}


def _ranked(r: int, d: int, routes: tuple[Route, ...]) -> list[Route]:
    """``routes`` that ``auto`` may take at (r, d), most preferred first (registry order breaks ties)."""
    ranks = [
        (rank, index, route)
        for index, route in enumerate(routes)
        if (rank := route.auto_rank(r, d)) is not None
    ]
    return [route for *_, route in sorted(ranks, key=lambda item: item[:2])]


def choose(r: int, d: int, itemsize: int, budget: int, usable: tuple[Route, ...] | None = None) -> Route:
    """``auto`` from the shape alone: among ``usable`` routes that fit, the one of lowest ``auto_rank`` at (r, d)."""
    fitting = [
        route
        for route in _ranked(r, d, ROUTES if usable is None else usable)
        if fits(route, r, d, itemsize, budget)
    ]
    if not fitting:
        raise AssertionError("the krylov route always applies and fits")
    return fitting[0]


def _passed_over(route: Route, problem: Problem) -> str | None:
    """Why ``auto`` cannot take ``route`` on this problem (unsupported, handed on, over the budget), or None."""
    reason = route.supports(problem)
    if reason is not None:
        return reason
    if route.delegate(problem) is not route:
        return f"hands this problem to {route.delegate(problem).name} (MinNorm needs the weighted kernel)"
    if not fits_problem(route, problem):
        return f"needs about {format_bytes(need(route, problem))}, over the budget of {format_bytes(problem.budget)}"
    return None


def explain_choice(problem: Problem, refused: Mapping[str, str] | None = None) -> tuple[Route, str]:
    """``auto`` on a problem: the route of lowest ``auto_rank`` that supports it and fits, and why, in words.

    ``refused`` maps routes already given up on (the structured routes, when the layer formulas turned out not
    to apply) to the reason. The sentence names the rule that picked the route at (r, d) and every preferred
    route passed over, with its reason.
    """
    refused = {} if refused is None else refused
    passed: list[str] = []
    for route in _ranked(problem.r, problem.d, ROUTES):
        reason = refused.get(route.name) or _passed_over(route, problem)
        if reason is None:
            rule = AUTO_RULE.get(route.name, route.name)
            skipped = f"; passed over: {'; '.join(passed)}" if passed else ""
            return route, f"{route.name} at r={problem.r}, d={problem.d}: {rule}{skipped}"
        passed.append(f"{route.name} ({reason})")
    raise AssertionError("the krylov route always applies and fits")


def usable_routes(problem: Problem) -> tuple[Route, ...]:
    """The routes auto may pick for this problem: those that support it, factorise it themselves and fit."""
    return tuple(route for route in ROUTES if _passed_over(route, problem) is None)


def check_memory(call: str, requested: Route, problem: Problem) -> None:
    """Refuse a route whose factorisation (its own or its delegate's) would exceed the budget."""
    r, d, budget = problem.r, problem.d, problem.budget
    actual = requested.delegate(problem)
    if fits_problem(actual, problem):
        return
    candidates = sorted(usable_routes(problem), key=lambda route: not route.bounded)
    suggestion = next(route for route in candidates if fits_problem(route, problem))
    held = need(actual, problem) - actual.memory(r, d, problem.itemsize)
    layers = f" (of which {format_bytes(held)} per-layer factors)" if held else ""
    note = getattr(actual, "memory_note", None)  # optional: why the route's own economies do not help
    raise MemoryBudgetError(
        f"{call}: method={requested.name!r} needs about {format_bytes(need(actual, problem))}{layers} for r={r} weighted outputs and "
        f"d={d} parameters, over the memory budget of {format_bytes(budget)}{'' if note is None else note(problem)}; "
        f"use method={suggestion.name!r} or raise memory_budget"
    )
