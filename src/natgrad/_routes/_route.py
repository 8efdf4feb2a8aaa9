"""The Route protocol: what the registry needs to know about a way of factorising G."""

from __future__ import annotations

from typing import Literal, Protocol

from natgrad._routes._factorization import Factorization
from natgrad._routes._problem import Problem
from natgrad._tree import Params
from natgrad.models import ModuleRecord

RouteName = Literal["primal", "dual", "lstsq", "krylov", "structured", "structured-krylov"]


class Route(Protocol):
    """A way of factorising G = AᵀA at one point (a frozen dataclass in practice)."""

    @property
    def name(self) -> RouteName:
        """The ``method=`` string that selects it."""
        ...

    @property
    def bounded(self) -> bool:
        """Whether ``memory`` bounds what it allocates (False: matrix-free, never refused for memory)."""
        ...

    def memory(self, r: int, d: int, itemsize: int) -> int:
        """Bytes it allocates for r weighted outputs and d parameters, ``itemsize`` bytes per entry.

        A route that also holds data sized by the model rather than by (r, d) adds an optional
        ``held_memory(problem) -> int`` (the structured routes' per-layer factors); the registry adds it.
        """
        ...

    def auto_rank(self, r: int, d: int) -> int | None:
        """``method="auto"``'s preference at this shape: lower is preferred, None never chosen."""
        ...

    def refuses(self, record: ModuleRecord | None, params: Params) -> str | None:
        """Why it cannot run, from what is known before φ runs, or None."""
        ...

    def supports(self, problem: Problem) -> str | None:
        """Why it cannot run on this problem, or None."""
        ...

    def delegate(self, problem: Problem) -> Route:
        """The route that factorises this problem (itself, or one it hands the problem to)."""
        ...

    def factorize(self, problem: Problem) -> Factorization:
        """G factorised at the problem's point (may raise ``StructuredUnsupported``)."""
        ...


class AnyProblem:
    """Mixin for routes that run on every problem: nothing refused, nothing delegated."""

    def refuses(self, record: ModuleRecord | None, params: Params) -> str | None:
        return None

    def supports(self, problem: Problem) -> str | None:
        return None

    def delegate(self, problem: Problem) -> Route:
        return self  # type: ignore[return-value]  # the class that mixes this in is the Route
