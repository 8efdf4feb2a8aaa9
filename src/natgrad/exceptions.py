"""The errors natgrad raises: one base class, and the built-in class each error was before, kept as a second base.

``except natgrad.NatgradError`` catches everything the library refuses; ``except ValueError`` (or
``TypeError``, ``MemoryError``) keeps working for code written before these classes existed. Messages name the
call, what was expected, what came, and how to fix it.
"""

from __future__ import annotations


class NatgradError(Exception):
    """Base class of every error natgrad raises on purpose."""


class InvalidInputError(NatgradError, ValueError):
    """An argument has the right type but a value the call cannot use (shape, range, non-finite entries)."""


class InvalidTypeError(NatgradError, TypeError):
    """An argument has the wrong type, dtype or device."""


class MemoryBudgetError(NatgradError, MemoryError):
    """The requested route would allocate more than ``memory_budget``; the message names a route that fits."""


class StructuredUnsupported(NatgradError, ValueError):
    """The structured route cannot handle this phi or model.

    Attributes:
        reason: why, without the call prefix (``method="auto"`` records it in ``info["structured_refused"]``).
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = message if reason is None else reason

    @classmethod
    def at(cls, call: str, reason: str) -> StructuredUnsupported:
        """The error ``"{call}: {reason}"``, keeping ``reason`` for callers that add their own prefix."""
        return cls(f"{call}: {reason}", reason)


class ConvergenceError(NatgradError, RuntimeError):
    """An iterative solve stopped at its iteration cap above its tolerance (pass ``throw=False`` to get it).

    Attributes:
        result: the unconverged :class:`~natgrad.NaturalGradient` (``status == "max_iter_reached"``).
    """

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class FactorizationError(NatgradError, RuntimeError):
    """An eigendecomposition or SVD failed (no convergence, or non-finite factors) in every precision tried."""


__all__ = [
    "ConvergenceError",
    "FactorizationError",
    "InvalidInputError",
    "InvalidTypeError",
    "MemoryBudgetError",
    "NatgradError",
    "StructuredUnsupported",
]
