"""NGD's Moore–Penrose cutoff for residual kernels (natgrad.linalg.residual_rtol) against the reference."""

from __future__ import annotations

import math

import torch

import natgrad as ng
from natgrad import pde
from natgrad.linalg import default_rtol, residual_rtol
from natgrad.optim import NGD

DT = torch.float64
EPS = torch.finfo(DT).eps


def test_residual_rtol_is_five_eps_in_float64_and_the_engine_default_otherwise() -> None:
    assert residual_rtol(DT, 1020, 257) == 5 * EPS
    assert residual_rtol(DT, 1020, 257) < default_rtol(DT, 1020, 257) / 500
    assert residual_rtol(DT, 30, 1) == 5 * EPS < default_rtol(DT, 30, 1)  # 10·min(r, d)·eps ≥ 10·eps
    assert residual_rtol(torch.float32, 1020, 257) == default_rtol(torch.float32, 1020, 257)


def _least_squares(n: int, d: int, exponents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A (n × d) with GᵀG eigenvalues λ_max·10^(−exponents) (and d − rank exact zeros), and a target y."""
    gen = torch.Generator().manual_seed(0)
    rank = exponents.numel()
    left = torch.linalg.qr(torch.randn(n, rank, generator=gen, dtype=DT)).Q
    right = torch.linalg.qr(torch.randn(d, rank, generator=gen, dtype=DT)).Q
    a = (left * 10 ** (-exponents / 2)) @ right.T
    return a, torch.randn(n, generator=gen, dtype=DT)


def test_ngd_default_for_residuals_keeps_what_the_rounding_resolves_and_matches_the_reference() -> None:
    """Eigenvalues of G down to 3·10⁻¹³·λ_max: the engine default 10·257·eps = 5.7·10⁻¹³ drops two, the residual
    cutoff 5·eps keeps all 60 and no rounding-level eigenvalue of the 197 zeros; the step is the reference's."""
    n, d = 300, 257
    exponents = torch.linspace(0, 12.5, 60, dtype=DT)
    a, y = _least_squares(n, d, exponents)
    w = torch.nn.Parameter(torch.zeros(d, dtype=DT))
    opt = NGD([("w", w)], safeguard=False)
    start = {"w": w.detach().clone()}
    opt.step(lambda p: a @ p["w"] - y)
    step = start["w"] - w.detach()

    def residuals(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return a @ p["w"] - y

    loss = lambda r: 0.5 * r.pow(2).sum()  # noqa: E731
    rtol = residual_rtol(DT, n, d)
    ref = ng.reference.natural_gradient(residuals, start, loss, inverse=ng.MoorePenrose(rtol=rtol))
    old = ng.reference.natural_gradient(residuals, start, loss)  # the engine default's cutoff
    above_old = int((10.0 ** (-exponents) > default_rtol(DT, n, d)).sum())
    assert opt.last_step["rank"] == ref.rank == 60 and old.rank == above_old == 58
    # a perturbation of G of ~eps·λ_max moves v by up to cond·eps relative, cond = λ_max/λ_min of what is kept
    tol = 10 * 10**12.5 * EPS
    assert float((step - ref.direction["w"]).norm() / ref.direction["w"].norm()) <= tol
    assert float((step - old.direction["w"]).norm() / old.direction["w"].norm()) > 0.5  # a different answer
    # the reference itself: torch's pseudo-inverse of the literal G with that cutoff
    direct = torch.linalg.pinv(a.T @ a, rtol=rtol, hermitian=True) @ (a.T @ (a @ start["w"] - y))
    torch.testing.assert_close(ref.direction["w"], direct, rtol=tol, atol=0)


def test_the_engine_default_cutoff_stalls_a_poisson_pinn_where_the_residual_cutoff_converges() -> None:
    """2-D Poisson, 2-32-1 on 12² + 48 points, 80 grid-searched steps from the same start: with 10·min(r, d)·eps
    no grid step lowers the loss after step 60 and the error stays at 8.8·10⁻⁷; the residual cutoff reaches 1.1·10⁻⁷."""
    box = [(0.0, 1.0), (0.0, 1.0)]
    exact = lambda x: torch.sin(math.pi * x[:, 0]) * torch.sin(math.pi * x[:, 1])  # noqa: E731
    points, weights = pde.gauss_legendre(30, box)
    errors, steps = {}, {}
    for name, inverse in (("engine default", ng.MoorePenrose()), ("residual", None)):
        net = pde.Network(pde.mlp([2, 32, 1], generator=torch.Generator().manual_seed(0)))
        problem = pde.Problem(
            net,
            [
                pde.interior(pde.grid(12, box), lambda jet, x: jet.laplacian() + 2 * math.pi**2 * exact(x)),
                pde.boundary(pde.box_boundary_grid(12, box), lambda jet, x: jet.value),
            ],
        )
        opt = NGD(net.module.named_parameters(), line_search="grid", inverse=inverse)
        for _ in range(80):
            opt.step(problem)
        errors[name] = pde.l2_error(net, net.params(), exact, points, weights)
        steps[name] = opt.last_step["step_size"]
    assert steps["engine default"] == 0.0 and errors["engine default"] >= 5e-7, errors
    assert errors["residual"] <= 2e-7, errors
