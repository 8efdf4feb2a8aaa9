"""K⁺ by a certified Cholesky factor or eigh: the literal cutoff decides, the reference is torch.linalg.pinv."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from natgrad._routes._kernel_inverse import KernelInverse


def _kernel(eigenvalues: list[float], dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    r = len(eigenvalues)
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(r, r, generator=gen, dtype=torch.float64))
    k = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    return ((k + k.T) / 2).to(dtype)


def _reference(kernel: torch.Tensor, rtol: float, x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.pinv(kernel.double(), rtol=rtol, hermitian=True) @ x.double()


RTOL = 1e-8
CASES = {
    "well-conditioned": ([1.0, 2.0, 5.0, 10.0, 30.0], "cholesky", 5),
    "smallest-below-cutoff": ([0.3e-8 * 30, 2.0, 5.0, 10.0, 30.0], "eigh", 4),
    "exactly-singular": ([0.0, 0.0, 5.0, 10.0, 30.0], "eigh", 3),
    "zero": ([0.0] * 5, "eigh", 0),
}


@pytest.mark.parametrize(("eigenvalues", "method", "rank"), CASES.values(), ids=CASES.keys())
def test_method_and_rank_follow_the_cutoff(eigenvalues, method, rank):
    kernel = _kernel(eigenvalues)
    kinv = KernelInverse(kernel, RTOL)
    assert (kinv.method, kinv.rank) == (method, rank)
    x = torch.randn(5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = _reference(kernel, RTOL, x)
    assert torch.allclose(kinv.pinv(x), ref, atol=1e-9 * max(1.0, float(ref.abs().max())), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "eigenvalues", [[1.0, 2.0, 5.0, 10.0], [0.0, 1.0, 3.0, 4.0]], ids=["full", "singular"]
)
def test_damped_solves_the_shifted_system(dtype, eigenvalues):
    kernel = _kernel(eigenvalues, dtype)
    kinv = KernelInverse(kernel, 10 * 4 * torch.finfo(dtype).eps)
    x = torch.randn(4, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
    for lam in (1e-3, 0.5, 7.0):
        ref = torch.linalg.solve(kernel.double() + lam * torch.eye(4, dtype=torch.float64), x.double())
        tol = 1e-10 if dtype == torch.float64 else 1e-3
        assert torch.allclose(kinv.damped(x, lam).double(), ref, rtol=tol, atol=tol * float(ref.abs().max()))


@settings(max_examples=60, deadline=None)
@given(
    exponents=st.lists(st.floats(-14.0, 0.0), min_size=2, max_size=12),
    rtol_exponent=st.floats(-12.0, -2.0),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_cholesky_is_used_only_when_the_cutoff_keeps_every_eigenvalue(exponents, rtol_exponent, dtype):
    """Whatever the spectrum, "cholesky" implies λ_min > rtol·λ_max for the kernel as stored, and K⁺ matches."""
    eigenvalues = [10.0**e for e in exponents]
    kernel = _kernel(eigenvalues, dtype, seed=len(exponents))
    rtol = 10.0**rtol_exponent
    kinv = KernelInverse(kernel, rtol)
    literal = torch.linalg.eigvalsh(kernel.double())
    if kinv.method == "cholesky":
        assert float(literal.min()) > rtol * float(literal.max())
        assert kinv.rank == len(eigenvalues)
        x = torch.randn(len(eigenvalues), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        ref = torch.linalg.solve(kernel.double(), x)
        cond = float(literal.max() / literal.min())
        tol = 100 * torch.finfo(dtype).eps * cond
        got = kinv.pinv(x.to(dtype)).double()
        assert float((got - ref).norm() / ref.norm()) <= tol
    else:
        kept = int((literal > rtol * literal.max()).sum())
        # eigh applies the cutoff itself; eigenvalues within rounding of the cutoff may go either way
        assert abs(kinv.rank - kept) <= int(
            (abs(literal - rtol * literal.max()) < 1e3 * torch.finfo(dtype).eps * literal.max()).sum()
        )


def test_cholesky_is_the_common_case_for_a_well_conditioned_kernel_in_float32():
    kernel = _kernel([float(v) for v in torch.linspace(1.0, 50.0, 200)], torch.float32)
    assert KernelInverse(kernel, 10 * 200 * torch.finfo(torch.float32).eps).method == "cholesky"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_damped_solves_and_rank_of_a_singular_kernel_need_no_eigenvectors(dtype):
    """An uncertified K: (K + λI)⁻¹x by a Cholesky of K + λI, the rank from the eigenvalues, eigh only for K⁺."""
    eigenvalues = [0.0, 0.0, 0.1, 2.0, 5.0, 10.0]
    kernel = _kernel(eigenvalues, dtype, seed=4)
    rtol = 1e-6
    kinv = KernelInverse(kernel, rtol)
    x = torch.randn(6, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
    for lam in (1e-4, 0.5):
        ref = torch.linalg.solve(kernel.double() + lam * torch.eye(6, dtype=torch.float64), x.double())
        tol = 100 * torch.finfo(dtype).eps * (10.0 + lam) / lam  # a backward-stable solve: eps · cond
        assert float((kinv.damped(x, lam).double() - ref).norm() / ref.norm()) <= tol
    assert kinv.method == "eigh" and kinv.rank == 4
    assert not hasattr(kinv, "U")  # neither the damped solves nor the rank computed eigenvectors
    ref = _reference(kernel, rtol, x)
    got = kinv.pinv(x).double()
    assert float((got - ref).norm() / ref.norm()) <= 100 * torch.finfo(dtype).eps * 10.0 / 0.1
    assert kinv.rank == 4
