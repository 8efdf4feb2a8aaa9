"""Deep matrix factorisation: data, inits, closed-form gradients, the engine's NGD against the reference and
the closed form Ė = −P_Ω(E − W*), and the experiment's claims on a reduced quick run."""

import dataclasses
import math

import pytest
import torch

import natgrad as ng
from natgrad.experiments import matrix_completion
from natgrad.experiments._base import no_progress
from natgrad.matrix import (
    arora_layers,
    completion_errors,
    end_to_end,
    end_to_end_velocity,
    gradient_descent,
    imbalanced_layers,
    layer_gradients,
    make_completion_problem,
    natural_direction,
    natural_gradient_descent,
    observed_entries,
)


def test_completion_problem_scale_rank_and_mask():
    problem = make_completion_problem(30, 3, 200, seed=4)
    assert torch.linalg.matrix_norm(problem.target).item() == pytest.approx(30.0, rel=1e-12)
    singular = torch.linalg.svdvals(problem.target)
    assert singular[2] > 1e-3 * singular[0] and singular[3] < 1e-10 * singular[0]
    assert problem.num_observed == 200 and problem.observed_index.numel() == 200
    again = make_completion_problem(30, 3, 200, seed=4)
    assert torch.equal(again.mask, problem.mask) and torch.equal(again.target, problem.target)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"size": 5, "rank": 6, "num_observed": 3},
            r"make_completion_problem: expected size >= 1 and 1 <= rank",
        ),
        (
            {"size": 5, "rank": 2, "num_observed": 26},
            r"make_completion_problem: num_observed must lie in \[1, size²\] = \[1, 25\], got 26",
        ),
    ],
)
def test_completion_problem_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_completion_problem(**kwargs, seed=0)


def test_completion_errors_definitions():
    problem = make_completion_problem(8, 2, 20, seed=1)
    errors = completion_errors(torch.zeros(8, 8, dtype=torch.float64), problem)
    target = problem.target
    assert errors["test_mse"] == pytest.approx(float((target[~problem.mask] ** 2).mean()), rel=1e-14)
    assert errors["test_mse"] == pytest.approx(errors["unobserved_variance"], rel=1e-14)
    assert errors["all_mse"] == pytest.approx(float((target**2).mean()), rel=1e-14)
    with pytest.raises(ValueError, match=r"completion_errors: expected E of shape \(8, 8\), got \(7, 8\)"):
        completion_errors(torch.zeros(7, 8, dtype=torch.float64), problem)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_arora_init_statistics(depth):
    size, init = 200, 1e-3
    layers = arora_layers(size, depth, init, seed=depth)
    std = init ** (1 / depth) / math.sqrt(size)
    for weight in layers.values():
        assert weight.std().item() == pytest.approx(std, rel=0.02)
    # E[E_ij²] = std^{2L} n^{L−1} = init²/n for independent zero-mean layers
    assert end_to_end(layers).pow(2).mean().sqrt().item() == pytest.approx(init / math.sqrt(size), rel=0.05)


def test_imbalanced_layers_conserved_difference_and_surjective_jacobian():
    layers = imbalanced_layers(5, (0.3, 0.6, 1.0), seed=2)
    w1, w2, w3 = layers.values()
    eye = torch.eye(5, dtype=torch.float64)
    torch.testing.assert_close(w2.T @ w2 - w1 @ w1.T, (0.36 - 0.09) * eye, atol=1e-14, rtol=0)
    torch.testing.assert_close(w3.T @ w3 - w2 @ w2.T, (1.0 - 0.36) * eye, atol=1e-14, rtol=0)
    assert torch.linalg.matrix_rank(ng.jacobian(end_to_end, layers)).item() == 25
    with pytest.raises(
        ValueError, match="imbalanced_layers: scales must be positive and strictly increasing"
    ):
        imbalanced_layers(5, (1.0, 0.5), seed=0)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_layer_gradients_and_velocity_match_autodiff(depth):
    problem = make_completion_problem(6, 2, 14, seed=3)
    layers = arora_layers(6, depth, 0.5, seed=5)
    grads = torch.func.grad(lambda p: problem.observed_loss(end_to_end(p)))(layers)
    closed = layer_gradients(layers, problem.observed_residual(end_to_end(layers)))
    for name in layers:
        torch.testing.assert_close(closed[name], grads[name], atol=1e-13, rtol=1e-12)
    velocity = {
        name: torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
        for name in layers
    }
    jv = ng.jacobian(end_to_end, layers) @ ng.flatten_params(velocity)
    torch.testing.assert_close(end_to_end_velocity(layers, velocity).flatten(), jv, atol=1e-13, rtol=1e-12)


@pytest.mark.parametrize("fisher", ["full", "observed"])
@pytest.mark.parametrize("depth", [2, 3])
def test_engine_direction_matches_reference(fisher, depth):
    problem = make_completion_problem(5, 2, 11, seed=depth)
    layers = arora_layers(5, depth, 0.3, seed=7)
    result = natural_direction(problem, layers, fisher)
    if fisher == "full":
        phi, loss = end_to_end, problem.observed_loss
    else:
        index = problem.observed_index
        target = problem.target.flatten()[index]
        phi, loss = observed_entries(index), (lambda z: 0.5 * ((z - target) ** 2).sum())
    reference = ng.reference.natural_gradient(phi, layers, loss)
    for name in layers:
        torch.testing.assert_close(result.direction[name], reference.direction[name], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(result.pushforward, reference.pushforward, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(("depth", "method"), [(2, "dual"), (3, "dual"), (2, "krylov"), (3, "krylov")])
def test_full_fisher_pushforward_is_projected_residual(depth, method):
    """J G⁺ Jᵀ = I when J is surjective, so J v = P_Ω(E − W*) (Ė = −c·P_Ω(E − W*) with c = 1)."""
    problem = make_completion_problem(8, 2, 20, seed=11)
    layers = arora_layers(8, depth, 1.0, seed=12)
    result = natural_direction(problem, layers, "full", method=method, tol=1e-13)
    assert result.method == method
    expected = problem.observed_residual(end_to_end(layers))
    assert (result.pushforward - expected).abs().max().item() < 1e-10
    assert (result.pushforward[~problem.mask]).abs().max().item() < 1e-10  # unobserved entries do not move


def test_observed_fisher_pins_observed_entries_only():
    problem = make_completion_problem(8, 2, 20, seed=11)
    layers = arora_layers(8, 2, 1.0, seed=12)
    result = natural_direction(problem, layers, "observed")
    index = problem.observed_index
    residual = (end_to_end(layers) - problem.target).flatten()[index]
    torch.testing.assert_close(result.pushforward, residual, atol=1e-10, rtol=1e-10)
    moved = end_to_end_velocity(layers, result.direction)[~problem.mask]
    assert moved.abs().max().item() > 1e-3  # the min-norm step moves unobserved entries too


def test_natural_direction_rejects_unknown_fisher():
    problem = make_completion_problem(4, 1, 5, seed=0)
    with pytest.raises(ValueError, match=r"natural_direction: fisher must be one of \('full', 'observed'\)"):
        natural_direction(problem, arora_layers(4, 2, 1.0, seed=0), "population")


def test_gradient_descent_depth_one_never_moves_unobserved_entries():
    problem = make_completion_problem(10, 2, 40, seed=1)
    layers = arora_layers(10, 1, 1e-3, seed=2)
    result = gradient_descent(problem, layers, lr=0.5, max_steps=100)
    assert result["converged"]
    assert max(result["unobserved_rms_change"]) == 0.0
    with pytest.raises(ValueError, match="gradient_descent: expected lr > 0"):
        gradient_descent(problem, layers, lr=0.0, max_steps=10)


def test_quick_run_claims_hold():
    """The quick configuration, restricted to the claims' |Ω| (the sweep's other points only add figure data)."""
    cfg = matrix_completion.config(quick=True, seed=0)
    count = cfg.claim_observed
    cfg = dataclasses.replace(
        cfg, observed_counts=(count,), full_fisher_counts=((count,),) * len(cfg.ngd_depths), flow_points=6
    )
    results = matrix_completion.run(cfg, no_progress)
    claims = matrix_completion.claims(results)
    assert {c.id for c in claims} >= {"gd-depth3-completes", "gd-depth2-completes", "ngd-full-no-completion"}
    failed = [c.to_dict() for c in claims if not c.holds]
    assert not failed, failed
    flow = results["flow"]["3"]
    assert flow["max_closed_form_error"] < 1e-8  # observed entries follow W* + e^{−t}(E₀ − W*)


def test_natural_gradient_descent_caps_relative_layer_change():
    problem = make_completion_problem(6, 2, 15, seed=2)
    layers = arora_layers(6, 3, 1e-3, seed=3)
    kappa = 0.2
    result = natural_gradient_descent(
        problem, layers, fisher="full", max_step=1.0, max_relative_change=kappa, max_steps=4
    )
    # replay the first step: η₀ = min(1, κ / max_j ‖V_j‖/‖W_j‖) and no layer moves by more than κ‖W_j‖
    direction = natural_direction(problem, layers, "full").direction
    ratios = [float(direction[k].norm() / layers[k].norm()) for k in layers]
    assert result["step_sizes"][0] == pytest.approx(min(1.0, kappa / max(ratios)), rel=1e-10)
    assert result["steps"] == 4 and len(result["step_sizes"]) == 4
    with pytest.raises(ValueError, match="natural_gradient_descent: expected max_step > 0"):
        natural_gradient_descent(
            problem, layers, fisher="full", max_step=0.0, max_relative_change=0.1, max_steps=1
        )
