"""Each generalized inverse, written once against a :class:`Factorization`.

* Moore–Penrose: v = G⁺∇.
* GInverse: v = G⁺∇ + (I − G⁺G) U∇ + V (I − G⁺G)∇ (G symmetric, so I − GG⁺ = I − G⁺G).
* MinNorm: a transform of the problem, A ↦ A S with S = h^{-1/2}: v = S (S G S)⁺ S∇, the Moore–Penrose
  solution of the scaled problem mapped back (see ``Problem.scaling``).
* Damped: v = (G + λI)⁻¹∇.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad._routes._factorization import Factorization
from natgrad._routes._problem import RightHandSide, Scaling
from natgrad.linalg import Damped, GInverse, Inverse, MinNorm, MoorePenrose


class RetrySolve(Exception):
    """Raised by ``Factorization.certify`` after it rebuilt itself: the solve must run again."""


def cutoff(inverse: Inverse, dtype: torch.dtype, r: int, d: int) -> float:
    """The eigenvalue cutoff rtol of the factorisation this inverse needs (Damped: the default, for the rank)."""
    if isinstance(inverse, MoorePenrose):
        return inverse.resolve_rtol(dtype, r, d)
    rtol = None if isinstance(inverse, Damped) else inverse.rtol
    return MoorePenrose(rtol).resolve_rtol(dtype, r, d)


def scaling(inverse: Inverse, call: str) -> Scaling | None:
    """S = h^{-1/2} for MinNorm (validated: h symmetric positive definite), else None."""
    return Scaling(inverse.inv_sqrt(call)) if isinstance(inverse, MinNorm) else None


@dataclass(frozen=True)
class Solved:
    """v, and J v when the route computed it on the way (else None)."""

    direction: Tensor
    pushforward: Tensor | None


def _apply(fac: Factorization, inverse: Inverse, rhs: RightHandSide, scale: Scaling | None) -> Solved:
    if isinstance(inverse, Damped):
        v = fac.damped(rhs.grad, rhs.c, float(inverse.damping))
        return Solved(v, fac.certify(v))
    if scale is not None:  # MinNorm: the scaled problem's Moore–Penrose solution, mapped back
        v = fac.pinv(scale(rhs.grad), rhs.c)
        fac.certify(v)
        return Solved(scale(v), None)
    v = fac.pinv(rhs.grad, rhs.c)
    jv = fac.certify(v)
    if isinstance(inverse, GInverse):
        if inverse.U is not None:
            v = v + fac.complement(inverse.U @ rhs.grad)
        if inverse.V is not None:
            v = v + inverse.V @ fac.complement(rhs.grad)
        if inverse.U is not None or inverse.V is not None:
            jv = None
    return Solved(v, jv)


def apply_inverse(fac: Factorization, inverse: Inverse, rhs: RightHandSide, scale: Scaling | None) -> Solved:
    """v = G⁻∇ for ``inverse`` from the factorisation; re-runs when the factorisation rebuilt itself."""
    while True:
        fac.begin()
        try:
            return _apply(fac, inverse, rhs, scale)
        except RetrySolve:
            continue
