"""NGD.step(forward, search=...): the grid search on held-out outputs against its literal float64 form.

The direction is the step's own, v = (JᵀJ + λI)⁻¹Jᵀr from ``forward`` (Moore–Penrose at λ = 0 with J of full
column rank), and α the best grid factor on ½‖s(θ − α v)‖² for the search's residuals s, kept only below
½‖s(θ)‖².
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import jacrev

import natgrad as ng
from cases import curved_residuals
from natgrad import pde
from natgrad.optim import NGD, default_grid

DT = torch.float64
GRID = default_grid(20)


def _literal_step(residuals, search, flat: torch.Tensor, damping: float) -> tuple[torch.Tensor, float]:
    """θ after one damped Gauss–Newton step on ``residuals`` whose grid factor minimises ``search``'s loss."""
    r, jac = residuals(flat), jacrev(residuals)(flat)
    v = torch.linalg.pinv(jac.T @ jac + damping * torch.eye(flat.numel(), dtype=DT)) @ (jac.T @ r)
    best, best_loss = 0.0, float(0.5 * search(flat).pow(2).sum())
    for alpha in GRID:
        value = float(0.5 * search(flat - alpha * v).pow(2).sum())
        if value < best_loss:
            best, best_loss = alpha, value
    return flat - best * v, best


@pytest.mark.parametrize(
    ("n", "d", "damping"),
    [(9, 4, 0.0), (9, 4, 1e-2), (4, 9, 1e-3)],
    ids=["primal-moore-penrose", "primal-damped", "dual-damped"],
)
def test_the_search_picks_the_factor_of_the_held_out_loss(n, d, damping) -> None:
    residuals, start = curved_residuals(n, d, seed=n * d)
    held_out, _ = curved_residuals(2 * n, d, seed=n * d + 4)
    want, alpha = _literal_step(residuals, held_out, start, damping)
    _, own_alpha = _literal_step(residuals, residuals, start, damping)
    assert 0 < alpha < own_alpha  # the held-out loss asks for a shorter step than the own loss
    w = torch.nn.Parameter(start.clone())
    opt = NGD([("w", w)], line_search="grid", line_search_grid=GRID, damping=damping)
    opt.step(lambda p: residuals(p["w"]), search=lambda p: held_out(p["w"]))
    info = opt.last_step
    assert info["step_size"] == alpha
    assert float((w.detach() - want).norm() / (want - start).norm()) <= 1e-10
    assert info["search_loss"] == pytest.approx(float(0.5 * held_out(start).pow(2).sum()), rel=1e-14)
    assert info["search_loss_after"] == pytest.approx(float(0.5 * held_out(want).pow(2).sum()), rel=1e-12)
    assert info["loss_after"] == pytest.approx(float(0.5 * residuals(want).pow(2).sum()), rel=1e-12)


def test_no_factor_lowering_the_held_out_loss_leaves_the_parameters() -> None:
    residuals, start = curved_residuals(9, 4, seed=36)
    held_out, _ = curved_residuals(18, 4, seed=38)
    assert (
        _literal_step(residuals, held_out, start, 1e-2)[1]
        == 0.0
        < _literal_step(residuals, residuals, start, 1e-2)[1]
    )
    w = torch.nn.Parameter(start.clone())
    opt = NGD([("w", w)], line_search="grid", line_search_grid=GRID, damping=1e-2)
    opt.step(lambda p: residuals(p["w"]), search=lambda p: held_out(p["w"]))
    assert opt.last_step["step_size"] == 0.0 and torch.equal(w.detach(), start)
    assert opt.last_step["loss_after"] == opt.last_step["loss"]
    assert opt.last_step["search_loss_after"] == opt.last_step["search_loss"]


def test_searching_on_the_step_s_own_outputs_is_the_plain_search() -> None:
    residuals, start = curved_residuals(9, 4, seed=5)
    results = []
    for search in (None, lambda p: residuals(p["w"])):
        w = torch.nn.Parameter(start.clone())
        opt = NGD([("w", w)], line_search="grid", line_search_grid=GRID, damping=1e-2)
        opt.step(lambda p: residuals(p["w"]), search=search)
        results.append((w.detach().clone(), opt.last_step))
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1]["loss_after"] == results[1][1]["loss_after"] == results[1][1]["search_loss_after"]


def test_a_pde_problem_searches_on_the_next_points() -> None:
    """A `pde.Problem` and a copy of it on other points (the same network): α from the copy's loss."""
    box = [(0.0, 1.0), (0.0, 1.0)]
    net = pde.Network(pde.mlp([2, 4, 1], generator=torch.Generator().manual_seed(3)))

    def problem_on(seed: int) -> pde.Problem:
        g = torch.Generator().manual_seed(seed)
        return pde.Problem(
            net,
            [
                pde.interior(
                    pde.uniform(12, box, g), lambda jet, x: jet.laplacian() + torch.sin(math.pi * x[:, 0])
                ),
                pde.boundary(pde.uniform_boundary(8, box, g), lambda jet, x: jet.value - x[:, 1]),
            ],
        )

    own, next_points = problem_on(0), problem_on(1)
    params = net.params()
    start = ng.flatten_params(params).clone()

    def flat_map(problem: pde.Problem):
        return lambda flat: problem.residuals(ng.unflatten_like(flat, params))

    want, alpha = _literal_step(flat_map(own), flat_map(next_points), start, 1e-6)
    opt = NGD(net.module.named_parameters(), line_search="grid", line_search_grid=GRID, damping=1e-6)
    opt.step(own, search=next_points)
    got = ng.flatten_params(net.params())
    assert opt.last_step["step_size"] == alpha > 0
    assert float((got - want).norm() / (want - start).norm()) <= 1e-9


def test_a_bad_search_is_refused_and_nothing_changes() -> None:
    residuals, start = curved_residuals(9, 4, seed=7)
    w = torch.nn.Parameter(start.clone())
    forward = lambda p: residuals(p["w"])  # noqa: E731
    opt = NGD([("w", w)], line_search="grid", damping=1e-2)
    with pytest.raises(TypeError, match="NGD.step: search must be a callable params -> outputs"):
        opt.step(forward, search=3)
    with pytest.raises(ValueError, match=r"line search's forward \(search=...\) at the current parameters"):
        opt.step(forward, search=lambda p: residuals(p["w"]) * math.nan)
    with pytest.raises(TypeError, match="search=... needs forward as params -> outputs"):
        opt.step(closure=lambda: residuals(w).pow(2).sum(), search=forward)
    for settings in ({}, {"line_search": "backtracking"}, {"line_search": "grid", "adaptive_damping": True}):
        other = NGD([("w", w)], damping=1e-2, **settings)
        with pytest.raises(ValueError, match="search=... replaces the loss a grid line search compares"):
            other.step(forward, search=forward)
    assert torch.equal(w.detach(), start) and opt.steps_taken == 0 and not opt.last_step
