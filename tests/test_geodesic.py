"""NGD(geodesic_acceleration=True): the searched path θ(α) = θ − α v − ½α² a against its literal float64 form.

v = (JᵀJ + λI)⁻¹Jᵀr (Moore–Penrose at λ = 0, J of full column rank), a = (JᵀJ + λI)⁻¹Jᵀ D²r[v, v] with
D²r[v, v] from the materialised Hessians of the residuals, α the best grid factor on ½‖r(θ(α))‖².
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import hessian, jacrev

import natgrad as ng
from cases import curved_residuals
from natgrad import pde
from natgrad.optim import NGD, default_grid
from natgrad.optim._core import second_directional_derivative

DT = torch.float64
GRID = default_grid(20)


def _literal_step(residuals, flat: torch.Tensor, damping: float) -> tuple[torch.Tensor, float]:
    """θ after one geodesic-accelerated Gauss–Newton step, and α, from J, the Hessians and a grid search."""
    r = residuals(flat)
    jac = jacrev(residuals)(flat)
    hess = hessian(residuals)(flat)  # (n, d, d)
    gram = jac.T @ jac + damping * torch.eye(flat.numel(), dtype=DT)
    v = torch.linalg.solve(gram, jac.T @ r)
    a = torch.linalg.solve(gram, jac.T @ torch.einsum("nij,i,j->n", hess, v, v))
    best, best_loss = 0.0, float(0.5 * r.pow(2).sum())
    for alpha in GRID:
        value = float(0.5 * residuals(flat - alpha * v - 0.5 * alpha**2 * a).pow(2).sum())
        if value < best_loss:
            best, best_loss = alpha, value
    return flat - best * v - 0.5 * best**2 * a, best


@pytest.mark.parametrize(
    ("n", "d", "damping"),
    [(9, 4, 0.0), (9, 4, 1e-2), (4, 9, 1e-3)],
    ids=["primal-moore-penrose", "primal-damped", "dual-damped"],
)
def test_one_geodesic_step_is_the_literal_one(n, d, damping) -> None:
    residuals, start = curved_residuals(n, d, seed=n * d)
    want, alpha = _literal_step(residuals, start, damping)
    w = torch.nn.Parameter(start.clone())
    opt = NGD(
        [("w", w)], line_search="grid", line_search_grid=GRID, damping=damping, geodesic_acceleration=True
    )
    opt.step(lambda p: residuals(p["w"]))
    assert opt.last_step["step_size"] == alpha > 0
    assert float((w.detach() - want).norm() / (want - start).norm()) <= 1e-10
    assert opt.last_step["acceleration_ratio"] > 0


def test_a_pde_problem_is_accelerated_along_its_own_residual_map() -> None:
    box = [(0.0, 1.0), (0.0, 1.0)]
    net = pde.Network(pde.mlp([2, 3, 1], generator=torch.Generator().manual_seed(3)))
    problem = pde.Problem(
        net,
        [
            pde.interior(pde.grid(4, box), lambda jet, x: jet.laplacian() + torch.sin(math.pi * x[:, 0])),
            pde.boundary(pde.box_boundary_grid(3, box), lambda jet, x: jet.value - x[:, 1]),
        ],
    )
    params = net.params()
    start = ng.flatten_params(params).clone()

    def residuals(flat: torch.Tensor) -> torch.Tensor:
        return problem.residuals(ng.unflatten_like(flat, params))

    want, alpha = _literal_step(residuals, start, 1e-6)
    opt = NGD(
        net.module.named_parameters(),
        line_search="grid",
        line_search_grid=GRID,
        damping=1e-6,
        geodesic_acceleration=True,
    )
    opt.step(problem)
    got = ng.flatten_params(net.params())
    assert opt.last_step["step_size"] == alpha > 0
    assert float((got - want).norm() / (want - start).norm()) <= 1e-9


def test_the_second_directional_derivative_is_the_hessian_contraction() -> None:
    residuals, start = curved_residuals(5, 3, seed=1)
    d = torch.tensor([0.3, -1.0, 0.5], dtype=DT)
    got = second_directional_derivative(lambda p: residuals(p["w"]), {"w": start}, {"w": d})
    want = torch.einsum("nij,i,j->n", hessian(residuals)(start), d, d)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


def test_without_acceleration_the_step_is_unchanged_and_settings_are_checked() -> None:
    residuals, start = curved_residuals(9, 4, seed=2)
    steps = []
    for flag in (False, True):
        w = torch.nn.Parameter(start.clone())
        opt = NGD([("w", w)], line_search="grid", damping=1e-2, geodesic_acceleration=flag)
        opt.step(lambda p: residuals(p["w"]))
        steps.append((w.detach().clone(), opt.last_step))
    assert "acceleration_ratio" not in steps[0][1] and not torch.equal(steps[0][0], steps[1][0])
    w = torch.nn.Parameter(start.clone())
    with pytest.raises(ValueError, match="geodesic_acceleration searches along a curved path and needs"):
        NGD([("w", w)], geodesic_acceleration=True)
    with pytest.raises(ValueError, match="adaptive_damping=True"):
        NGD([("w", w)], line_search="grid", damping=1e-3, adaptive_damping=True, geodesic_acceleration=True)
    with pytest.raises(TypeError, match="NGD: geodesic_acceleration must be True or False, got 1"):
        NGD([("w", w)], line_search="grid", geodesic_acceleration=1)
