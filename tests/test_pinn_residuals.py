"""Poisson PINN building blocks: Laplacians against closed forms and finite differences, residuals, NGD step."""

from __future__ import annotations

import math

import pytest
import torch

import natgrad as ng
from natgrad.experiments import _poisson as poisson
from natgrad.optim import NGD

DT = torch.float64


def test_torch_func_laplacian_of_the_exact_solution_is_minus_source() -> None:
    """u = a·sin(πx)sin(πy) has Δu = −2π² u = −a f exactly."""

    def u(params, x):
        return params["a"] * torch.sin(math.pi * x[0]) * torch.sin(math.pi * x[1])

    points = torch.rand(20, 2, dtype=DT, generator=torch.Generator().manual_seed(0))
    params = {"a": torch.tensor(1.7, dtype=DT)}
    torch.testing.assert_close(
        poisson.laplacian(u, params, points), -1.7 * poisson.source(points), rtol=1e-13, atol=1e-12
    )


def _mlp_and_point_function(seed: int = 0):
    model = poisson.tanh_mlp((5, 4), DT, seed, init_std=0.8)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def forward(p, x):
        return torch.func.functional_call(model, p, (x,))

    return model, params, poisson.scalar_network(forward)


def test_torch_func_laplacian_matches_finite_differences() -> None:
    _, params, u = _mlp_and_point_function()
    points = torch.rand(15, 2, dtype=DT, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    h = 1e-4
    fd = torch.zeros(15, dtype=DT)
    for axis in range(2):
        shift = torch.zeros(2, dtype=DT)
        shift[axis] = h
        fd += (
            torch.stack([u(params, x + shift) - 2 * u(params, x) + u(params, x - shift) for x in points])
            / h**2
        )
    # central differences: error O(h²) ≈ 1e-8 plus rounding ε/h² ≈ 1e-8
    torch.testing.assert_close(poisson.laplacian(u, params, points), fd, rtol=0, atol=1e-6)


def test_forward_laplacian_equals_torch_func_hessian_trace() -> None:
    model, params, u = _mlp_and_point_function()
    names = [n for n, _ in model.named_parameters()]
    layers = [(params[names[2 * i]], params[names[2 * i + 1]]) for i in range(len(names) // 2)]
    points = torch.rand(25, 2, dtype=DT, generator=torch.Generator().manual_seed(2))
    value, lap = poisson.tanh_mlp_value_and_laplacian(layers, points)
    torch.testing.assert_close(value, model(points).squeeze(-1).detach(), rtol=0, atol=1e-14)
    torch.testing.assert_close(lap, poisson.laplacian(u, params, points), rtol=0, atol=1e-13)


def test_residual_of_the_exact_solution_vanishes() -> None:
    def u(params, x):
        return params["a"] * torch.sin(math.pi * x[0]) * torch.sin(math.pi * x[1])

    interior, boundary = poisson.interior_grid(6, DT), poisson.boundary_points(5, DT)
    assert boundary.shape == (20, 2) and interior.shape == (36, 2)
    r = poisson.residuals(u, interior, boundary)({"a": torch.tensor(1.0, dtype=DT)})
    assert r.shape == (56,)
    assert float(r.abs().max()) < 1e-12
    r2 = poisson.residuals(u, interior, boundary)({"a": torch.tensor(0.0, dtype=DT)})
    # ½‖r‖² = ½·mean f² at a = 0
    torch.testing.assert_close(0.5 * r2.pow(2).sum(), 0.5 * poisson.source(interior).pow(2).mean())


def test_ngd_step_on_torch_func_pinn_residual_matches_reference() -> None:
    """Gauss–Newton step on the torch.func residual: θ − J⁺ r with J from the float64 reference.

    cond(J) ≈ 5e3 here, so routes through G = JᵀJ agree to about cond²·ε ≈ 5e-9 relative.
    """
    model = poisson.tanh_mlp((3,), DT, 3, init_std=1.0)
    opt = NGD(model.named_parameters(), lr=1.0, safeguard=False)  # the plain step, as the reference

    def forward(p, x):
        return torch.func.functional_call(model, p, (x,))

    residual = poisson.residuals(
        poisson.scalar_network(forward), poisson.interior_grid(5, DT), poisson.boundary_points(4, DT)
    )
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    ref = ng.reference.natural_gradient(residual, params, lambda r: 0.5 * r.pow(2).sum())
    opt.step(residual)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), params[name] - ref.direction[name], rtol=1e-7, atol=1e-9)


def test_xavier_initialisation_draws_glorot_normal_weights_and_zero_biases() -> None:
    """Weights of layer (m → n) from N(0, 2/(m+n)): the same standard normals as the Gaussian draw, rescaled."""
    widths = (7, 5)
    gaussian = poisson.tanh_mlp(widths, DT, 4, init_std=1.0)
    xavier = poisson.tanh_mlp(widths, DT, 4, init="xavier")
    linears = [(g, x) for g, x in zip(gaussian, xavier, strict=True) if isinstance(g, torch.nn.Linear)]
    assert len(linears) == 3
    for g, x in linears:
        fan_out, fan_in = g.weight.shape
        torch.testing.assert_close(x.weight, g.weight * math.sqrt(2.0 / (fan_in + fan_out)), rtol=0, atol=0)
        assert bool((x.bias == 0).all())


def test_tanh_mlp_rejects_an_unknown_initialisation() -> None:
    with pytest.raises(ValueError, match=r"^tanh_mlp: init must be 'gaussian' or 'xavier', got 'he'"):
        poisson.tanh_mlp((3,), DT, 0, init="he")
