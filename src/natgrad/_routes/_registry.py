"""The ordered route registry: the ``method=`` list, the memory check and its message, and ``auto``.

Adding a route is one module defining a :class:`~natgrad._routes._route.Route` plus one entry in ``ROUTES``:
it then appears in the ``method=`` list and its error message, in the memory check, and (through its
``auto_rank``) in ``auto``, which takes the route of lowest rank that applies at the shape, supports the problem
and fits the budget. A route over the budget names the first route in ``ROUTES`` that fits, bounded routes
before matrix-free ones.
"""

from __future__ import annotations

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


def choose(r: int, d: int, itemsize: int, budget: int, usable: tuple[Route, ...] | None = None) -> Route:
    """``auto``: among ``usable`` routes that fit, the one of lowest ``auto_rank`` at (r, d)."""
    ranked = [
        (rank, index, route)
        for index, route in enumerate(ROUTES if usable is None else usable)
        if (rank := route.auto_rank(r, d)) is not None and fits(route, r, d, itemsize, budget)
    ]
    if not ranked:
        raise AssertionError("the krylov route always applies and fits")
    return min(ranked, key=lambda item: item[:2])[2]


def usable_routes(problem: Problem) -> tuple[Route, ...]:
    """The routes auto may pick for this problem: those that support it, factorise it themselves and fit."""
    return tuple(
        route
        for route in ROUTES
        if route.supports(problem) is None
        and route.delegate(problem) is route
        and fits_problem(route, problem)
    )


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
