"""Engine-side bad inputs: each gets a clear error naming the call, what was expected and what came."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import natgrad as ng

F64 = torch.float64
PARAMS = torch.linspace(-1.0, 1.0, 5, dtype=F64)


def _phi(x):
    return torch.stack([x.sum(), (x**2).sum()])


def _loss(z):
    return z.sum()


@pytest.mark.parametrize("budget", [float("nan"), float("inf"), -5])
def test_memory_budget_must_be_a_finite_size(budget):
    with pytest.raises(
        ng.InvalidInputError, match=r"^natural_gradient: memory_budget must be a finite number of bytes ≥ 0"
    ):
        ng.natural_gradient(_phi, PARAMS, _loss, memory_budget=budget)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_parameters_are_refused_up_front(dtype):
    for call, run in (
        ("natural_gradient", lambda p: ng.natural_gradient(_phi, p, _loss)),
        ("factorize", lambda p: ng.factorize(_phi, p)),
    ):
        with pytest.raises(
            ng.InvalidTypeError, match=rf"^{call}: parameters are {dtype}; .*float32 or float64"
        ):
            run(PARAMS.to(dtype))


def test_integer_valued_loss_is_refused_instead_of_a_zero_direction():
    with pytest.raises(
        ng.InvalidTypeError, match=r"^natural_gradient: loss\(z\) must return a floating-point"
    ):
        ng.natural_gradient(_phi, PARAMS, lambda z: (z > 0).sum())
    with pytest.raises(
        ng.InvalidTypeError, match=r"^reference.natural_gradient: loss\(z\) must return a floating"
    ):
        ng.reference.natural_gradient(_phi, PARAMS, lambda z: (z > 0).sum())


def test_jacobian_validates_its_inputs():
    with pytest.raises(TypeError, match=r"^jacobian: phi must be a callable"):
        ng.jacobian(3, PARAMS)
    with pytest.raises(TypeError, match=r"^jacobian: params must be a Tensor or a dict of Tensors, got list"):
        ng.jacobian(_phi, [1.0])
    with pytest.raises(ValueError, match=r"^jacobian: parameter 'params' contains 1 non-finite"):
        ng.jacobian(_phi, torch.tensor([1.0, float("nan")], dtype=F64))


def test_reference_validates_its_inputs():
    with pytest.raises(
        TypeError, match=r"^reference.natural_gradient: metric must be a natgrad.metrics.Metric"
    ):
        ng.reference.natural_gradient(_phi, PARAMS, _loss, metric="euclidean")
    with pytest.raises(
        TypeError, match=r"^reference.natural_gradient: inverse must be MoorePenrose, GInverse"
    ):
        ng.reference.natural_gradient(_phi, PARAMS, _loss, inverse="pinv")
    with pytest.raises(TypeError, match=r"^reference.natural_gradient: phi and loss must be callables"):
        ng.reference.natural_gradient(_phi, PARAMS, "mse")
    with pytest.raises(ValueError, match=r"^reference.natural_gradient: GInverse U must have shape \(5, 5\)"):
        ng.reference.natural_gradient(_phi, PARAMS, _loss, inverse=ng.GInverse(torch.eye(4, dtype=F64)))


def test_from_module_phi_refuses_unknown_parameter_names():
    phi, params = ng.from_module(nn.Linear(2, 1).double(), torch.randn(3, 2, dtype=F64))
    with pytest.raises(
        ValueError, match=r"^from_module: phi\(params\) got parameter names the module does not have"
    ):
        phi({**params, "bogus": torch.zeros(1, dtype=F64)})
    assert phi(params).shape == (3, 1)
