"""`natgrad.optim.AveragedGram`: NGD steps on a moving average of G = JᵀJ, against the literal float64 reference."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call, jacrev

import natgrad as ng
from natgrad import pde
from natgrad.experiments import _poisson as problems
from natgrad.optim import NGD, AveragedGram

DT = torch.float64


def _small_problem(seed: int = 0):
    """A tanh net 1 → 6 → 1 fitted to sin on 20 points: residuals, the net and its parameters by name."""
    generator = torch.Generator().manual_seed(seed)
    net = pde.mlp([1, 6, 1], generator=generator)
    x = torch.linspace(-1.0, 1.0, 20, dtype=DT).unsqueeze(1)
    target = torch.sin(2 * x[:, 0])

    def residuals(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(net, params, (x,))[:, 0] - target

    return net, residuals


def _flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params.values()])


def _unflat(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, p in like.items():
        out[name] = flat[start : start + p.numel()].view_as(p)
        start += p.numel()
    return out


@pytest.mark.parametrize("decay, initial, damping", [(0.6, 1.0, 1e-6), (0.9, 0.0, 1e-3), (0.0, 0.0, 1e-8)])
def test_damped_steps_follow_the_literal_moving_average(decay, initial, damping) -> None:
    net, residuals = _small_problem()
    like = {k: v.detach().clone() for k, v in net.named_parameters()}
    opt = NGD(
        net.named_parameters(), damping=damping, safeguard=False, factorize=AveragedGram(decay, initial)
    )
    gram = initial * torch.eye(sum(p.numel() for p in like.values()), dtype=DT)
    for _ in range(4):
        theta = _flat(dict(net.named_parameters()))  # each step from the optimizer's own point
        r_of = lambda f: residuals(_unflat(f, like))  # noqa: E731
        jac = jacrev(r_of)(theta)
        gram = decay * gram + (1 - decay) * jac.T @ jac
        step = torch.linalg.solve(gram + damping * torch.eye(theta.numel(), dtype=DT), jac.T @ r_of(theta))
        opt.step(residuals)
        taken = theta - _flat(dict(net.named_parameters()))
        # the solve of a matrix of condition κ is exact to about eps·κ relative to the step
        kappa = float(torch.linalg.cond(gram + damping * torch.eye(theta.numel(), dtype=DT)))
        bound = 10 * torch.finfo(DT).eps * kappa * float(step.norm())
        torch.testing.assert_close(taken, step, rtol=0, atol=bound)


def test_moore_penrose_solve_is_the_pseudo_inverse_of_the_average() -> None:
    net, residuals = _small_problem(1)
    theta = {k: v.detach().clone() for k, v in net.named_parameters()}
    flat = _flat(theta)
    hook = AveragedGram(0.5, 0.0)
    jac = jacrev(lambda f: residuals(_unflat(f, theta)))(flat)
    rtol = 1e-12
    solved = hook(residuals, theta, ng.metrics.Euclidean(), ng.MoorePenrose(rtol=rtol), "auto").solve(
        lambda z: 0.5 * (z**2).sum()
    )
    average = 0.5 * jac.T @ jac
    expected = torch.linalg.pinv(average, rtol=rtol, hermitian=True) @ (jac.T @ residuals(theta))
    torch.testing.assert_close(_flat(solved.direction), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(solved.pushforward, jac @ expected, rtol=1e-9, atol=1e-12)
    assert hook.steps == 1


def test_without_averaging_the_step_is_the_exact_gauss_newton_step() -> None:
    net, residuals = _small_problem(2)
    theta = {k: v.detach().clone() for k, v in net.named_parameters()}
    loss = lambda z: 0.5 * (z**2).sum()  # noqa: E731
    rtol = 1e-8  # well above the rounding of JᵀJ (eps·λ_max), where both decompositions agree
    ours = AveragedGram(0.0, 0.0)(
        residuals, theta, ng.metrics.Euclidean(), ng.MoorePenrose(rtol=rtol), "auto"
    )
    reference = ng.reference.natural_gradient(residuals, theta, loss, inverse=ng.MoorePenrose(rtol=rtol))
    jac = jacrev(lambda f: residuals(_unflat(f, theta)))(_flat(theta))
    lam = torch.linalg.eigvalsh(jac.T @ jac)
    kept = lam[lam > rtol * lam[-1]]
    # two eigendecompositions of the same G agree to about eps·λ_max/λ_min(kept) relative to the step
    bound = 10 * torch.finfo(DT).eps * float(kept[-1] / kept[0]) * float(_flat(reference.direction).norm())
    torch.testing.assert_close(
        _flat(ours.solve(loss).direction), _flat(reference.direction), rtol=0, atol=bound
    )


def test_the_average_advances_once_per_parameter_point() -> None:
    net, residuals = _small_problem()
    theta = {k: v.detach().clone() for k, v in net.named_parameters()}
    hook = AveragedGram(0.6)
    first = hook(residuals, theta, ng.metrics.Euclidean(), ng.Damped(1e-3), "auto").gram.clone()
    again = hook(residuals, theta, ng.metrics.Euclidean(), ng.MoorePenrose(), "auto").gram
    assert hook.steps == 1 and torch.equal(first, again)
    moved = {k: v + 1e-3 for k, v in theta.items()}
    hook(residuals, moved, ng.metrics.Euclidean(), ng.Damped(1e-3), "auto")
    assert hook.steps == 2


@pytest.mark.parametrize(
    "options, message",
    [({"decay": 1.0}, "decay"), ({"decay": -0.1}, "decay"), ({"initial": -1.0}, "initial")],
)
def test_bad_settings_are_refused(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        AveragedGram(**options)


def test_a_non_euclidean_metric_or_another_inverse_is_refused_and_nothing_is_averaged() -> None:
    net, residuals = _small_problem()
    theta = {k: v.detach().clone() for k, v in net.named_parameters()}
    hook = AveragedGram()
    with pytest.raises(ValueError, match="Euclidean"):
        hook(residuals, theta, ng.metrics.Gaussian(2.0), ng.Damped(1e-3), "auto")
    assert hook.gram is None and hook.steps == 0
    d = sum(p.numel() for p in theta.values())
    solver = hook(residuals, theta, ng.metrics.Euclidean(), ng.MinNorm(torch.eye(d, dtype=DT)), "auto")
    with pytest.raises(ValueError, match="Damped or natgrad.MoorePenrose"):
        solver.solve(lambda z: 0.5 * (z**2).sum())


def test_small_heat_pinn_converges_with_the_averaged_gram() -> None:
    """The heat problem of the pinn-heat experiment, reduced: (x, t) → 16 → 1, 10² + 3·10 points."""
    make, error_of = problems.heat_1d((16,), 10, 10, seed=0)
    problem = make()
    opt = NGD(
        problem.network.module.named_parameters(),
        damping=1e-10,
        line_search="grid",
        factorize=AveragedGram(0.6),
    )
    start = error_of(problem)
    for _ in range(250):
        opt.step(problem)
    # measured (relative L2, seed 0): 1.8e-4; NGD's default Moore–Penrose step is still at 0.16 after 200 steps
    assert math.isfinite(start) and error_of(problem) <= 3e-4 < start
