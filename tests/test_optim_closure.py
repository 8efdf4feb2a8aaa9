"""torch-style ``step(closure)`` for NGD.from_module: the same direction as the reference, p.grad set, and
closures that do not fit refused with what to pass instead."""

from __future__ import annotations

import pytest
import torch

import natgrad as ng
from natgrad.optim import NGD, CrossEntropy

DT = torch.float64


def _classifier() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).to(DT)
    return model, torch.randn(10, 4, dtype=DT), torch.randint(0, 3, (10,))


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _closure(opt: NGD, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, backward: bool = True):
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
        if backward:
            loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("backward", [True, False])
def test_closure_step_equals_reference_and_sets_grad(backward: bool) -> None:
    """v = (JᵀgJ)⁺ Jᵀ∇_z L with g the given metric; the closure's backward (or the step's) sets p.grad."""
    model, x, y = _classifier()
    phi, params = ng.from_module(model, x)
    ref = ng.reference.natural_gradient(
        phi, params, CrossEntropy(y, reduction="sum"), metric=ng.metrics.Categorical()
    )
    expected = torch.nn.functional.cross_entropy(phi(params), y, reduction="sum").detach()
    before = _flat(model)
    opt = NGD.from_module(model, lr=0.5, metric=ng.metrics.Categorical(), safeguard=False)
    loss = opt.step(_closure(opt, model, x, y, backward))
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        _flat(model), before - 0.5 * ng.flatten_params(ref.direction), rtol=0, atol=1e-10
    )
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(grads, ng.flatten_params(ref.gradient), rtol=0, atol=1e-12)
    assert opt.steps_taken == 1 and opt.last_step["step_size"] == 1.0


def test_closure_route_works_with_an_lr_scheduler_and_kwargs() -> None:
    """The hook captures keyword inputs too; the scheduler's lr applies to the closure route."""

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 3).to(DT)

        def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
            return self.lin(x) * scale

    torch.manual_seed(1)
    model, x = Scaled(), torch.randn(10, 4, dtype=DT)
    target = torch.randn(10, 3, dtype=DT)
    opt = NGD.from_module(model, lr=1.0, metric=ng.metrics.Euclidean(), safeguard=False)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = 0.5 * (model(x, scale=2.0) - target).pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    scheduler.step()
    # a linear model with squared error: the first Gauss–Newton step solves the least-squares problem
    residual = (model(x, scale=2.0) - target).detach()
    design = torch.cat([2 * x, 2 * torch.ones(10, 1, dtype=DT)], 1)
    torch.testing.assert_close(design.T @ residual, torch.zeros(5, 3, dtype=DT), rtol=0, atol=1e-10)
    assert opt.param_groups[0]["lr"] == 0.5


def test_closure_by_keyword_like_lightning() -> None:
    """``optimizer.step(closure=closure)`` is the same step as ``optimizer.step(closure)``."""
    model, x, y = _classifier()
    twin = torch.nn.Sequential(*[m for m in _classifier()[0]])
    steps = []
    for m, by_keyword in ((model, True), (twin, False)):
        opt = NGD.from_module(m, metric=ng.metrics.Categorical(), safeguard=False)
        closure = _closure(opt, m, x, y)
        steps.append(opt.step(closure=closure) if by_keyword else opt.step(closure))
    assert torch.equal(steps[0], steps[1]) and torch.equal(_flat(model), _flat(twin))
    opt = NGD.from_module(model, metric=ng.metrics.Categorical())
    with pytest.raises(
        TypeError, match=r"NGD.step: pass either closure=... or forward \(and loss\), not both"
    ):
        opt.step(lambda p: p, closure=_closure(opt, model, x, y))
    with pytest.raises(TypeError, match=r"looks like a torch-style closure, but a loss was given too"):
        opt.step(_closure(opt, model, x, y), CrossEntropy(y))
    with pytest.raises(TypeError, match=r"NGD.step: expected forward, a callable params -> outputs"):
        opt.step()


def test_closure_needs_the_module() -> None:
    model, x, y = _classifier()
    opt = NGD(model.parameters(), metric=ng.metrics.Categorical())
    with pytest.raises(
        TypeError,
        match=r"NGD.step\(closure\): a torch-style closure gives only the loss.*build the optimizer with "
        r"NGD.from_module\(model, ...\)",
    ):
        opt.step(_closure(opt, model, x, y))


def test_closure_needs_a_metric_and_no_trial_points() -> None:
    model, x, y = _classifier()
    before = _flat(model)
    for settings in ({}, {"metric": ng.metrics.Categorical(), "line_search": "grid"}):
        opt = NGD.from_module(model, **settings)
        with pytest.raises(
            ValueError,
            match=r"NGD.step\(closure\): a closure gives the loss only through its gradient at the outputs, so "
            r"the step needs metric=<a natgrad metric> \(e.g. natgrad.metrics.Categorical\(\) for "
            r"cross-entropy",
        ):
            opt.step(_closure(opt, model, x, y))
    assert torch.equal(_flat(model), before)


def test_closures_that_do_not_fit_are_refused() -> None:
    model, x, y = _classifier()
    opt = NGD.from_module(model, metric=ng.metrics.Categorical())
    before = _flat(model)

    def twice() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(x) + model(x), y)

    with pytest.raises(ValueError, match=r"the closure called the model given to NGD.from_module 2 times"):
        opt.step(twice)
    with pytest.raises(ValueError, match=r"called the model given to NGD.from_module 0 times"):
        opt.step(lambda: torch.tensor(1.0))

    def returns_nothing() -> None:
        torch.nn.functional.cross_entropy(model(x), y).backward()

    with pytest.raises(TypeError, match=r"closure\(\) must return the loss as a scalar tensor.*got NoneType"):
        opt.step(returns_nothing)
    with pytest.raises(ValueError, match=r"no gradient reached the model's output"):
        opt.step(lambda: model(x).detach().sum())
    assert torch.equal(_flat(model), before) and opt.steps_taken == 0


def test_closure_with_train_mode_dropout_is_refused() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3)).to(DT)
    x, y = torch.randn(10, 4, dtype=DT), torch.randint(0, 3, (10,))
    opt = NGD.from_module(model, metric=ng.metrics.Categorical())
    before = _flat(model)
    with pytest.raises(
        ValueError, match=r"re-evaluating the model's call gives other outputs.*model.eval\(\)"
    ):
        opt.step(_closure(opt, model, x, y))
    assert torch.equal(_flat(model), before)


def test_from_module_names_parameters_like_the_module() -> None:
    model, x, y = _classifier()
    model[0].bias.requires_grad_(False)
    opt = NGD.from_module(model, safeguard=False)
    assert list(opt.named_parameters()) == ["0.weight", "2.weight", "2.bias"]
    frozen = model[0].bias.detach().clone()
    opt.step(lambda p: torch.func.functional_call(model, p, (x,)), CrossEntropy(y))
    assert torch.equal(model[0].bias, frozen)
    with pytest.raises(TypeError, match=r"NGD.from_module: expected a torch.nn.Module, got dict"):
        NGD.from_module({})
