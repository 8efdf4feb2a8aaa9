"""The model zoo (stock torch.nn pieces) on every route against the literal float64 reference."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import natgrad as ng
from cases import ZOO, relative_error, zoo_loss

TOL64 = 1e-9
DENSE = ["primal", "dual", "lstsq", "krylov"]


@functools.cache
def _setup(name: str):
    case = next(c for c in ZOO if c.name == name)
    phi, params = case.build()
    loss = zoo_loss(phi(params))
    return case, phi, params, loss, ng.reference.natural_gradient(phi, params, loss)


def _check(res, ref, route: str) -> None:
    v, v_ref = ng.flatten_params(res.direction), ng.flatten_params(ref.direction)
    assert relative_error(v, v_ref) <= TOL64
    assert relative_error(res.pushforward, ref.pushforward) <= TOL64
    if route != "krylov":
        assert res.rank == ref.rank


@pytest.mark.parametrize("route", [*DENSE, "structured", "structured-krylov", "auto"])
@pytest.mark.parametrize("name", [c.name for c in ZOO])
def test_zoo_route_matches_reference(name, route):
    """Every route ``auto`` can pick (and lstsq) on every zoo model; the structured ones refuse where they must."""
    case, phi, params, loss, ref = _setup(name)
    if route.startswith("structured") and case.refusal is not None:
        with pytest.raises(ValueError, match=rf"method='{route}' cannot be used here: {case.refusal}"):
            ng.natural_gradient(phi, params, loss, method=route)
        return
    res = ng.natural_gradient(phi, params, loss, method=route)
    if route == "auto":  # the structured route where it applies (r < d here), else a dense route
        assert res.method == ("structured" if case.refusal is None else "dual")
    _check(res, ref, route)


def test_zoo_structured_route_is_used_layer_by_layer():
    """Attention, parametrised and shared layers get their layer formulas, not only whole-model rows."""
    routes = {}
    for name in [
        "encoder-layer-fastpath",
        "encoder-classifier",
        "mha-cross",
        "mha-decoder-tied",
        "gpt-tied",
        "lstm-stack",
        "rnn-bidirectional",
        "lstm-final-state",
        "weight-norm",
        "shared-sequential",
        "dict-output-layer",
    ]:
        _, phi, params, loss, _ = _setup(name)
        routes[name] = ng.natural_gradient(phi, params, loss, method="structured").info["kernel_routes"]
    assert routes["encoder-layer-fastpath"]["body.inner.linear1"] == "linear/pair"
    # in- and out-projections as linear maps shared over positions; nothing left to whole-model rows
    assert routes["encoder-layer-fastpath"]["body.inner.self_attn"].startswith("attention/")
    assert routes["encoder-classifier"]["1.body.layers.1.self_attn"].startswith("attention/")
    assert routes["mha-cross"]["attn"].startswith("attention/")
    assert routes["mha-decoder-tied"]["attn"].startswith("attention/")
    for name in ["encoder-layer-fastpath", "encoder-classifier", "mha-cross", "mha-decoder-tied"]:
        assert "<outside modules>" not in routes[name]
    assert routes["gpt-tied"]["block.qkv"].startswith("linear/")
    assert routes["lstm-stack"]["rnn"] == routes["rnn-bidirectional"]["rnn"] == "recurrent/rows"
    # the final cell state is used too: the layer check fails and the LSTM gets whole-model rows
    assert routes["lstm-final-state"]["<outside modules>"].startswith("whole-model/vjp: rnn.weight_ih_l0")
    assert routes["gpt-tied"][""] == "generic/vjp"  # the position table, a parameter of the root
    assert routes["gpt-tied"]["tokens"] == routes["gpt-tied"]["out"] == "shared-parameter/vjp"
    assert "0.parametrizations.weight.original0" in routes["weight-norm"]["<outside modules>"]
    assert routes["shared-sequential"]["0"] == "shared-parameter/vjp"
    assert (
        routes["dict-output-layer"]["layer"] == "generic/vjp"
    )  # recorded at its one parameter-dependent entry


def _float32(phi):
    """The same model and inputs in float32."""
    record = phi.natgrad_module
    module = copy.deepcopy(record.module).float()
    args = tuple(
        a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in record.args
    )
    return ng.from_module(module, args, kwargs=record.kwargs, output=record.select, seed=record.seed)


@pytest.mark.parametrize("route", ["dual", "structured"])
@pytest.mark.parametrize(
    "name", ["encoder-layer-fastpath", "mha-cross", "gpt-tied", "lstm-stack", "weight-norm"]
)
def test_zoo_float32_matches_reference(name, route):
    """float32 (reverse-mode products, attention and recurrence formulas) agrees with the float64 reference to
    1e-4 when damped (λ = 0.1 keeps the problem well conditioned)."""
    _, phi, params, loss, _ = _setup(name)
    ref = ng.reference.natural_gradient(phi, params, loss, inverse=ng.Damped(0.1))
    phi32, params32 = _float32(phi)
    res = ng.natural_gradient(phi32, params32, loss, inverse=ng.Damped(0.1), method=route)
    assert res.direction[next(iter(params32))].dtype == torch.float32
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= 1e-4
