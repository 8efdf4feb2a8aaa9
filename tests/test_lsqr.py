"""The one LSQR (``natgrad.linalg._lsqr``) and the one CG against dense float64 least squares (torch.linalg.pinv,
torch.linalg.solve): consistent and inconsistent systems, rank-deficient A, operator and kernel coordinates, a
preconditioner, the Ritz watch on a near-singular system, and the status when the tolerance is not reached."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from natgrad.linalg import cg, lsqr
from natgrad.linalg._krylov import preconditioned_cg
from natgrad.linalg._lsqr import KernelCoordinates, OperatorCoordinates, solve_lsqr

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA")),
]


def _orthonormal(n: int, k: int, gen: torch.Generator) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    return q


def _matrix(rows: int, cols: int, singular_values: Tensor, seed: int) -> Tensor:
    """U diag(s) Vᵀ with seeded orthonormal U (rows × k), V (cols × k), k = len(s)."""
    gen = torch.Generator().manual_seed(seed)
    k = singular_values.numel()
    return (_orthonormal(rows, k, gen) * singular_values) @ _orthonormal(cols, k, gen).T


def _relative(a: Tensor, b: Tensor) -> float:
    return float(torch.linalg.vector_norm(a.double().cpu() - b) / torch.linalg.vector_norm(b))


def _operator(a: Tensor) -> OperatorCoordinates:
    return OperatorCoordinates(lambda x: a @ x, lambda y: a.T @ y, a.shape[1])


def _rhs(n: int, seed: int) -> Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


SPREAD = torch.logspace(1, -1, 12, dtype=torch.float64)  # cond(A) = 100


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("rows", "cols", "rank", "consistent", "stopped"),
    [
        (12, 30, 12, True, "converged"),  # wide, full row rank: every b is in range(A)
        (30, 12, 12, False, "least-squares"),  # tall: b has a part outside range(A)
        (25, 20, 8, False, "least-squares"),  # rank-deficient: the minimum-norm least-squares solution
    ],
    ids=["consistent-wide", "inconsistent-tall", "rank-deficient"],
)
def test_operator_coordinates_give_the_pseudo_inverse(rows, cols, rank, consistent, stopped, device):
    a = _matrix(rows, cols, SPREAD[:rank], seed=rows + cols)
    b = _rhs(rows, seed=1)
    exact = torch.linalg.pinv(a) @ b
    assert bool(torch.allclose(a @ exact, b)) == consistent
    a_dev = a.to(device)
    x, info = solve_lsqr(_operator(a_dev), b.to(device), tol=1e-13, max_iter=200)
    assert x.device.type == device and info.stopped == stopped and info.converged
    assert _relative(x, exact) <= 1e-9
    # the reported residual is ‖b − A x‖/‖b‖ of the returned iterate
    assert abs(info.residual - _relative(a @ x.double().cpu(), b)) <= 1e-9
    # the iterate lies in range(Aᵀ) (no null-space part), as the minimum-norm solution does
    projector = torch.linalg.pinv(a) @ a
    assert _relative(projector @ x.double().cpu(), x.double().cpu()) <= 1e-10


def test_float32_operator_solve_agrees_with_float64():
    a = _matrix(12, 30, SPREAD, seed=42)
    b = _rhs(12, seed=2)
    x, info = lsqr(lambda x: a.float() @ x, lambda y: a.float().T @ y, b.float(), 30, tol=1e-6, max_iter=200)
    assert x.dtype == torch.float32 and info.converged
    assert _relative(x, torch.linalg.pinv(a) @ b) <= 1e-4


def _inv_sqrt_preconditioner(kernel: Tensor, keep: int) -> Tensor:
    """P^{-1/2} for P = U(Λ + σ)Uᵀ + σ(I − UUᵀ) on K's top ``keep`` eigenpairs, σ the next eigenvalue: SPD, and
    it maps range(K) and null(K) to themselves."""
    evals, evecs = torch.linalg.eigh(kernel)
    top, basis = evals[-keep:], evecs[:, -keep:]
    sigma = float(evals[-keep - 1])
    eye = torch.eye(kernel.shape[0], dtype=kernel.dtype)
    return (basis * ((top + sigma).rsqrt() - sigma**-0.5)) @ basis.T + eye * sigma**-0.5


@pytest.mark.parametrize("rank", [20, 14], ids=["full-rank-kernel", "rank-deficient-kernel"])
def test_kernel_coordinates_with_a_preconditioner_give_the_pseudo_inverse(rank):
    """v = Aᵀy = A⁺c from products with K = AAᵀ only; preconditioning keeps the answer and cuts the iterations."""
    singular_values = torch.logspace(1, -1, rank, dtype=torch.float64)
    a = _matrix(20, 40, singular_values, seed=rank)
    kernel = a @ a.T
    c = _rhs(20, seed=3)
    exact = torch.linalg.pinv(a) @ c
    inv_sqrt = _inv_sqrt_preconditioner(kernel, keep=6)
    iterations = {}
    for name, precondition in (("plain", None), ("preconditioned", lambda x: inv_sqrt @ x)):
        coordinates = KernelCoordinates(lambda y: kernel @ y, precondition)
        rhs = c if precondition is None else precondition(c)
        y, info = solve_lsqr(coordinates, rhs, tol=1e-14, max_iter=500)
        assert info.converged, name
        assert info.stopped == ("converged" if rank == 20 else "least-squares"), name
        assert _relative(a.T @ y, exact) <= 1e-9, name
        iterations[name] = info.iterations
        # θ²_max of the bidiagonal estimates λ_max of the (preconditioned) kernel
        operator = kernel if precondition is None else inv_sqrt @ kernel @ inv_sqrt
        largest = float(torch.linalg.eigvalsh(operator)[-1])
        assert abs(info.ritz_bounds[1] - largest) <= 2e-3 * largest, name
    assert iterations["preconditioned"] < iterations["plain"]


def _near_singular() -> tuple[Tensor, Tensor, float]:
    """A with σ = 1 … 1e-2 and two near-null directions σ = 1e-9, 3e-10; b = A x plus 1e-6 along their left
    singular vectors, so A⁺b blows up (‖A⁺b‖ ≈ 600·‖answer of the cutoff‖)."""
    gen = torch.Generator().manual_seed(0)
    u, v = _orthonormal(14, 10, gen), _orthonormal(12, 10, gen)
    s = torch.cat(
        [torch.logspace(0, -2, 8, dtype=torch.float64), torch.tensor([1e-9, 3e-10], dtype=torch.float64)]
    )
    a = (u * s) @ v.T
    b = a @ torch.randn(12, generator=gen, dtype=torch.float64)
    b = b + 1e-6 * u[:, 8:] @ torch.randn(2, generator=gen, dtype=torch.float64)
    return a, b, 1e-12  # cutoff on σ²/σ²_max: drops the two near-null directions


def test_ritz_watch_stops_before_resolving_a_direction_below_the_cutoff():
    a, b, cutoff = _near_singular()
    cutoffs_answer = torch.linalg.pinv(a, rtol=cutoff**0.5) @ b
    unwatched, info = solve_lsqr(_operator(a), b, tol=1e-13, max_iter=200)
    assert info.converged and _relative(unwatched, torch.linalg.pinv(a) @ b) <= 1e-6
    assert float(unwatched.norm()) > 100 * float(cutoffs_answer.norm())  # what the watch must prevent
    x, info = solve_lsqr(_operator(a), b, tol=1e-13, max_iter=200, ritz_cutoff=cutoff)
    assert info.stopped == "ritz-floor" and not info.converged
    assert info.ritz_bounds[0] < cutoff * info.ritz_bounds[1]  # the bidiagonal saw the dropped direction
    # the last checked iterate: semi-convergence leaves it close to, not at, the cutoff's answer
    assert _relative(x, cutoffs_answer) <= 1e-3
    # the public wrapper says the same
    x_public, public = lsqr(lambda x: a @ x, lambda y: a.T @ y, b, 12, tol=1e-13, max_iter=200, cutoff=cutoff)
    assert public.near_singular and not public.converged and torch.equal(x_public, x)


def test_kernel_ritz_floor_fires_on_a_near_singular_kernel():
    """An eigenvalue of K at 1e-10·λ_max (above the rounding of yᵀKy, below a floor of 1e-8·λ_max): the solve
    stops with 'ritz-floor' before resolving it, and without the floor it resolves it (the exact A⁺c)."""
    s = torch.cat([torch.logspace(0, -1, 10, dtype=torch.float64), torch.tensor([1e-5], dtype=torch.float64)])
    a = _matrix(11, 30, s, seed=5)
    kernel = a @ a.T
    c = _rhs(11, seed=6)
    coordinates = KernelCoordinates(lambda y: kernel @ y)
    y, info = solve_lsqr(coordinates, c, tol=1e-13, max_iter=200)
    assert info.converged and _relative(a.T @ y, torch.linalg.pinv(a) @ c) <= 1e-6
    y, info = solve_lsqr(coordinates, c, tol=1e-13, max_iter=200, ritz_floor=1e-8)
    assert info.stopped == "ritz-floor" and not info.converged
    assert info.ritz_bounds[0] < 1e-8
    cutoffs_answer = torch.linalg.pinv(a, rtol=1e-4) @ c  # σ/σ_max > 1e-4 ⇔ λ/λ_max > 1e-8
    assert float((a.T @ y).norm()) <= 1.01 * float(cutoffs_answer.norm())


def test_kernel_direction_at_rounding_level_counts_as_exhausted():
    """Eigenvalues of K at 1e-20·λ_max are below what yᵀKy resolves: the Krylov space ends there and the
    answer is the one without them, not rounding blown up."""
    a, b, cutoff = _near_singular()
    kernel = a @ a.T
    y, info = solve_lsqr(KernelCoordinates(lambda y: kernel @ y), b, tol=1e-13, max_iter=200)
    assert info.stopped == "least-squares"
    assert _relative(a.T @ y, torch.linalg.pinv(a, rtol=cutoff**0.5) @ b) <= 1e-9


@pytest.mark.parametrize("device", DEVICES)
def test_tolerance_not_reached_says_so(device):
    a = _matrix(12, 30, SPREAD, seed=7).to(device)
    b = _rhs(12, seed=8).to(device)
    x, info = solve_lsqr(_operator(a), b, tol=1e-13, max_iter=3)
    assert info.stopped == "max_iter" and not info.converged and info.iterations == 3
    assert info.residual > 1e-13
    assert abs(info.residual - _relative(a @ x, b.double().cpu())) <= 1e-9
    _, public = lsqr(lambda x: a @ x, lambda y: a.T @ y, b, 30, tol=1e-13, max_iter=3)
    assert not public.converged and not public.near_singular
    m = a.T @ a + 0.1 * torch.eye(30, dtype=a.dtype, device=device)
    _, cg_info = cg(lambda x: m @ x, a.T @ b, tol=1e-13, max_iter=3)
    assert not cg_info.converged and cg_info.iterations == 3 and cg_info.residual > 1e-13


def test_right_hand_side_orthogonal_to_the_range():
    """Aᵀb = 0 exactly (b lives on the zero rows of A): x = 0 is the least-squares answer, found without an
    iteration, and the residual is reported relative, 1."""
    gen = torch.Generator().manual_seed(9)
    a = torch.cat(
        [torch.randn(6, 8, generator=gen, dtype=torch.float64), torch.zeros(4, 8, dtype=torch.float64)]
    )
    b = torch.cat([torch.zeros(6, dtype=torch.float64), torch.randn(4, generator=gen, dtype=torch.float64)])
    x, info = lsqr(lambda x: a @ x, lambda y: a.T @ y, b, 8, tol=1e-12, max_iter=50)
    assert info.converged and info.iterations == 0 and info.residual == 1.0
    assert torch.equal(x, torch.zeros(8, dtype=torch.float64))


@pytest.mark.parametrize("device", DEVICES)
def test_conjugate_gradients_with_and_without_a_preconditioner(device):
    a = _matrix(40, 40, torch.logspace(2, 0, 40, dtype=torch.float64), seed=10)
    m = a.T @ a + 0.5 * torch.eye(40, dtype=torch.float64)  # SPD, cond ≈ 2e4
    b = _rhs(40, seed=11)
    exact = torch.linalg.solve(m, b)
    evals, evecs = torch.linalg.eigh(m)
    top, basis, sigma = evals[-10:], evecs[:, -10:], float(evals[-11])
    inverse = (basis * (1 / top - 1 / sigma)) @ basis.T + torch.eye(40, dtype=torch.float64) / sigma
    m_dev, b_dev, inverse_dev = m.to(device), b.to(device), inverse.to(device)
    x, plain = cg(lambda x: m_dev @ x, b_dev, tol=1e-12, max_iter=500)
    assert plain.converged and _relative(x, exact) <= 1e-8 and x.device.type == device
    x, pre = preconditioned_cg(lambda x: m_dev @ x, b_dev, lambda r: inverse_dev @ r, tol=1e-12, max_iter=500)
    assert pre.converged and _relative(x, exact) <= 1e-8
    assert pre.residual <= 1e-12 and abs(pre.residual - _relative(m @ x.cpu(), b)) <= 1e-12
    assert pre.iterations < plain.iterations
