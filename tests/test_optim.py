"""NGD optimizer: steps against the float64 reference, checkpoints, schedulers, groups, line search, Monte Carlo."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import natgrad as ng
from natgrad.optim import (
    NGD,
    BinaryCrossEntropy,
    CrossEntropy,
    GaussianNLL,
    LevenbergMarquardt,
    backtracking,
    grid_search,
    monte_carlo_factor,
)

DT = torch.float64


def _classifier(seed: int = 0, classes: int = 3) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, classes)).to(DT)
    x = torch.randn(10, 4, dtype=DT)
    y = torch.randint(0, classes, (10,))
    return model, x, y


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _reference_direction(model, x, loss, metric, inverse=None) -> torch.Tensor:
    phi, params = ng.from_module(model, x)
    res = ng.reference.natural_gradient(
        phi, params, loss, metric=metric, inverse=inverse or ng.MoorePenrose()
    )
    return ng.flatten_params(res.direction)


@pytest.mark.parametrize("lr", [1.0, 0.3])
def test_step_equals_reference_natural_gradient(lr: float) -> None:
    model, x, y = _classifier()
    loss = CrossEntropy(y, reduction="sum")  # scale s = 1: the metric is the categorical Fisher itself
    v = _reference_direction(model, x, loss, ng.metrics.Categorical())
    before = _flat(model)
    opt = NGD(model.parameters(), lr=lr, safeguard=False)
    f = opt.functional(model)
    opt.step(lambda p: f(p, x), loss)
    torch.testing.assert_close(_flat(model), before - lr * v, rtol=0, atol=1e-10)


def test_mean_reduction_uses_the_loss_curvature() -> None:
    """For a mean over N rows the Gauss–Newton matrix is G/N, so the step is N times the unit-metric one."""
    model, x, y = _classifier()
    v = _reference_direction(model, x, CrossEntropy(y, reduction="mean"), ng.metrics.Categorical())
    before = _flat(model)
    opt = NGD(model.parameters(), lr=1.0, safeguard=False)
    f = opt.functional(model)
    opt.step(lambda p: f(p, x), CrossEntropy(y))
    torch.testing.assert_close(_flat(model), before - x.shape[0] * v, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("make_loss", "metric"),
    [
        (lambda y: BinaryCrossEntropy(torch.rand(10, 3, dtype=DT), reduction="sum"), ng.metrics.Bernoulli()),
        (lambda y: GaussianNLL(torch.randn(10, 3, dtype=DT), 0.5, reduction="sum"), ng.metrics.Gaussian(0.5)),
    ],
)
def test_metric_from_loss_matches_reference(make_loss, metric) -> None:
    model, x, y = _classifier()
    loss = make_loss(y)
    v = _reference_direction(model, x, loss, metric)
    before = _flat(model)
    opt = NGD(model.parameters(), safeguard=False)
    f = opt.functional(model)
    opt.step(lambda p: f(p, x), loss)
    torch.testing.assert_close(_flat(model), before - v, rtol=0, atol=1e-10)


def test_given_metric_and_damping_match_dense_formula() -> None:
    """A given metric with any loss, and damping λ: v = (JᵀgJ + λI)⁻¹ Jᵀ ∇z L."""
    model, x, _ = _classifier()
    target = torch.randn(10, 3, dtype=DT)

    def loss(z):
        return ((z - target) ** 4).sum()

    a = torch.randn(30, 30, dtype=DT)
    metric = ng.metrics.Dense(a @ a.T + torch.eye(30, dtype=DT))
    lam = 0.1
    phi, params = ng.from_module(model, x)
    jac = ng.jacobian(phi, params)
    z = phi(params).detach().requires_grad_(True)
    (grad_z,) = torch.autograd.grad(loss(z), z)
    gram = jac.T @ metric.matrix(z.detach()) @ jac
    v = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=DT), jac.T @ grad_z.reshape(-1))
    before = _flat(model)
    opt = NGD(model.parameters(), metric=metric, damping=lam, safeguard=False)
    f = opt.functional(model)
    opt.step(lambda p: f(p, x), loss)
    torch.testing.assert_close(_flat(model), before - v, rtol=0, atol=1e-10)


def test_dual_form_momentum_matches_formula() -> None:
    """Second step: v = p + (G + λI)⁻¹(∇ − G p), p = μ v_prev (dense float64 check)."""
    model, x, y = _classifier()
    loss = CrossEntropy(y, reduction="sum")
    mu, lam = 0.7, 0.05
    opt = NGD(model.parameters(), momentum=mu, damping=lam, safeguard=False)
    f = opt.functional(model)
    opt.step(lambda p: f(p, x), loss)
    v_prev = torch.cat([opt.state[p]["momentum_buffer"].reshape(-1) for p in model.parameters()])
    phi, params = ng.from_module(model, x)
    jac = ng.jacobian(phi, params)
    z = phi(params).detach()
    zg = z.clone().requires_grad_(True)
    (grad_z,) = torch.autograd.grad(loss(zg), zg)
    gram = jac.T @ ng.metrics.Categorical().matrix(z) @ jac
    prior = mu * v_prev
    v = prior + torch.linalg.solve(
        gram + lam * torch.eye(gram.shape[0], dtype=DT), jac.T @ grad_z.reshape(-1) - gram @ prior
    )
    before = _flat(model)
    opt.step(lambda p: f(p, x), loss)
    torch.testing.assert_close(_flat(model), before - v, rtol=0, atol=1e-10)


def _run(model, opt, x, y, steps: int) -> list[float]:
    f = opt.functional(model)
    return [float(opt.step(lambda p: f(p, x), CrossEntropy(y))) for _ in range(steps)]


@pytest.mark.parametrize(
    "settings",
    [
        {"momentum": 0.5, "damping": 1e-2, "adaptive_damping": True, "line_search": "backtracking"},
        {"mc_samples": 2, "line_search": "grid", "momentum": 0.3, "damping": 1e-3},
    ],
)
def test_checkpoint_resume_continues_identically(settings) -> None:
    model, x, y = _classifier()
    opt = NGD(model.parameters(), **settings)
    _run(model, opt, x, y, 3)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    losses_a = _run(model, opt, x, y, 4)
    final_a = _flat(model)

    model_b, _, _ = _classifier(seed=1)
    model_b.load_state_dict(saved_model)
    opt_b = NGD(model_b.parameters(), **settings)
    opt_b.load_state_dict(saved_opt)
    losses_b = _run(model_b, opt_b, x, y, 4)
    assert losses_a == losses_b
    assert torch.equal(_flat(model_b), final_a)
    assert opt_b.damping == opt.damping and opt_b.steps_taken == opt.steps_taken == 7


def test_lr_scheduler_changes_the_step() -> None:
    model, x, y = _classifier()
    loss = CrossEntropy(y, reduction="sum")
    opt = NGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.25)
    f = opt.functional(model)
    opt.step(lambda p: f(p, x), loss)
    scheduler.step()
    assert opt.param_groups[0]["lr"] == 0.025
    v = _reference_direction(model, x, loss, ng.metrics.Categorical())
    before = _flat(model)
    opt.step(lambda p: f(p, x), loss)
    torch.testing.assert_close(_flat(model), before - 0.025 * v, rtol=0, atol=1e-10)


def test_param_groups_scale_the_joint_direction() -> None:
    model, x, y = _classifier()
    loss = CrossEntropy(y, reduction="sum")
    v = _reference_direction(model, x, loss, ng.metrics.Categorical())
    first, second = model[0], model[2]
    opt = NGD(
        [{"params": first.parameters()}, {"params": second.parameters(), "lr": 0.5}], lr=1.0, safeguard=False
    )
    before = _flat(model)
    f = opt.functional(model)
    opt.step(lambda p: f(p, x), loss)
    split = sum(p.numel() for p in first.parameters())
    lrs = torch.cat([torch.ones(split, dtype=DT), 0.5 * torch.ones(v.numel() - split, dtype=DT)])
    torch.testing.assert_close(_flat(model), before - lrs * v, rtol=0, atol=1e-10)


def test_named_parameters_work_with_functional_call() -> None:
    model, x, y = _classifier()
    loss = CrossEntropy(y, reduction="sum")
    v = _reference_direction(model, x, loss, ng.metrics.Categorical())
    before = _flat(model)
    opt = NGD(model.named_parameters(), safeguard=False)
    opt.step(lambda p: torch.func.functional_call(model, p, (x,)), loss)
    torch.testing.assert_close(_flat(model), before - v, rtol=0, atol=1e-10)


def test_non_finite_loss_raises_and_leaves_parameters() -> None:
    model, x, y = _classifier()
    opt = NGD(model.parameters())
    f = opt.functional(model)
    before = _flat(model)
    bad_x = x.clone()
    bad_x[0, 0] = math.nan
    with pytest.raises(
        ValueError, match=r"NGD.step: the loss is not finite \(nan\).*parameters are unchanged"
    ):
        opt.step(lambda p: f(p, bad_x), CrossEntropy(y))
    with pytest.raises(ValueError, match=r"NGD.step: the loss is not finite \(inf\)"):
        opt.step(lambda p: f(p, x), lambda z: (z.pow(2).sum() + 1) * math.inf)
    assert torch.equal(_flat(model), before)
    assert opt.steps_taken == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1.0}, r"NGD: lr must be a finite number > 0, got -1.0"),
        ({"line_search": "wolfe"}, r"NGD: line_search must be one of"),
        ({"adaptive_damping": True}, r"NGD: adaptive_damping needs a starting damping > 0"),
        ({"momentum": 1.0}, r"NGD: momentum must be in \[0, 1\)"),
        ({"mc_samples": 0}, r"NGD: mc_samples must be None or an integer >= 1"),
        ({"metric": "fisher"}, r"NGD: metric must be 'auto', None or a natgrad metric object"),
        ({"damping": 1e-3, "inverse": ng.MoorePenrose()}, r"NGD: pass either damping > 0 or a generalized"),
    ],
)
def test_bad_settings_are_rejected(kwargs, message) -> None:
    model, _, _ = _classifier()
    with pytest.raises(ValueError, match=message):
        NGD(model.parameters(), **kwargs)


def test_bad_group_and_loss_errors() -> None:
    model, x, _ = _classifier()
    with pytest.raises(
        ValueError, match=r"NGD: parameter groups may set \['lr', 'momentum'\] only, got \['damping'\]"
    ):
        NGD([{"params": model.parameters(), "damping": 1.0}])
    opt = NGD(model.parameters())
    f = opt.functional(model)
    with pytest.raises(
        ValueError, match=r"NGD.step: metric='auto' needs a loss that knows its Fisher metric"
    ):
        opt.step(lambda p: f(p, x), lambda z: z.pow(2).sum())
    with pytest.raises(ValueError, match=r"NGD.step: loss\(z\) must return a scalar tensor, got \(10, 3\)"):
        opt.step(lambda p: f(p, x), lambda z: z)
    with pytest.raises(TypeError, match=r"CrossEntropy: targets must be a 1-D integer tensor"):
        CrossEntropy(torch.zeros(3))


def _quadratic_problem(seed: int):
    """Linear model, squared loss: a convex quadratic in θ; a wrong metric makes lr·v overshoot."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(12, 5, generator=gen, dtype=DT)
    b = torch.randn(12, generator=gen, dtype=DT)
    theta = torch.randn(5, generator=gen, dtype=DT, requires_grad=True)
    m = torch.randn(12, 12, generator=gen, dtype=DT)
    metric = ng.metrics.Dense(0.05 * (m @ m.T) + 0.01 * torch.eye(12, dtype=DT))
    return a, b, theta, metric


@pytest.mark.parametrize("line_search", ["grid", "backtracking"])
@pytest.mark.parametrize("seed", range(4))
def test_line_search_never_increases_a_convex_quadratic(line_search: str, seed: int) -> None:
    a, b, theta, metric = _quadratic_problem(seed)

    def loss(z):
        return 0.5 * (z - b).pow(2).sum()

    opt = NGD([theta], lr=30.0, metric=metric, line_search=line_search)
    values = [float(opt.step(lambda p: a @ p["param0"], loss)) for _ in range(6)]
    final = float(loss(a @ theta.detach()))
    values.append(final)
    assert all(later <= earlier for earlier, later in zip(values, values[1:], strict=False))
    assert final < values[0]


def test_line_search_helpers_on_a_parabola() -> None:
    def loss_at(alpha):
        return (1 - 0.3 * alpha) ** 2  # minimum at α = 10/3, loss0 = 1

    alpha, value = grid_search(loss_at, 1.0, (8.0, 4.0, 2.0, 1.0))
    assert alpha == 4.0 and value == pytest.approx((1 - 1.2) ** 2)
    assert grid_search(lambda a: 2.0, 1.0, (1.0, 0.5)) == (0.0, 1.0)
    alpha, value = backtracking(loss_at, 1.0, slope=0.6)  # slope = −dL/dα at 0
    assert alpha == 1.0 and value == pytest.approx(0.49)
    assert backtracking(loss_at, 1.0, slope=-0.6) == (0.0, 1.0)  # not a descent direction: no move


def test_levenberg_marquardt_rule() -> None:
    rule = LevenbergMarquardt(boost=2.0)
    assert rule.update(1.0, 0.1) == 2.0
    assert rule.update(1.0, 0.5) == 1.0
    assert rule.update(1.0, 0.9) == 0.5
    assert rule.update(1.0, math.nan) == 2.0
    with pytest.raises(ValueError, match=r"LevenbergMarquardt: boost must be > 1"):
        LevenbergMarquardt(boost=1.0)


@pytest.mark.parametrize(
    ("loss", "exact_metric"),
    [
        (CrossEntropy(torch.zeros(4, dtype=torch.long)), ng.metrics.Categorical()),
        (BinaryCrossEntropy(torch.zeros(4, 3, dtype=DT)), ng.metrics.Bernoulli()),
        (GaussianNLL(torch.zeros(4, 3, dtype=DT), variance=0.3), ng.metrics.Gaussian(0.3)),
    ],
)
def test_monte_carlo_fisher_is_unbiased(loss, exact_metric) -> None:
    """E[B Bᵀ] = g: each entry of the mean of M draws lies within 5 standard errors of the exact metric."""
    z = torch.randn(4, 3, dtype=DT, generator=torch.Generator().manual_seed(1))
    draws = 4000
    gen = torch.Generator().manual_seed(2)
    factor = monte_carlo_factor(loss.sample_scores(z, draws, gen))  # one factor with k = M draws
    # the k = M factor holds the M single-draw estimates; recover them to measure their spread
    singles = factor.reshape(z.numel(), z.shape[0], draws) * math.sqrt(draws)
    estimates = torch.einsum("aij,bij->jab", singles, singles)  # (M, n, n) single-draw metrics
    mean, std = estimates.mean(0), estimates.std(0)
    exact = exact_metric.matrix(z)
    torch.testing.assert_close(factor @ factor.T, mean, rtol=0, atol=1e-12)
    assert bool(((mean - exact).abs() <= 5 * std / math.sqrt(draws) + 1e-12).all())


def test_monte_carlo_step_uses_the_sampled_factor() -> None:
    """With mc_samples = k the step equals the reference with metric Factor(B) for the same draws."""
    model, x, y = _classifier()
    loss = CrossEntropy(y, reduction="sum")
    z = model(x).detach()
    factor = monte_carlo_factor(loss.sample_scores(z, 3, torch.Generator().manual_seed(5)))
    v = _reference_direction(model, x, loss, ng.metrics.Factor(factor))
    before = _flat(model)
    opt = NGD(model.parameters(), mc_samples=3, seed=5, safeguard=False)
    f = opt.functional(model)
    opt.step(lambda p: f(p, x), loss)
    torch.testing.assert_close(_flat(model), before - v, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("rows", "cols"), [(6, 10), (10, 4)])
def test_gauss_newton_on_linear_least_squares_lands_on_min_norm_solution(rows: int, cols: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    a = torch.randn(rows, cols, generator=gen, dtype=DT)
    b = torch.randn(rows, generator=gen, dtype=DT)
    theta = torch.zeros(cols, dtype=DT, requires_grad=True)
    opt = NGD([theta], lr=1.0)
    opt.step(lambda p: a @ p["param0"] - b)
    torch.testing.assert_close(theta.detach(), torch.linalg.pinv(a) @ b, rtol=0, atol=1e-12)
