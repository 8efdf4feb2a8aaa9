"""The optimizer's error for a step that was not taken."""

from __future__ import annotations


class NGDStepError(ValueError):
    """`NGD.step` could not compute a usable step; the parameters and the optimizer state are unchanged.

    Raised when the solve fails (e.g. an eigendecomposition that does not converge), when the direction is
    not finite, when the model's outputs do not depend on the parameters, when the curvature is numerically
    zero while the gradient is not, and when lr·v would make a parameter non-finite. The message says which.
    A subclass of ``ValueError``, which the optimizer raised for these cases before.
    """
