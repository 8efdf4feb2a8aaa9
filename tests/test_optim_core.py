"""The functional core of the NGD step and its strategies, against dense float64 formulas."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import natgrad as ng
from natgrad.optim import (
    NGD,
    Backtracking,
    CrossEntropy,
    FullStep,
    GridSearch,
    LevenbergMarquardt,
    engine_factorize,
)
from natgrad.optim._core import StepProblem, StepSettings, StepState, ngd_step, precision_floor
from natgrad.optim._curvature import resolve_curvature
from natgrad.optim._line_search import resolve_line_search

DT = torch.float64


def _classifier(dtype: torch.dtype = DT) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).to(dtype)
    return model, torch.randn(10, 4, dtype=dtype), torch.randint(0, 3, (10,))


def _dense(model, x, loss) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """J (materialised), G = JᵀgJ (categorical Fisher) and ∇ = Jᵀ∇_z L at the model's parameters."""
    phi, params = ng.from_module(model, x)
    jac = ng.jacobian(phi, params)
    z = phi(params).detach()
    zg = z.clone().requires_grad_(True)
    (grad_z,) = torch.autograd.grad(loss(zg), zg)
    gram = jac.T @ ng.metrics.Categorical().matrix(z) @ jac
    return jac, gram, jac.T @ grad_z.reshape(-1)


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_safeguard_rejects_a_loss_increase_and_retries_damped() -> None:
    """Here the plain Moore–Penrose step raises the loss 11.3 → 55: the default rejects it, sets
    λ = ∇ᵀG∇/‖∇‖² and solves again on the same factorisation: the step is (G + λI)⁻¹∇ (dense check)."""
    model, x, y = _classifier()
    loss = CrossEntropy(y, reduction="sum")
    _, gram, grad = _dense(model, x, loss)
    calls = []

    def factorize(*args):
        calls.append(args[-1])
        return engine_factorize(*args)

    opt = NGD(model.parameters(), factorize=factorize)
    f = opt.functional(model)
    before = _flat(model)
    opt.step(lambda p: f(p, x), loss)
    lam = float(grad @ gram @ grad / (grad @ grad))
    v = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=DT), grad)
    torch.testing.assert_close(_flat(model), before - v, rtol=0, atol=1e-10)
    assert opt.last_step["attempts"] == 2 and len(calls) == 1  # one factorisation for both solves
    assert opt.last_step["damping"] == pytest.approx(lam, rel=1e-12)
    assert opt.last_step["loss_after"] < opt.last_step["loss"]


def test_safeguard_returns_to_the_generalized_inverse() -> None:
    rule = LevenbergMarquardt(boost=2.0)
    start = lambda: 3.0  # noqa: E731
    assert rule.update_from_zero(0.0, -1.0, 1e-6, start) == 3.0  # poor step from λ = 0: jump
    assert rule.update_from_zero(3.0, -1.0, 1e-6, start) == 6.0
    assert rule.update_from_zero(3.0, 0.5, 1e-6, start) == 3.0
    assert rule.update_from_zero(1.5e-6, 0.9, 1e-6, start) == 0.0  # below the floor: λ = 0 again
    assert rule.update_from_zero(0.0, 0.9, 1e-6, start) == 0.0
    assert rule.update_from_zero(0.3, 0.9, 1e-6, start, resting=0.2) == 0.2  # never below the set damping
    assert rule.update(1e-3, 0.9, floor=5e-3) == 5e-3  # the adaptive rule keeps λ at the floor


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_precision_floor_is_eps_times_the_hutchinson_trace(dtype: torch.dtype) -> None:
    """floor = eps·mean_k u_kᵀ(sG)u_k for the seeded Rademacher probes (checked with the materialised J)."""
    model, x, y = _classifier(dtype)
    loss = CrossEntropy(y)  # mean: s = 1/N
    theta = {name: p.detach() for name, p in model.named_parameters()}

    def forward(p):
        return torch.func.functional_call(model, p, (x,))

    curvature = resolve_curvature("auto", loss, forward(theta), None, None)
    floor = precision_floor(forward, theta, curvature, dtype)
    model64 = copy.deepcopy(model).double()
    _, gram, _ = _dense(model64, x.double(), CrossEntropy(y))
    gen = torch.Generator().manual_seed(0)
    quad = []
    for _ in range(2):
        u = torch.cat(
            [
                (torch.randint(0, 2, t.shape, generator=gen).to(dtype) * 2 - 1).reshape(-1)
                for t in theta.values()
            ]
        ).double()
        quad.append(float(u @ gram @ u) / x.shape[0])
    expected = torch.finfo(dtype).eps * sum(quad) / 2
    assert floor == pytest.approx(expected, rel=1e-10 if dtype == DT else 1e-5)
    assert expected > 0


def test_adaptive_damping_in_float32_stays_above_the_floor() -> None:
    """The issue's failure: in float32 λ fell to 1e-12. Good ratios shrink λ, but never below eps·tr(sG)."""
    model, x, y = _classifier(torch.float32)
    opt = NGD(
        model.parameters(), damping=1e-3, adaptive_damping=True, damping_schedule=LevenbergMarquardt(boost=50)
    )
    f = opt.functional(model)
    theta = {name: p.detach() for name, p in opt.named_parameters().items()}
    for _ in range(4):
        opt.step(lambda p: f(p, x), CrossEntropy(y))
        theta = dict(opt.named_parameters())
        curvature = resolve_curvature("auto", CrossEntropy(y), f(theta, x).detach(), None, None)
        floor = precision_floor(
            lambda p: f(p, x), {k: v.detach() for k, v in theta.items()}, curvature, torch.float32
        )
        assert opt.damping >= 0.5 * floor > 1e-9  # floors of neighbouring points differ by their tr(sG)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_core_is_pure_and_matches_the_facade() -> None:
    """ngd_step changes neither θ nor the state it is given; NGD applies exactly its update."""
    model, x, y = _classifier()
    twin = copy.deepcopy(model)
    loss = CrossEntropy(y)
    theta = {name: p.detach().clone() for name, p in model.named_parameters()}
    frozen = {k: v.clone() for k, v in theta.items()}
    buffers = {name: torch.ones_like(t) for name, t in theta.items()}
    state = StepState(0.05, buffers)
    settings = StepSettings(resting_damping=0.05, line_search=resolve_line_search("backtracking", None))
    problem = StepProblem(
        lambda p: torch.func.functional_call(model, p, (x,)),
        theta,
        loss,
        dict.fromkeys(theta, 0.7),
        dict.fromkeys(theta, 0.5),
    )
    outcome = ngd_step(state, problem, settings)
    assert all(torch.equal(theta[k], frozen[k]) for k in theta)
    assert all(bool((state.momentum[k] == 1).all()) for k in theta) and state.damping == 0.05
    opt = NGD(twin.named_parameters(), lr=0.7, momentum=0.5, damping=0.05, line_search="backtracking")
    for p in twin.parameters():
        opt.state[p]["momentum_buffer"] = torch.ones_like(p)
    opt.step(lambda p: torch.func.functional_call(twin, p, (x,)), loss)
    for name, p in twin.named_parameters():
        torch.testing.assert_close(p.detach(), frozen[name] - outcome.update[name], rtol=0, atol=1e-14)
        torch.testing.assert_close(
            opt.state[p]["momentum_buffer"], outcome.state.momentum[name], rtol=0, atol=0
        )
    assert opt.damping == outcome.state.damping and opt.last_step == outcome.info


@pytest.mark.parametrize("lrs", [(0.6, 0.6), (0.6, 0.2)])
def test_step_pushforward_reuses_the_solve(lrs) -> None:
    """With momentum, J d = lr·(J G⁻(∇ − Gp) + J p) from the solve; groups with different lr take a JVP.
    Both give the slope ⟨∇_z L, J d⟩ that Armijo's test uses: compare with the dense J."""
    from natgrad.optim._core import Solved, _step_pushforward

    model, x, y = _classifier()
    forward = lambda p: torch.func.functional_call(model, p, (x,))  # noqa: E731
    theta = {name: p.detach() for name, p in model.named_parameters()}
    names = list(theta)
    lr = {name: (lrs[0] if i < 2 else lrs[1]) for i, name in enumerate(names)}
    prior = {name: 0.1 * torch.ones_like(t) for name, t in theta.items()}
    _, jp = torch.func.jvp(forward, (theta,), (prior,))
    res = engine_factorize(forward, theta, ng.metrics.Categorical(), ng.MoorePenrose(), "dual").solve(
        CrossEntropy(y)
    )
    solved = Solved(dict(res.direction), res.pushforward, dict(res.gradient), res.rank, res.method)
    step_vec = {k: lr[k] * (solved.direction[k] + prior[k]) for k in names}
    jd = _step_pushforward(forward, theta, step_vec, solved, jp, lr, forward(theta))
    jac, _, _ = _dense(model, x, CrossEntropy(y))
    flat = torch.cat([step_vec[k].reshape(-1) for k in names])
    torch.testing.assert_close(jd.reshape(-1), jac @ flat, rtol=0, atol=1e-10)


def test_line_search_strategies_are_objects() -> None:
    assert resolve_line_search(None, None) == FullStep()
    assert resolve_line_search("grid", (1.0, 0.1)) == GridSearch((1.0, 0.1))
    assert resolve_line_search("backtracking", None) == Backtracking()
    custom = Backtracking(shrink=0.3)
    assert resolve_line_search(custom, None) is custom
    with pytest.raises(ValueError, match=r"Backtracking: need 0 < shrink < 1"):
        Backtracking(shrink=1.5)
    with pytest.raises(ValueError, match=r"GridSearch: factors must be finite numbers > 0"):
        GridSearch((1.0, math.nan))
    model, x, y = _classifier()
    results = []
    for setting in ("backtracking", custom):
        m = copy.deepcopy(model)
        opt = NGD(m.parameters(), damping=0.1, line_search=setting, safeguard=False)
        f = opt.functional(m)
        opt.step(lambda p, f=f, m=m: f(p, x), CrossEntropy(y))
        results.append(opt.last_step["step_size"])
    assert results[0] in {0.5**k for k in range(30)} and results[1] in {0.3**k for k in range(30)}


def test_safeguard_without_a_reusable_factorisation_rejects_and_waits() -> None:
    """MinNorm factors another matrix, so a damped retry cannot reuse it: the rejected step leaves θ unchanged
    and the damping applies from the next step."""
    model, x, y = _classifier()
    d = sum(p.numel() for p in model.parameters())
    opt = NGD(model.parameters(), inverse=ng.MinNorm(torch.ones(d, dtype=DT)))
    f = opt.functional(model)
    before = _flat(model)
    opt.step(lambda p: f(p, x), CrossEntropy(y, reduction="sum"))
    assert torch.equal(_flat(model), before)
    assert opt.last_step["attempts"] == 1 and opt.last_step["step_size"] == 0.0 and opt.damping > 0
    opt.step(lambda p: f(p, x), CrossEntropy(y, reduction="sum"))
    assert opt.last_step["loss_after"] < opt.last_step["loss"]
