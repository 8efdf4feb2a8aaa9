"""Partial pivoted Cholesky factorisation K ≈ L Lᵀ of a PSD matrix given by its columns, and the preconditioner it
defines.

Greedy pivoting on the largest residual diagonal (Harbrecht, Peters & Schneider 2012): after ℓ steps the
residual R = K − L Lᵀ is PSD with trace equal to the sum of the remaining diagonal, so ‖R‖₂ ≤ trace(R), and
the columns of L are combinations of the chosen columns of K, so range(L) ⊆ range(K). Only the diagonal and ℓ
columns of K are read. Columns are fetched in blocks (one matrix product per block) and the block is then
factorised one pivot at a time, so near-duplicate candidates inside a block are still caught.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad.linalg._spectral import robust_eigh


@dataclass
class PartialCholesky:
    """K ≈ L Lᵀ after ``rank`` pivots.

    Attributes:
        factor: L (r, rank).
        pivots: the chosen indices, in order.
        residual_diagonal: diag(K − L Lᵀ) (r,), clamped at zero.
        complete: no residual diagonal entry was above the stopping level: K = L Lᵀ up to it.
    """

    factor: Tensor
    pivots: list[int]
    residual_diagonal: Tensor
    complete: bool

    @property
    def rank(self) -> int:
        """ℓ, the number of pivots."""
        return len(self.pivots)


def pivoted_cholesky(
    columns: Callable[[Tensor], Tensor],
    diagonal: Tensor,
    max_rank: int,
    stop: float,
    block: int = 64,
    start: PartialCholesky | None = None,
) -> PartialCholesky:
    """Greedy partial pivoted Cholesky of a PSD matrix K (r × r).

    Args:
        columns: index tensor (m,) -> K[:, index] (r, m).
        diagonal: diag K (r,).
        max_rank: at most this many pivots (in total, counting those of ``start``).
        stop: pivots stop when every residual diagonal entry is ≤ stop (the factorisation is then complete).
        block: columns fetched per matrix product.
        start: a previous factorisation of the same K to extend.

    Returns:
        The :class:`PartialCholesky`.
    """
    r = diagonal.numel()
    dtype, device = diagonal.dtype, diagonal.device
    max_rank = max(0, min(max_rank, r))
    factor = torch.zeros((r, max_rank), dtype=dtype, device=device)
    if start is not None:
        rank, pivots = start.rank, list(start.pivots)
        factor[:, :rank] = start.factor
        residual = start.residual_diagonal.clone()
    else:
        rank, pivots, residual = 0, [], diagonal.clone().clamp_min(0)
    chosen = torch.zeros(r, dtype=torch.bool, device=device)
    if pivots:
        chosen[torch.tensor(pivots, device=device)] = True
    while rank < max_rank:
        free = torch.where(chosen, torch.zeros_like(residual), residual)
        if float(free.max()) <= stop:
            break
        size = min(block, max_rank - rank, int((free > stop).sum()))
        candidates = torch.topk(free, size).indices
        cols = columns(candidates).to(dtype)
        cols.addmm_(factor[:, :rank], factor[candidates, :rank].T, alpha=-1.0)
        open_ = torch.ones(size, dtype=torch.bool, device=device)
        for _ in range(size):
            pick = torch.where(open_, residual[candidates], torch.full_like(residual[candidates], -1.0))
            j = int(torch.argmax(pick))
            pivot_value = float(pick[j])
            if pivot_value <= stop:
                break
            column = cols[:, j] / pivot_value**0.5
            factor[:, rank] = column
            pivot = int(candidates[j])
            pivots.append(pivot)
            chosen[pivot] = True
            rank += 1
            open_[j] = False
            # In place: at large r a temporary r × block per pivot costs more than the update itself.
            residual.addcmul_(column, column, value=-1.0).clamp_min_(0)
            residual[pivot] = 0.0
            cols.addr_(column, column[candidates], alpha=-1.0)
    free = torch.where(chosen, torch.zeros_like(residual), residual)
    complete = r == 0 or float(free.max()) <= stop
    return PartialCholesky(factor[:, :rank], pivots, residual, complete=complete)


def cholesky_on_pivots(
    columns: Callable[[Tensor], Tensor], diagonal: Tensor, pivots: list[int], stop: float
) -> PartialCholesky | None:
    """K ≈ L Lᵀ on given pivots S (an earlier factorisation's): L = K[:, S] R⁻ᵀ with K[S, S] = R Rᵀ.

    The same L as the greedy factorisation would give with S forced in that order, from one block of columns
    and one ℓ × ℓ Cholesky instead of ℓ rank-one updates of the r × block panel; the residual K − L Lᵀ is the
    Schur complement of K[S, S], PSD, and range(L) ⊆ range(K) as before. None when K[S, S] is not
    numerically positive definite (the pivots do not suit this K: factorise afresh).
    """
    r = diagonal.numel()
    index = torch.tensor(pivots, dtype=torch.long, device=diagonal.device)
    cols = columns(index).to(diagonal.dtype)
    block = cols[index]
    chol, info = torch.linalg.cholesky_ex(0.5 * (block + block.T))
    if int(info) != 0 or not bool(torch.isfinite(chol).all()):
        return None
    head = torch.diagonal(chol)
    if float(head.min()) ** 2 <= stop:  # a pivot at or below the stopping level: not a pivot of this K
        return None
    factor = torch.linalg.solve_triangular(chol, cols.T, upper=False).T
    residual = (diagonal - factor.pow(2).sum(dim=1)).clamp_min(0)
    residual[index] = 0.0
    chosen = torch.zeros(r, dtype=torch.bool, device=diagonal.device)
    chosen[index] = True
    free = torch.where(chosen, torch.zeros_like(residual), residual)
    return PartialCholesky(factor, list(pivots), residual, complete=float(free.max()) <= stop)


class LowRankPreconditioner:
    """P = U (Λ + σ) Uᵀ + σ (I − U Uᵀ) + λ I from K ≈ L Lᵀ = U Λ Uᵀ, and products with P⁻¹ and (L Lᵀ)⁺.

    σ is the size of what L misses (the largest residual diagonal); λ an optional damping of K. P is SPD and,
    because range(U) ⊆ range(K), it maps range(K) and null(K) to themselves: preconditioning does not mix
    the null space of K into the solve.
    """

    def __init__(self, partial: PartialCholesky, sigma: float, damping: float = 0.0) -> None:
        gram = partial.factor.T @ partial.factor
        k = gram.shape[0]
        self.fallback: str | None = None  # the eigh attempt that succeeded when the first failed
        if gram.numel():
            evals, evecs, self.fallback = robust_eigh(gram, f"eigh of the {k} × {k} preconditioner Gram LᵀL")
        else:
            evals, evecs = gram.new_zeros(0), gram
        top = float(evals.max()) if evals.numel() else 0.0
        keep = evals > torch.finfo(evals.dtype).eps * max(top, 0.0) * max(1, evals.numel())
        self.eigenvalues = evals[keep]  # Λ: the nonzero eigenvalues of L Lᵀ
        self.factor, self.vectors = partial.factor, evecs[:, keep]  # U = L V Λ^{-1/2}
        self._basis: Tensor | None = None
        self.sigma = float(sigma)
        self.damping = float(damping)

    @property
    def basis(self) -> Tensor:
        """U = L V Λ^{-1/2} (r × k, orthonormal columns), formed on first use: P⁻¹ alone does not need it."""
        if self._basis is None:
            self._basis = (self.factor @ self.vectors) / self.eigenvalues.sqrt()
        return self._basis

    def top_vector(self) -> Tensor:
        """The unit eigenvector of L Lᵀ for its largest eigenvalue (one product with L)."""
        j = int(torch.argmax(self.eigenvalues))
        return (self.factor @ self.vectors[:, j]) / self.eigenvalues[j].sqrt()

    @property
    def largest(self) -> float:
        """λ_max(L Lᵀ), a lower bound of λ_max(K)."""
        return float(self.eigenvalues.max()) if self.eigenvalues.numel() else 0.0

    def shifted(self, damping: float) -> LowRankPreconditioner:
        """The same P with damping λ = ``damping``: shares U and Λ (no second eigendecomposition)."""
        other = copy.copy(self)
        other.damping = float(damping)
        return other

    @property
    def norm(self) -> float:
        """‖P‖₂."""
        return self.largest + self.sigma + self.damping

    def solve(self, x: Tensor) -> Tensor:
        """P⁻¹ x, as L V diag(f/Λ) Vᵀ Lᵀ x + x/(σ + λ) with f = 1/(Λ + σ + λ) − 1/(σ + λ) (= U f Uᵀ x)."""
        floor = self.sigma + self.damping
        coords = self.vectors.T @ (self.factor.T @ x)
        scale = (1.0 / (self.eigenvalues + floor) - 1.0 / floor) / self.eigenvalues
        return self.factor @ (self.vectors @ (scale * coords)) + x / floor

    def inv_sqrt(self, x: Tensor) -> Tensor:
        """P^{-1/2} x (symmetric square root; maps range(K) and null(K) to themselves like P)."""
        floor = self.sigma + self.damping
        coords = self.basis.T @ x
        scale = (self.eigenvalues + floor).rsqrt() - floor**-0.5
        return self.basis @ (scale * coords) + x / floor**0.5

    def pseudo_inverse(self, x: Tensor, rtol: float) -> tuple[Tensor, int]:
        """(L Lᵀ)⁺ x on the eigenvalues Λ > rtol·Λ_max, and how many were kept."""
        keep = self.eigenvalues > rtol * self.largest
        basis = self.basis[:, keep]
        return basis @ ((basis.T @ x) / self.eigenvalues[keep]), int(keep.sum())
