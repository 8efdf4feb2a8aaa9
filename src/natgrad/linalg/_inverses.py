"""Generalized inverses of the Gram matrix G = Jᵀ g J, as value objects.

Each describes *which* solution of G v = ∇ is wanted; the routes in ``natgrad._routes`` compute it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad._checks import check_like, check_real, check_tensor
from natgrad.exceptions import InvalidInputError


def default_rtol(dtype: torch.dtype, rows: int, cols: int) -> float:
    """Default relative cutoff on the eigenvalues of G: 10 · min(r, d) · eps(dtype).

    Eigenvalues λ ≤ rtol · λ_max are treated as zero. min(r, d) is the size of the smaller Gram matrix
    (G = AᵀA is d×d, K = AAᵀ is r×r; they share their nonzero eigenvalues), and eigenvalues of a Gram matrix
    computed in floating point carry rounding errors of a few eps · λ_max times its size: below this level a
    direction cannot be told from zero. r is the number of metric-weighted outputs, d the parameter count.
    """
    return 10 * max(1, min(rows, cols)) * torch.finfo(dtype).eps


@dataclass(frozen=True)
class MoorePenrose:
    """G⁺: the minimum Euclidean-norm solution of G v = ∇ (least squares if inconsistent).

    Args:
        rtol: eigenvalues of G at or below ``rtol · λ_max`` count as zero. ``None`` uses
            :func:`default_rtol`, 10·min(r, d)·eps. The numerical rank is reported in the result.
    """

    rtol: float | None = None

    def __post_init__(self) -> None:
        if self.rtol is not None and not (0 <= check_real("MoorePenrose", "rtol", self.rtol) < 1):
            raise InvalidInputError(
                "MoorePenrose: rtol must be in [0, 1) (None for the default 10·min(r, d)·eps, see "
                f"natgrad.default_rtol), got {self.rtol!r}"
            )

    def resolve_rtol(self, dtype: torch.dtype, rows: int, cols: int) -> float:
        """The cutoff to apply for an (rows × cols) problem in ``dtype``: ``rtol``, or :func:`default_rtol`."""
        return default_rtol(dtype, rows, cols) if self.rtol is None else float(self.rtol)


@dataclass(frozen=True, eq=False)
class GInverse:
    """Every generalized inverse: G⁻ = G⁺ + (I − G⁺G) U + V (I − G G⁺) for arbitrary d×d U, V.

    Args:
        U: (d, d) tensor or None (zero).
        V: (d, d) tensor or None (zero).
        rtol: cutoff for the G⁺ part, as in :class:`MoorePenrose`.
    """

    U: Tensor | None = None
    V: Tensor | None = None
    rtol: float | None = None

    def check(self, call: str, d: int, like: Tensor) -> None:
        """Raise if U or V is not a finite (d, d) matrix of the parameters' dtype and device."""
        for name in ("U", "V"):
            m = getattr(self, name)
            if m is not None:
                check_like(call, f"GInverse {name}", m, (d, d), like)

    @property
    def moore_penrose(self) -> MoorePenrose:
        """The Moore–Penrose inverse with the same cutoff, which this inverse builds on."""
        return MoorePenrose(self.rtol)


@dataclass(frozen=True, eq=False)
class MinNorm:
    """The minimum h-norm solution: argmin vᵀ h v subject to G v = ∇, for h symmetric positive definite.

    As a generalized inverse, G⁻ = h^{-1/2} (h^{-1/2} G h^{-1/2})⁺ h^{-1/2} (symmetric square root),
    which also defines the answer when G v = ∇ is inconsistent.

    Args:
        h: (d, d) SPD tensor, or a 1-D tensor of d positive entries (diagonal h).
        rtol: cutoff for the pseudo-inverse of h^{-1/2} G h^{-1/2}, as in :class:`MoorePenrose`.
    """

    h: Tensor
    rtol: float | None = None

    def check(self, call: str, d: int, like: Tensor) -> None:
        """Raise if h is not a finite (d,) or (d, d) tensor of the parameters' dtype and device."""
        check_tensor(call, "MinNorm h", self.h)
        shape = (d,) if self.h.ndim == 1 else (d, d)
        check_like(call, "MinNorm h", self.h, shape, like)

    def inv_sqrt(self, call: str) -> Tensor:
        """h^{-1/2}: (d,) for diagonal h, else (d, d) symmetric."""
        h = self.h
        if h.ndim == 1:
            if not bool((h > 0).all()) or not bool(torch.isfinite(h).all()):
                raise InvalidInputError(
                    f"{call}: MinNorm diagonal h must be finite and > 0, got min {float(h.min()):.3g}"
                )
            return h.rsqrt()
        evals, evecs = torch.linalg.eigh((h + h.T) / 2)
        asym = float((h - h.T).abs().max() / h.abs().max().clamp_min(1e-300))
        if asym > 100 * torch.finfo(h.dtype).eps:
            raise InvalidInputError(
                f"{call}: MinNorm h must be symmetric, got max |h - hᵀ| / max |h| = {asym:.3g}"
            )
        if not bool(evals.min() > torch.finfo(h.dtype).eps * evals.max().abs() * h.shape[0]):
            raise InvalidInputError(
                f"{call}: MinNorm h must be positive definite, got smallest eigenvalue {float(evals.min()):.3g}"
            )
        return (evecs * evals.rsqrt()) @ evecs.T

    @property
    def moore_penrose(self) -> MoorePenrose:
        """The Moore–Penrose inverse with the same cutoff, which this inverse builds on."""
        return MoorePenrose(self.rtol)


@dataclass(frozen=True)
class Damped:
    """Tikhonov damping (G + λI)⁻¹ ∇ with λ > 0.

    Not a generalized inverse: J (G + λI)⁻¹ Jᵀ g differs from the projector onto im J by O(λ).
    """

    damping: float

    def __post_init__(self) -> None:
        lam = check_real("Damped", "damping", self.damping)
        if not (lam > 0 and lam < float("inf")):
            raise InvalidInputError(
                f"Damped: damping must be finite and > 0, got {self.damping!r}; use MoorePenrose() for λ = 0"
            )


Inverse = MoorePenrose | GInverse | MinNorm | Damped
"""Any inverse the engine accepts: a generalized inverse (MoorePenrose, GInverse, MinNorm) or Damped."""
