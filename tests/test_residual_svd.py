"""NGD(residual_svd=True): Gauss–Newton on float64 residuals by the SVD of J, against the literal pseudo-inverse."""

from __future__ import annotations

import math

import pytest
import torch

import natgrad as ng
from natgrad.experiments import _poisson as problems
from natgrad.linalg import residual_rtol
from natgrad.optim import NGD
from natgrad.optim._residuals import SVD_RESIDUAL_RTOL

DT = torch.float64
EPS = torch.finfo(DT).eps


def _ill_conditioned(
    n: int, d: int, exponents: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A = Q₁ diag(10^(−e/2)) Q₂ᵀ (n × d, rank = len(e)), a target y, and A's exact pseudo-inverse Q₂ S⁻¹ Q₁ᵀ."""
    gen = torch.Generator().manual_seed(0)
    rank = exponents.numel()
    left = torch.linalg.qr(torch.randn(n, rank, generator=gen, dtype=DT)).Q
    right = torch.linalg.qr(torch.randn(d, rank, generator=gen, dtype=DT)).Q
    s = 10 ** (-exponents / 2)
    return (left * s) @ right.T, torch.randn(n, generator=gen, dtype=DT), (right / s) @ left.T


def _one_step(a: torch.Tensor, y: torch.Tensor, **settings) -> tuple[torch.Tensor, NGD]:
    w = torch.nn.Parameter(torch.zeros(a.shape[1], dtype=a.dtype))
    opt = NGD([("w", w)], safeguard=False, **settings)
    opt.step(lambda p: a @ p["w"] - y)
    return -w.detach(), opt  # the step from θ = 0


def test_the_svd_step_keeps_what_eigh_of_jtj_cannot_resolve_and_matches_the_pseudo_inverse() -> None:
    """Eigenvalues of G = AᵀA from λ_max down to 10⁻¹⁸·λ_max (between the SVD cutoff (10⁶·eps)² and the
    residual cutoff 5·eps): the SVD step keeps all 40 and equals A⁺r — the exact pseudo-inverse of the
    construction and torch.linalg.pinv of the materialised A — to eps·cond(A); the default step (eigh of the
    assembled G) keeps at most the directions above 5·eps·λ_max."""
    n, d = 300, 257
    exponents = torch.linspace(0, 18, 40, dtype=DT)
    a, y, exact_pinv = _ill_conditioned(n, d, exponents)
    step, opt = _one_step(a, y, residual_svd=True)
    exact = exact_pinv @ (-y)  # the minimum-norm least-squares solution of A w = y, from w = 0: w = A⁺y
    assert opt.last_step["method"] == "lstsq" and opt.last_step["rank"] == 40
    cond_a = 10**9
    assert float((step - exact).norm() / exact.norm()) <= 100 * cond_a * EPS
    literal = torch.linalg.pinv(a, rtol=math.sqrt(SVD_RESIDUAL_RTOL)) @ (-y)
    assert float((step - literal).norm() / literal.norm()) <= 100 * cond_a * EPS
    default, opt_default = _one_step(a, y)
    kept = int((10.0 ** (-exponents) > residual_rtol(DT, n, d)).sum())
    # eigh of the assembled G cannot even resolve every eigenvalue just above its own cutoff
    assert opt_default.last_step["method"] == "primal" and opt_default.last_step["rank"] <= kept < 40
    assert float((default - exact).norm() / exact.norm()) > 0.5  # the small directions carry most of A⁺y


def test_the_svd_cutoff_drops_what_lies_below_it() -> None:
    """Singular values of A at 10⁻¹² σ_max (λ = 10⁻²⁴ λ_max, below (10⁶·eps)²) are cut like zeros."""
    exponents = torch.cat([torch.linspace(0, 12, 20, dtype=DT), torch.full((5,), 24.0, dtype=DT)])
    a, y, _ = _ill_conditioned(200, 60, exponents)
    step, opt = _one_step(a, y, residual_svd=True)
    literal = torch.linalg.pinv(a, rtol=math.sqrt(SVD_RESIDUAL_RTOL)) @ (-y)
    assert opt.last_step["rank"] == 20
    assert float((step - literal).norm() / literal.norm()) <= 100 * 10**6 * EPS


@pytest.mark.parametrize(
    ("case", "route"),
    [("float32", "primal"), ("wide", "dual"), ("inverse", "primal"), ("damped", "primal")],
)
def test_residual_svd_leaves_the_steps_it_does_not_cover_to_the_default(case: str, route: str) -> None:
    """float32, d > r, an explicit inverse or damping: the step is the default one, and says which route."""
    dtype = torch.float32 if case == "float32" else DT
    n, d = (20, 40) if case == "wide" else (40, 20)
    gen = torch.Generator().manual_seed(1)
    a, y = torch.randn(n, d, generator=gen, dtype=dtype), torch.randn(n, generator=gen, dtype=dtype)
    settings: dict = {"inverse": ng.MoorePenrose(rtol=1e-12)} if case == "inverse" else {}
    if case == "damped":
        settings = {"damping": 1e-3}
    steps = {}
    for svd in (False, True):
        step, opt = _one_step(a, y, residual_svd=svd, **settings)
        assert opt.last_step["method"] == route
        steps[svd] = step
    torch.testing.assert_close(steps[True], steps[False], rtol=0, atol=0)


def test_residual_svd_takes_a_poisson_pinn_past_where_the_default_stops() -> None:
    """2-D Poisson (u* = sin πx sin πy), 2-64-1 (d = 257) on 20² + 4·20 points, seed 0, 60 grid-searched steps:
    the SVD step reaches 2.3·10⁻¹⁰ relative L2 (measured), the default (eigh of JᵀJ) 1.1·10⁻⁴."""
    errors = {}
    for svd in (False, True):
        make, error_of = problems.poisson_2d((64,), 20, 20, 0)
        problem = make()
        opt = NGD(problem.network.module.named_parameters(), line_search="grid", residual_svd=svd)
        for _ in range(60):
            opt.step(problem)
        errors[svd] = error_of(problem)
    assert errors[True] <= 1e-8, errors
    assert errors[False] >= 1e-5, errors


def test_residual_svd_must_be_a_bool() -> None:
    w = torch.nn.Parameter(torch.zeros(3, dtype=DT))
    with pytest.raises(TypeError, match="NGD: residual_svd must be True or False, got 'yes'"):
        NGD([("w", w)], residual_svd="yes")  # type: ignore[arg-type]
