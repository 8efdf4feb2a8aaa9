"""The matrix-free kernel solves against dense float64 linear algebra: per-call tolerances, corrections after a
solve that met its tolerance only on the preconditioned residual, the rounding floor of low-precision products,
and the pivoted Cholesky factor it starts from."""

from __future__ import annotations

import pytest
import torch

from natgrad.linalg._matrix_free_kernel import MatrixFreeKernel
from natgrad.linalg._pivoted_cholesky import pivoted_cholesky

R = 60


def _kernel(spectrum: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Q diag(spectrum) Qᵀ for a seeded orthogonal Q."""
    q, _ = torch.linalg.qr(
        torch.randn(R, R, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return (q * spectrum) @ q.T


def _spectrum(condition: float, top: float = 1e4) -> torch.Tensor:
    """Two large eigenvalues (what a rank-2 preconditioner captures) above a bulk spread over 1 … 1/condition."""
    top = torch.tensor([top, top / 2], dtype=torch.float64)
    return torch.cat(
        [top, torch.logspace(0, -torch.log10(torch.tensor(condition)).item(), R - 2, dtype=torch.float64)]
    )


def _solver(kernel: torch.Tensor, tol: float, matvec=None, eps: float = torch.finfo(torch.float64).eps):
    """Rank-2 preconditioner that may grow to 4 pivots only: the factorisation never completes here."""
    return MatrixFreeKernel(
        matvec or (lambda y: kernel @ y),
        lambda index: kernel[:, index],
        kernel.diagonal().clone(),
        1e-12,
        tol=tol,
        max_iter=2000,
        rank=2,
        max_rank=4,
        factor_eps=eps,
    )


def _rhs() -> torch.Tensor:
    return torch.randn(R, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def test_per_call_tolerance_against_the_dense_pseudo_inverse():
    kernel, b = _kernel(_spectrum(1e3)), _rhs()
    exact = torch.linalg.pinv(kernel) @ b
    tight = _solver(kernel, tol=1e-12)
    assert _relative(tight.pinv(b), exact) <= 1e-9
    loose = _solver(kernel, tol=1e-12)
    y = loose.pinv(b, tol=1e-4)
    assert _relative(kernel @ y, b) <= 1e-4
    assert loose.record.products < tight.record.products
    assert not loose.partial.complete


def test_corrections_reach_the_tolerance_from_a_loose_solve():
    """``_refine`` is what runs when LSQR met tol on its preconditioned residual only; from a deliberately loose
    iterate it must reach the true tolerance and the dense answer."""
    kernel, b = _kernel(_spectrum(10.0, top=100.0)), _rhs()
    solver = _solver(kernel, tol=1e-11)
    exact = torch.linalg.solve(kernel, b)
    noise = torch.randn(R, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    start = exact + 1e-3 * float(exact.norm()) * noise / float(noise.norm())
    residual = _relative(kernel @ start, b)
    assert residual > 1e-5
    entry = {"iterations": 0}
    floor = solver.threshold / solver.preconditioner.sigma
    y, reached = solver._refine(start, b, 1e-11, residual, residual, floor, entry)
    assert reached <= 1e-11 and entry["refinements"] >= 1
    assert _relative(kernel @ y, b) <= 1e-11
    assert _relative(y, exact) <= float(torch.linalg.cond(kernel)) * 1e-11


def test_float32_products_stop_at_their_rounding_floor_instead_of_failing():
    """Products rounded to float32 cannot certify a residual of 1e-12; the solve says it stopped at their floor
    (the caller's own residual then refines) rather than exhausting the preconditioner and raising."""
    kernel, b = _kernel(_spectrum(1e2)), _rhs()
    low = kernel.float()
    solver = _solver(
        kernel, tol=1e-12, matvec=lambda y: (low @ y.float()).double(), eps=torch.finfo(torch.float32).eps
    )
    y = solver.pinv(b)
    entry = solver.record.solves[-1]
    assert entry["at_rounding_floor"] and entry["residual"] > 1e-12
    residual = _relative(kernel @ y, b)
    assert residual <= solver.rounding_floor(y, b)
    condition = float(torch.linalg.cond(kernel))
    assert _relative(y, torch.linalg.solve(kernel, b)) <= condition * residual


@pytest.mark.parametrize("block", [1, 7, 64])
def test_pivoted_cholesky_reproduces_a_full_rank_kernel(block):
    kernel = _kernel(_spectrum(1e3))
    partial = pivoted_cholesky(lambda index: kernel[:, index], kernel.diagonal().clone(), R, 0.0, block=block)
    assert partial.rank == R and partial.complete
    assert _relative(partial.factor @ partial.factor.T, kernel) <= 1e-12
    assert sorted(partial.pivots) == list(range(R))
