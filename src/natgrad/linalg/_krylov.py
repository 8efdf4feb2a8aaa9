"""Matrix-free Krylov solvers on operator products: LSQR (minimum-norm least squares) and CG (SPD).

LSQR itself is written once, in ``_lsqr``; :func:`lsqr` runs it on the products A·x and Aᵀ·y. CG is written
once here, with an optional preconditioner (the matrix-free kernel's damped solves use it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad.linalg._lsqr import OperatorCoordinates, solve_lsqr

Operator = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class KrylovInfo:
    """How a Krylov solve ended: iterations used, final residual measure, and whether it met the tolerance."""

    iterations: int
    residual: float
    converged: bool
    near_singular: bool = False  # stopped before resolving a singular value below the cutoff (see ``lsqr``)


def lsqr(
    matvec: Operator,
    rmatvec: Operator,
    b: Tensor,
    n_cols: int,
    *,
    tol: float,
    max_iter: int,
    cutoff: float | None = None,
) -> tuple[Tensor, KrylovInfo]:
    """x = A⁺ b by LSQR (Paige & Saunders 1982) from x₀ = 0, using only A·x and Aᵀ·y.

    Started at zero, the iterates stay in im Aᵀ, so the limit is the minimum-norm least-squares solution.
    Stops when ‖r‖ ≤ tol·‖b‖ (consistent systems) or ‖Aᵀr‖ ≤ tol·‖A‖_F·‖r‖ (inconsistent ones).

    With ``cutoff`` (the Moore–Penrose rtol on σ²/σ²_max) the Ritz values θ² of the bidiagonal are watched: a
    θ² ≤ cutoff·θ²_max means LSQR is about to resolve a direction the cutoff drops (and would blow up along
    it). It then returns the last iterate checked before, with ``converged=False, near_singular=True``.
    """
    coordinates = OperatorCoordinates(matvec, rmatvec, n_cols)
    x, info = solve_lsqr(coordinates, b, tol=tol, max_iter=max_iter, ritz_cutoff=cutoff)
    return x, KrylovInfo(info.iterations, info.residual, info.converged, info.stopped == "ritz-floor")


def cg(matvec: Operator, b: Tensor, *, tol: float, max_iter: int) -> tuple[Tensor, KrylovInfo]:
    """x = M⁻¹ b by conjugate gradients for symmetric positive definite M; stops at ‖r‖ ≤ tol·‖b‖."""
    return preconditioned_cg(matvec, b, None, tol=tol, max_iter=max_iter)


def preconditioned_cg(
    matvec: Operator, b: Tensor, precondition: Operator | None, *, tol: float, max_iter: int
) -> tuple[Tensor, KrylovInfo]:
    """x = M⁻¹ b for SPD M by CG preconditioned with ``precondition`` (z = P⁻¹r; None: none).

    Stops at ‖b − M x‖ ≤ tol·‖b‖. The scalars stay on the device: one read per iteration, for that test.
    """
    x = torch.zeros_like(b)
    b_norm = torch.linalg.vector_norm(b)
    if b_norm == 0:
        return x, KrylovInfo(0, 0.0, True)
    residual = b.clone()
    z = residual if precondition is None else precondition(residual)
    direction = z.clone()
    rz = residual @ z
    norm = b_norm
    for it in range(1, max_iter + 1):
        product = matvec(direction)
        step = rz / (direction @ product)
        x = x + step * direction
        residual = residual - step * product
        norm = torch.linalg.vector_norm(residual)
        if norm <= tol * b_norm:
            return x, KrylovInfo(it, float(norm / b_norm), True)
        z = residual if precondition is None else precondition(residual)
        rz_next = residual @ z
        direction = z + (rz_next / rz) * direction
        rz = rz_next
    return x, KrylovInfo(max_iter, float(norm / b_norm), False)
