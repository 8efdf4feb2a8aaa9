"""NGD's bad inputs and failed steps: a clear error, and nothing changed (parameters, optimizer state)."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

import natgrad as ng
from natgrad.optim import NGD, CrossEntropy, NGDStepError, engine_factorize

DT = torch.float64


def _classifier(seed: int = 0, hidden: int = 6) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 3)).to(
        DT
    )
    return model, torch.randn(10, 4, dtype=DT), torch.randint(0, 3, (10,))


def _snapshot(model: torch.nn.Module, opt: NGD) -> tuple[list[torch.Tensor], dict]:
    return [p.detach().clone() for p in model.parameters()], copy.deepcopy(opt.state_dict())


def _assert_unchanged(model: torch.nn.Module, opt: NGD, snapshot) -> None:
    params, state = snapshot
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
    after = opt.state_dict()
    assert after["ngd"] == state["ngd"] and after["param_groups"] == state["param_groups"]
    assert after["state"].keys() == state["state"].keys()
    for key, entry in state["state"].items():
        assert all(torch.equal(v, after["state"][key][k]) for k, v in entry.items())


def _trained(momentum: float = 0.5) -> tuple[torch.nn.Module, NGD, torch.Tensor, torch.Tensor]:
    model, x, y = _classifier()
    opt = NGD(model.parameters(), damping=1e-2, momentum=momentum)
    f = opt.functional(model)
    opt.step(lambda p: f(p, x), CrossEntropy(y))
    return model, opt, x, y


@pytest.mark.parametrize("lr", [math.inf, math.nan, 0.0, -1e-3, True, "1"])
def test_lr_must_be_finite_and_positive(lr) -> None:
    model, _, _ = _classifier()
    with pytest.raises(ValueError, match=r"NGD: lr must be a finite number > 0, got"):
        NGD(model.parameters(), lr=lr)


def test_huge_lr_is_refused_and_changes_nothing() -> None:
    """lr = 1e308 passes as a finite number, but lr·v overflows: the step is refused before anything moves."""
    model, opt, x, y = _trained()
    opt.param_groups[0]["lr"] = 1e308
    f = opt.functional(model)
    snapshot = _snapshot(model, opt)
    with pytest.raises(
        NGDStepError,
        match=r"NGD.step: the update lr·v would make parameter 'param0' non-finite \(lr=1e\+308.*"
        r"parameters and optimizer state are unchanged; lower the learning rate",
    ):
        opt.step(lambda p: f(p, x), CrossEntropy(y))
    _assert_unchanged(model, opt, snapshot)
    assert opt.steps_taken == 1


@pytest.mark.parametrize("lr", [math.nan, -0.5, 0.0])
def test_lr_changed_after_construction_is_checked_at_the_step(lr: float) -> None:
    model, opt, x, y = _trained()
    opt.param_groups[0]["lr"] = lr
    f = opt.functional(model)
    snapshot = _snapshot(model, opt)
    with pytest.raises(
        ValueError,
        match=r"NGD.step: parameter group 0: NGD: lr must be a finite number > 0, got .*nothing was",
    ):
        opt.step(lambda p: f(p, x), CrossEntropy(y))
    _assert_unchanged(model, opt, snapshot)


class _Broken:
    """A factorisation whose solves fail like torch's eigh or return a NaN direction."""

    def __init__(self, fac, error: Exception | None) -> None:
        self.fac, self.error = fac, error

    def solve(self, loss, *, inverse=None):
        if self.error is not None:
            raise self.error
        result = self.fac.solve(loss, inverse=inverse)
        return dataclasses.replace(
            result, direction={k: torch.full_like(v, math.nan) for k, v in result.direction.items()}
        )


def test_solver_failure_raises_and_changes_nothing() -> None:
    """An eigendecomposition that does not converge (the issue's crash at batch 128) becomes NGDStepError."""
    model, opt, x, y = _trained()
    error = torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
    opt.factorize = lambda *args: _Broken(engine_factorize(*args), error)
    f = opt.functional(model)
    snapshot = _snapshot(model, opt)
    with pytest.raises(
        NGDStepError,
        match=r"NGD.step: the natural gradient could not be computed at loss .* \(torch.linalg.LinAlgError: "
        r"linalg.eigh: The algorithm failed to converge\); the step was not taken and the parameters and "
        r"optimizer state are unchanged",
    ):
        opt.step(lambda p: f(p, x), CrossEntropy(y))
    _assert_unchanged(model, opt, snapshot)


def test_non_finite_direction_raises_and_changes_nothing() -> None:
    model, opt, x, y = _trained()
    opt.factorize = lambda *args: _Broken(engine_factorize(*args), None)
    f = opt.functional(model)
    snapshot = _snapshot(model, opt)
    d = sum(p.numel() for p in model.parameters())
    with pytest.raises(NGDStepError, match=rf"NGD.step: the natural gradient contains {d} non-finite value"):
        opt.step(lambda p: f(p, x), CrossEntropy(y))
    _assert_unchanged(model, opt, snapshot)


def test_forward_that_ignores_its_params_raises() -> None:
    model, x, y = _classifier()
    opt = NGD(model.parameters())
    snapshot = _snapshot(model, opt)
    z = model(x).detach()
    with pytest.raises(
        NGDStepError,
        match=r"NGD.step: forward\(params\) does not depend on the parameters \(its Jacobian is zero",
    ):
        opt.step(lambda p: z + 0 * sum(v.sum() for v in p.values()), CrossEntropy(y))
    _assert_unchanged(model, opt, snapshot)


def test_injected_factorize_is_the_one_used() -> None:
    """The factorisation is one injected function: a wrapper sees every call and gives the engine's step."""
    model, x, y = _classifier()
    twin = copy.deepcopy(model)
    calls = []

    def factorize(*args):
        calls.append(args[-1])
        return engine_factorize(*args)

    for m, fac in ((model, factorize), (twin, None)):
        opt = NGD(m.parameters(), method="dual", factorize=fac, safeguard=False)
        f = opt.functional(m)
        opt.step(lambda p, f=f: f(p, x), CrossEntropy(y))
    assert calls == ["dual"]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(), strict=True))


def _state_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    opt = NGD(model.parameters(), damping=1e-2, momentum=0.5)
    f = opt.functional(model)
    opt.step(lambda p: f(p, x), CrossEntropy(y))
    return opt.state_dict()


def test_load_state_dict_of_another_model_is_refused() -> None:
    model, opt, x, y = _trained()
    snapshot = _snapshot(model, opt)
    other, _, _ = _classifier(hidden=5)  # same parameter count per group, other shapes
    with pytest.raises(
        ValueError,
        match=r"NGD.load_state_dict: expected parameters of shapes \[\(6, 4\), \(6,\), \(3, 6\), \(3,\)\], got a "
        r"state saved for shapes \[\(5, 4\), \(5,\), \(3, 5\), \(3,\)\] \(first difference at parameter 0: "
        r"\(6, 4\) vs \(5, 4\)\) — the state of another model; nothing was loaded",
    ):
        opt.load_state_dict(_state_of(other, x, y))
    bigger = torch.nn.Sequential(copy.deepcopy(other), torch.nn.Tanh(), torch.nn.Linear(3, 3)).to(DT)
    with pytest.raises(
        ValueError,
        match=r"NGD.load_state_dict: expected 1 parameter group\(s\) with \[4\] parameters, got 1 group\(s\) "
        r"with \[6\]",
    ):
        opt.load_state_dict(_state_of(bigger, x, y))
    _assert_unchanged(model, opt, snapshot)


def test_load_state_dict_of_sgd_is_refused() -> None:
    model, opt, x, y = _trained()
    snapshot = _snapshot(model, opt)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    sgd.step()
    with torch.no_grad():  # undo SGD's step: only its state is wanted here
        for p, before in zip(model.parameters(), snapshot[0], strict=True):
            p.copy_(before)
    with pytest.raises(
        ValueError,
        match=r"NGD.load_state_dict: expected a state dict saved by NGD.state_dict\(\) .*got one without it, "
        r"with parameter-group settings \[.*'dampening'.*'nesterov'.*\] — the state of another optimizer "
        r"\(e.g. torch.optim.SGD\) cannot continue an NGD run",
    ):
        opt.load_state_dict(sgd.state_dict())
    _assert_unchanged(model, opt, snapshot)


def test_load_state_dict_checks_buffers_and_entries() -> None:
    model, opt, x, y = _trained()
    snapshot = _snapshot(model, opt)
    state = copy.deepcopy(opt.state_dict())
    state["state"][0]["momentum_buffer"] = torch.zeros(2, 2, dtype=DT)
    with pytest.raises(
        ValueError, match=r"expected a momentum buffer of shape \(6, 4\) for parameter 0, got shape"
    ):
        opt.load_state_dict(state)
    state = copy.deepcopy(opt.state_dict())
    state["state"][1]["exp_avg"] = torch.zeros(6, dtype=DT)
    with pytest.raises(
        ValueError, match=r"expected per-parameter state with keys \['momentum_buffer'\], got keys"
    ):
        opt.load_state_dict(state)
    state = copy.deepcopy(opt.state_dict())
    state["ngd"]["damping"] = math.nan
    with pytest.raises(ValueError, match=r"expected a finite damping >= 0 in the 'ngd' entry, got nan"):
        opt.load_state_dict(state)
    with pytest.raises(ValueError, match=r"expected a dict from NGD.state_dict\(\)"):
        opt.load_state_dict([1, 2])
    _assert_unchanged(model, opt, snapshot)


def test_reference_shapes_are_saved_and_a_valid_state_loads() -> None:
    model, opt, x, y = _trained()
    twin = copy.deepcopy(model)
    opt_b = NGD(twin.parameters(), damping=1e-2, momentum=0.5)
    opt_b.load_state_dict(opt.state_dict())
    assert opt_b.state_dict()["ngd"]["shapes"] == [[6, 4], [6], [3, 6], [3]]
    assert ng.flatten_params({"a": opt_b.state[next(twin.parameters())]["momentum_buffer"]}).numel() == 24
