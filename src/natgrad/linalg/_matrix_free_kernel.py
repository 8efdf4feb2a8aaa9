"""K⁺ x and (K + λI)⁻¹ x for a PSD kernel K known only through products, columns and its diagonal.

A partial pivoted Cholesky factorisation K ≈ L Lᵀ from a few hundred columns gives both the preconditioner and,
when it is complete (every residual diagonal entry at rounding level), the solve itself:

* complete: K = L Lᵀ up to rounding, so K⁺ is applied on the eigenpairs of L Lᵀ above the Moore–Penrose cutoff
  (the literal cutoff, as the dense routes apply it), then refined with true products by corrections that stay
  in the retained eigenvectors' span (so nothing along a dropped direction is ever added back);
* otherwise: LSQR in kernel coordinates (``_lsqr``) preconditioned by P = U(Λ + σ)Uᵀ + σ(I − UUᵀ), σ the largest
  residual diagonal, watching the Ritz values: if K had an eigenvalue μ ≤ τ = rtol·λ_max, then P^{-1/2}KP^{-1/2}
  has one ≤ μ/σ ≤ τ/σ, and a Ritz value below τ/σ means the solve is about to resolve it. The solve then stops
  before it does, and so it does when it cannot meet the tolerance (an inconsistent system, whose exact
  Moore–Penrose answer the complete factorisation gives, or too few iterations): the factorisation is extended
  (rank doubled, up to ``max_rank``) and the solve repeated. When ``max_rank`` is reached, :class:`KernelSolveError`
  says why.

Damped solves (K + λI)⁻¹ need no cutoff: PCG with P + λI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from natgrad.exceptions import ConvergenceError
from natgrad.linalg._krylov import preconditioned_cg
from natgrad.linalg._lsqr import KernelCoordinates, LsqrInfo, solve_lsqr
from natgrad.linalg._pivoted_cholesky import LowRankPreconditioner, PartialCholesky, pivoted_cholesky

Operator = Callable[[Tensor], Tensor]
_MARGIN = (
    0.25  # LSQR's preconditioned residual target, relative to tol: the true residual is a small factor larger
)
_REFINEMENTS = 3  # corrections after LSQR met the tolerance on its preconditioned residual only
_ROUNDING = 10.0  # residual diagonal entries below _ROUNDING·eps·max diag K are rounding: the factorisation is complete


class KernelSolveError(ConvergenceError):
    """The matrix-free kernel solve could not meet its contract; the message says why and what to do."""


@dataclass
class SolveRecord:
    """What the kernel solves did (accumulated over calls): the certificate's inputs."""

    products: int = 0
    column_blocks: int = 0
    solves: list[dict] = field(default_factory=list)


class MatrixFreeKernel:
    """Products with K⁺ (Moore–Penrose cutoff rtol on λ/λ_max) and (K + λI)⁻¹ from products with K.

    Args:
        matvec: y -> K y, (r,) -> (r,) in the working dtype.
        columns: index (m,) -> K[:, index].
        diagonal: diag K in the working dtype.
        rtol: Moore–Penrose cutoff on the eigenvalues of K relative to the largest.
        tol: relative residual each solve must reach (‖K y − b‖ ≤ tol·‖b‖ for consistent b).
        max_iter: products with K per Krylov solve.
        rank: pivots of the first factorisation.
        max_rank: most pivots the memory allows.
        factor_eps: the unit roundoff of the arithmetic the columns were computed in.
        call: the public call, for error messages.
    """

    def __init__(
        self,
        matvec: Operator,
        columns: Operator,
        diagonal: Tensor,
        rtol: float,
        *,
        tol: float,
        max_iter: int,
        rank: int,
        max_rank: int,
        factor_eps: float,
        call: str = "natural_gradient",
    ) -> None:
        self.call = call
        self.record = SolveRecord()
        self._matvec, self._columns = matvec, columns
        self.rtol, self.tol, self.max_iter = float(rtol), float(tol), int(max_iter)
        self.max_rank = max(1, min(int(max_rank), diagonal.numel()))
        self._diagonal = diagonal
        self.factor_eps = float(factor_eps)
        self._stop = _ROUNDING * factor_eps * max(float(diagonal.max()), 0.0) if diagonal.numel() else 0.0
        self.partial = self._factorise(min(max(1, rank), self.max_rank), None)

    def matvec(self, y: Tensor) -> Tensor:
        """K y, counted."""
        self.record.products += 1
        return self._matvec(y)

    def _counted_columns(self, index: Tensor) -> Tensor:
        self.record.column_blocks += 1
        return self._columns(index)

    def _factorise(self, rank: int, start: PartialCholesky | None) -> PartialCholesky:
        partial = pivoted_cholesky(self._counted_columns, self._diagonal, rank, self._stop, start=start)
        sigma = (
            max(float(partial.residual_diagonal.max()), self._stop)
            if partial.rank < self._diagonal.numel()
            else self._stop
        )
        self.preconditioner = LowRankPreconditioner(
            partial, max(sigma, torch.finfo(self._diagonal.dtype).tiny)
        )
        return partial

    def _extend(self, why: str) -> bool:
        """Double the factorisation's rank; False when it is complete or at ``max_rank``."""
        if self.partial.complete or self.partial.rank >= self.max_rank:
            return False
        self.partial = self._factorise(min(2 * self.partial.rank, self.max_rank), self.partial)
        self.record.solves.append({"extended_to": self.partial.rank, "because": why})
        return True

    @property
    def largest(self) -> float:
        """λ_max(L Lᵀ), a lower bound of λ_max(K) (pivoting takes the large directions first)."""
        return self.preconditioner.largest

    @property
    def threshold(self) -> float:
        """τ = rtol·λ_max: eigenvalues at or below are dropped by the Moore–Penrose cutoff."""
        return self.rtol * self.largest

    def _residual(self, y: Tensor, b: Tensor, damping: float = 0.0) -> float:
        b_norm = float(torch.linalg.vector_norm(b))
        if b_norm == 0:
            return 0.0
        return float(torch.linalg.vector_norm(self.matvec(y) + damping * y - b)) / b_norm

    def rounding_floor(self, y: Tensor, b: Tensor) -> float:
        """The residual ‖Ky − b‖/‖b‖ that rounding in the products alone can leave: eps·λ_max·‖y‖/‖b‖."""
        b_norm = float(torch.linalg.vector_norm(b))
        return self.factor_eps * self.largest * float(torch.linalg.vector_norm(y)) / max(b_norm, 1e-300)

    def _lsqr(self, b: Tensor, tol: float, floor: float) -> tuple[Tensor, LsqrInfo]:
        """Coefficients y with Aᵀy = A⁺b by preconditioned LSQR in kernel coordinates, watching θ² against
        ``floor``: min ‖C⁻¹(K y − b)‖ over y, C = P^{1/2}."""
        apply = self.preconditioner.inv_sqrt
        coordinates = KernelCoordinates(self.matvec, apply)
        return solve_lsqr(coordinates, apply(b), tol=tol, max_iter=self.max_iter, ritz_floor=floor)

    def _complete_pinv(self, b: Tensor, tol: float) -> tuple[Tensor, int]:
        y, kept = self.preconditioner.pseudo_inverse(b, self.rtol)
        for _ in range(3):  # refinement by true products, corrections kept in the retained eigenvectors' span
            correction, _ = self.preconditioner.pseudo_inverse(b - self.matvec(y), self.rtol)
            y = y + correction
            if float(torch.linalg.vector_norm(correction)) <= tol * float(torch.linalg.vector_norm(y)):
                break
        return y, kept

    def pinv(self, b: Tensor, tol: float | None = None) -> Tensor:
        """K⁺ b with the cutoff to relative residual ``tol`` (default: the kernel's); raises
        :class:`KernelSolveError` when it cannot be certified."""
        tol = self.tol if tol is None else float(tol)
        while True:
            if self.partial.complete:
                y, kept = self._complete_pinv(b, tol)
                self.record.solves.append({"kind": "pinv", "by": "complete-factorisation", "rank": kept})
                return y
            floor = self.threshold / self.preconditioner.sigma
            y, info = self._lsqr(b, _MARGIN * tol, floor)
            entry = {
                "kind": "pinv",
                "by": "kernel-lsqr",
                "iterations": info.iterations,
                "stopped": info.stopped,
            }
            if info.stopped in ("converged", "least-squares"):
                residual = self._residual(y, b)
                converged = info.stopped == "converged"
                if converged and residual > tol and residual > self.rounding_floor(y, b):
                    y, residual = self._refine(y, b, tol, residual, info.residual, floor, entry)
                entry["residual"] = residual
                # Below the products' rounding floor no K-residual can certify more; the caller's own
                # residual (the route's pushforward) does, and refines from there.
                at_floor = converged and tol < residual <= self.rounding_floor(y, b)
                if residual <= tol or at_floor:
                    entry["at_rounding_floor"] = at_floor
                    self.record.solves.append(entry)
                    return y
                why = (
                    "a right-hand side outside the kernel's range"
                    if info.stopped == "least-squares"
                    else "a residual above the tolerance"
                )
            else:
                why = "an eigenvalue below the cutoff" if info.stopped == "ritz-floor" else "iteration limit"
            self.record.solves.append(entry)
            if not self._extend(why):
                raise KernelSolveError(self._failure(why))

    def _refine(
        self,
        y: Tensor,
        b: Tensor,
        tol: float,
        residual: float,
        preconditioned: float,
        floor: float,
        entry: dict,
    ) -> tuple[Tensor, float]:
        """Corrections y += K⁺(b − K y) after LSQR met ``tol`` on its preconditioned residual ‖C⁻¹(Ky − b)‖/‖C⁻¹b‖
        but not on ‖Ky − b‖/‖b‖ (the two differ by up to cond(P)^½; measured, by a small factor).

        Each correction asks for the reduction still missing divided by twice the ratio of the two residuals
        seen so far, so one short solve usually replaces a doubled factorisation and a solve from scratch.
        Corrections keep the Ritz watch; one that trips it or does not reduce the residual is abandoned (the
        caller then extends the factorisation as before).
        """
        ratio = max(1.0, residual / max(preconditioned, torch.finfo(b.dtype).tiny))
        for attempt in range(1, _REFINEMENTS + 1):
            step = b - self.matvec(y)
            correction, info = self._lsqr(step, min(0.5, tol / residual / (2.0 * ratio)), floor)
            entry["iterations"] += info.iterations
            if info.stopped != "converged":
                break
            refined = y + correction
            refined_residual = self._residual(refined, b)
            if refined_residual >= residual:
                break
            ratio = max(ratio, refined_residual / residual / max(info.residual, torch.finfo(b.dtype).tiny))
            y, residual = refined, refined_residual
            entry["refinements"] = attempt
            if residual <= tol:
                break
        return y, residual

    def damped(self, b: Tensor, damping: float, tol: float | None = None) -> Tensor:
        """(K + λI)⁻¹ b by PCG with the preconditioner shifted by λ, to relative residual ``tol``."""
        tol = self.tol if tol is None else float(tol)
        while True:
            shifted = LowRankPreconditioner(self.partial, self.preconditioner.sigma, damping)
            y, info = preconditioned_cg(
                lambda x: self.matvec(x) + damping * x, b, shifted.solve, tol=tol, max_iter=self.max_iter
            )
            stopped = "converged" if info.converged else "max_iter"
            entry = {"kind": "damped", "by": "pcg", "iterations": info.iterations, "stopped": stopped}
            self.record.solves.append(entry)
            if info.converged:
                residual = self._residual(y, b, damping)
                entry["residual"] = residual
                entry["at_rounding_floor"] = tol < residual <= self.rounding_floor(y, b)
                if residual <= tol or entry["at_rounding_floor"]:
                    return y
            if not self._extend("iteration limit"):
                raise KernelSolveError(self._failure("iteration limit"))

    def _failure(self, why: str) -> str:
        r = self._diagonal.numel()
        advice = {
            "an eigenvalue below the cutoff": "the kernel is nearly singular and the cutoff's answer needs a "
            "complete factorisation; raise memory_budget, use a dense route, or use a larger MoorePenrose(rtol) "
            "or Damped",
            "a right-hand side outside the kernel's range": "the kernel is rank-deficient and the right-hand side has a part outside its range; "
            "raise memory_budget so that the factorisation completes, or use a dense route",
        }.get(why, "raise max_iter or memory_budget, loosen tol, or use a dense route")
        return (
            f"{self.call}: the matrix-free kernel solve (r = {r}) stopped at a preconditioner of rank {self.partial.rank} "
            f"(the most the memory budget allows is {self.max_rank}) because of {why}: {advice}"
        )
