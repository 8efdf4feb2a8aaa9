"""Every route × metric × generalized inverse agrees with the literal float64 reference."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

import natgrad as ng
from cases import CASES, INVERSE_NAMES, METRICS, ROUTES, combos, inverses, relative_error, routes_for

TOL64 = 1e-9


@functools.cache
def _setup(case_name: str, metric_name: str, inverse_name: str, dtype: torch.dtype = torch.float64):
    case = next(c for c in CASES if c.name == case_name)
    mcase = next(m for m in METRICS if m.name == metric_name)
    phi, params = case.build(dtype)
    z = phi(params)
    metric, loss = mcase.make(z)
    inverse = inverses(ng.num_params(params), dtype)[inverse_name]
    ref = ng.reference.natural_gradient(phi, params, loss, metric, inverse)
    return phi, params, metric, loss, inverse, ref


PARAMS = [
    pytest.param(c.name, m.name, i, r, id=f"{c.name}-{m.name}-{i}-{r}")
    for c, m in combos()
    for i in INVERSE_NAMES
    for r in routes_for(c)
]


@pytest.mark.parametrize(("case", "metric", "inverse", "route"), PARAMS)
def test_route_matches_reference_float64(case, metric, inverse, route):
    phi, params, metric_obj, loss, inverse_obj, ref = _setup(case, metric, inverse)
    res = ng.natural_gradient(phi, params, loss, metric_obj, inverse_obj, method=route)
    assert res.method == route
    v, v_ref = ng.flatten_params(res.direction), ng.flatten_params(ref.direction)
    assert relative_error(v, v_ref) <= TOL64
    assert relative_error(res.pushforward, ref.pushforward) <= TOL64
    assert relative_error(ng.flatten_params(res.gradient), ng.flatten_params(ref.gradient)) <= 1e-12
    assert float(abs(res.loss - ref.loss)) <= 1e-12 * max(1.0, float(abs(ref.loss)))
    if route != "krylov":
        assert res.rank == ref.rank


FLOAT32_CASES = ["mlp-overparam", "mlp-underparam", "cnn", "polynomial"]


@pytest.mark.parametrize("route", [*ROUTES, "structured"])
@pytest.mark.parametrize("metric", ["euclidean", "categorical", "gaussian"])
@pytest.mark.parametrize("case", FLOAT32_CASES)
def test_route_float32_matches_reference(case, metric, route):
    """float32 agrees with the float64 reference to 1e-4 on well-conditioned cases (damped, λ = 0.1)."""
    if case == "polynomial" and metric == "categorical":
        pytest.skip("categorical needs (N, C) logits")
    if case == "polynomial" and route == "structured":
        pytest.skip("the structured route needs phi from ng.from_module")
    _, _, _, _, _, ref = _setup(case, metric, "damped")  # the float64 build of the same point
    case_obj = next(c for c in CASES if c.name == case)
    phi32, params32 = case_obj.build(torch.float32)
    metric32, loss32 = next(m for m in METRICS if m.name == metric).make(phi32(params32))
    res = ng.natural_gradient(phi32, params32, loss32, metric32, ng.Damped(0.1), method=route)
    v = ng.flatten_params(res.direction)
    assert v.dtype == torch.float32
    assert relative_error(v, ng.flatten_params(ref.direction)) <= 1e-4
    assert relative_error(res.pushforward, ref.pushforward) <= 1e-4


@pytest.mark.parametrize("route", [*ROUTES, "structured"])
def test_moore_penrose_float32_well_conditioned(route):
    """Moore–Penrose in float32 on a full-row-rank, well-conditioned model agrees to 1e-4."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    x, y = torch.randn(3, 4), torch.randn(3, 2)
    phi, params = ng.from_module(model, x)
    phi64, params64 = ng.from_module(copy.deepcopy(model).double(), x.double())

    def loss(z):
        return 0.5 * ((z - y.to(z.dtype)) ** 2).sum()

    ref = ng.reference.natural_gradient(phi64, params64, loss)
    res = ng.natural_gradient(phi, params, loss, method=route)
    assert res.rank == ref.rank == 6 or route == "krylov"
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= 1e-4


@pytest.mark.parametrize("case", [c.name for c in CASES])
def test_auto_picks_the_smaller_gram(case):
    phi, params, metric, loss, inverse, ref = _setup(
        case, "euclidean" if case != "softmax" else "fisher-rao", "moore-penrose"
    )
    res = ng.natural_gradient(phi, params, loss, metric, inverse)
    n, d = res.output.numel(), ng.num_params(params)
    module = next(c for c in CASES if c.name == case).module
    assert res.method == ("primal" if d <= n else "structured" if module else "dual")
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= TOL64


def test_auto_falls_back_to_krylov_under_a_small_budget():
    phi, params, metric, loss, inverse, ref = _setup("mlp-overparam", "categorical", "moore-penrose")
    res = ng.natural_gradient(phi, params, loss, metric, inverse, memory_budget=1024)
    assert res.method == "krylov"
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= TOL64


def test_from_module_handles_frozen_tied_and_buffers():
    phi, params, *_ = _setup("frozen", "euclidean", "moore-penrose")
    assert "0.bias" not in params and "0.weight" in params
    phi, params, *_ = _setup("tied", "euclidean", "moore-penrose")
    assert "dec.weight" not in params and "enc.weight" in params
    model = CASES[4].build(torch.float64)
    phi, params = model
    assert not any("running" in k for k in params)


def test_jacobian_matches_reference():
    phi, params, *_ = _setup("cnn", "euclidean", "moore-penrose")
    J = ng.jacobian(phi, params)
    ref = ng.reference.gram(phi, params)["J"]
    assert relative_error(J, ref) <= 1e-13


def test_from_module_records_the_module_for_the_structured_route():
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    phi, params = ng.from_module(model, x)
    record = phi.natgrad_module
    assert record.module is model and record.args[0] is x and record.kwargs == {}
    assert torch.equal(phi(params), model(x))


def test_structured_refuses_a_plain_callable():
    phi, params, metric, loss, inverse, _ = _setup("polynomial", "euclidean", "moore-penrose")
    with pytest.raises(
        ValueError,
        match=r"natural_gradient: method='structured' cannot be used here: phi is a plain callable; .*"
        r"ng\.from_module.*use method='dual'",
    ):
        ng.natural_gradient(phi, params, loss, metric, inverse, method="structured")


def _batchnorm_train():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Linear(3, 6), nn.BatchNorm1d(6, track_running_stats=False), nn.Tanh(), nn.Linear(6, 2)
    )
    model = model.double().train()
    return ng.from_module(model, torch.randn(5, 3, dtype=torch.float64))


class _Centred(nn.Module):
    """Subtracts the batch mean: couples the examples without any BatchNorm (caught by the kernel check)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return h - h.mean(0)


def _centred():
    torch.manual_seed(2)
    return ng.from_module(_Centred().double(), torch.randn(3, 3, dtype=torch.float64))


def _moved_params():
    torch.manual_seed(3)
    phi, params = ng.from_module(
        nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double(),
        torch.randn(2, 3, dtype=torch.float64),
    )
    return phi, {k: v + 0.1 for k, v in params.items()}


def _square_loss(z):
    return 0.5 * (z**2).sum() + z.sum()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (_batchnorm_train, r"BatchNorm1d '1' normalises with batch statistics"),
        (_centred, r"the layer kernel does not reproduce A Aᵀ"),
        (_moved_params, r"params\['0.weight'\] differs from the module's parameter"),
    ],
    ids=["batchnorm-train", "coupled-examples", "moved-params"],
)
def test_structured_refuses_unsupported_models_and_auto_falls_back(build, message):
    phi, params = build()
    with pytest.raises(
        ValueError,
        match=rf"natural_gradient: method='structured' cannot be used here: {message}.*method='dual'",
    ):
        ng.natural_gradient(phi, params, _square_loss, method="structured")
    res = ng.natural_gradient(phi, params, _square_loss)
    ref = ng.reference.natural_gradient(phi, params, _square_loss)
    assert res.method == "dual"
    if build is _centred:  # refused only once the kernel is built: auto records why it fell back
        assert res.info["structured_refused"].startswith("the layer kernel does not reproduce A Aᵀ")
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= TOL64


def test_structured_refuses_batchnorm_in_training_mode_before_running_phi():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double().train()
    phi, params = ng.from_module(model, torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(
        ValueError,
        match=r"natural_gradient: method='structured' cannot be used here: BatchNorm1d '1'.*model.eval",
    ):
        ng.natural_gradient(phi, params, _square_loss, method="structured")
