"""Models a user brings: reverse-mode J t, randomness, train-mode BatchNorm, shared modules, actionable errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import natgrad as ng
import natgrad.optim
from cases import ZOO, relative_error, zoo_loss
from natgrad.models import Linearization

ROUTES = ["primal", "dual", "lstsq", "krylov", "structured", "auto"]


def _zoo(name: str):
    case = next(c for c in ZOO if c.name == name)
    return case.build()


def _loss(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (z**2).sum() + z.sum()


def _snapshot(model: nn.Module) -> dict[str, tuple[nn.Parameter, torch.Tensor]]:
    return {k: (p, p.detach().clone()) for k, p in model.named_parameters(remove_duplicate=False)}


def _assert_untouched(model: nn.Module, before: dict[str, tuple[nn.Parameter, torch.Tensor]]) -> None:
    after = dict(model.named_parameters(remove_duplicate=False))
    assert after.keys() == before.keys()
    for name, (param, value) in before.items():
        assert after[name] is param and isinstance(after[name], nn.Parameter), name
        assert torch.equal(after[name].detach(), value), name


# ----------------------------------------------------------------------------- 1. reverse-mode J t


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("encoder-layer-fastpath", "reverse"),
        ("encoder-layer-slowpath", "reverse"),
        ("mha-self-masked", "reverse"),
        ("weight-norm", "reverse"),
        ("shared-sequential", "forward"),
    ],
)
def test_jvp_mode_is_chosen_before_any_solve_and_recorded(name, mode):
    phi, params = _zoo(name)
    lin = Linearization(phi, params)  # the probe runs here, before any route
    assert lin.info["jvp"] == mode
    J = ng.reference.gram(phi, params)["J"]
    t = torch.randn(lin.d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert relative_error(lin.jvp(t), J @ t) <= 1e-12
    rows = torch.stack([t, -2 * t])
    assert relative_error(lin.jvp_rows(rows), rows @ J.T) <= 1e-12
    assert relative_error(ng.jacobian(phi, params), J) <= 1e-12
    res = ng.natural_gradient(phi, params, zoo_loss(lin.z), method="dual")
    assert res.info["jvp"] == mode


def test_old_style_weight_norm_on_every_route():
    torch.manual_seed(0)
    model = nn.Sequential(nn.utils.weight_norm(nn.Linear(3, 4)), nn.Tanh(), nn.Linear(4, 2)).double()
    phi, params = ng.from_module(model, torch.randn(3, 3, dtype=torch.float64))
    ref = ng.reference.natural_gradient(phi, params, _loss)
    for route in ROUTES:
        res = ng.natural_gradient(phi, params, _loss, method=route)
        assert res.info["jvp"] == "reverse"
        assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= 1e-9


class _NoForwardNoDouble(torch.autograd.Function):
    """tanh without a forward-mode rule and with a backward that is not differentiable."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


def test_no_forward_and_no_double_backward_fails_before_the_solve_with_both_causes():
    x = torch.randn(4, 3, dtype=torch.float64)
    w = torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(
        NotImplementedError, match=r"natural_gradient: phi uses an operation without forward-mode"
    ):
        ng.natural_gradient(lambda p: _NoForwardNoDouble.apply(x @ p), w, _loss)


# ----------------------------------------------------------------------------- 2. randomness


def _dropout_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 2)).double().train()


@pytest.mark.parametrize("route", ROUTES)
def test_dropout_in_training_mode_is_refused_with_the_fix(route):
    phi, params = ng.from_module(_dropout_model(), torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(
        ValueError,
        match=r"natural_gradient: phi is not deterministic: .*Call model.eval\(\).*from_module\(model, inputs, "
        r"seed=0\)",
    ):
        ng.natural_gradient(phi, params, _loss, method=route)


def test_fixed_seed_replays_one_mask_and_leaves_the_global_generator_alone():
    model = _dropout_model()
    x = torch.randn(5, 3, dtype=torch.float64)
    phi, params = ng.from_module(model, x, seed=3)
    state = torch.get_rng_state()
    first = phi(params)
    assert torch.equal(phi(params), first) and torch.equal(torch.get_rng_state(), state)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        assert torch.equal(model(x), first)  # the mask of seed 3
    res = ng.natural_gradient(phi, params, _loss)
    ref = ng.reference.natural_gradient(phi, params, _loss)
    assert res.method == "dual"
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= 1e-9


# ----------------------------------------------------------------------------- 3. BatchNorm in training mode


@pytest.mark.parametrize("route", ["primal", "dual", "lstsq", "krylov", "auto"])
def test_batchnorm_training_uses_batch_statistics_without_touching_buffers(route):
    phi, params = _zoo("resblock-bn-train")
    model = phi.natgrad_module.module
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    before = _snapshot(model)
    res = ng.natural_gradient(phi, params, _loss, method=route)
    ref = ng.reference.natural_gradient(phi, params, _loss)
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= 1e-9
    assert res.info["coupled_examples"] == "BatchNorm normalises with batch statistics in 'bn1', 'bn2'"
    assert all(torch.equal(b, buffers[k]) for k, b in model.named_buffers())
    _assert_untouched(model, before)
    assert model.training and model.bn1.running_mean is not None


def test_batchnorm_batch_statistics_match_the_module_in_training_mode():
    phi, params = _zoo("resblock-bn-train")
    record = phi.natgrad_module
    with torch.no_grad():
        stats = [(bn.running_mean.clone(), bn.num_batches_tracked.clone()) for bn in (record.module.bn1,)]
        expected = record.module(*record.args)  # updates the running statistics, as training would
        record.module.bn1.running_mean.copy_(stats[0][0])
        record.module.bn1.num_batches_tracked.copy_(stats[0][1])
    assert torch.allclose(phi(params), expected, rtol=0, atol=1e-13)


# ----------------------------------------------------------------------------- 4. shared and tied modules


@pytest.mark.parametrize("name", ["shared-sequential", "tied-by-assignment", "parent-uses-child", "gpt-tied"])
def test_shared_and_tied_modules_leave_the_model_untouched_on_every_route(name):
    phi, params = _zoo(name)
    model = phi.natgrad_module.module
    before = _snapshot(model)
    loss = zoo_loss(phi(params))
    _assert_untouched(model, before)
    for route in ROUTES:
        ng.natural_gradient(phi, params, loss, method=route)
        _assert_untouched(model, before)
    ng.reference.natural_gradient(phi, params, loss)
    _assert_untouched(model, before)


def test_ngd_step_on_a_shared_module_reaches_the_model():
    phi, params = _zoo("shared-sequential")
    model = phi.natgrad_module.module
    before = _snapshot(model)
    loss = zoo_loss(phi(params))
    direction = ng.natural_gradient(phi, params, loss, metric=ng.metrics.Euclidean()).direction
    opt = ng.optim.NGD(model.named_parameters(), lr=0.5, metric=ng.metrics.Euclidean())
    opt.step(phi, loss)
    after = dict(model.named_parameters(remove_duplicate=False))
    for name, (param, value) in before.items():
        assert after[name] is param and isinstance(param, nn.Parameter)
        key = "0." + name.split(".", 1)[1] if name.startswith("2.") else name  # the shared instance's name
        assert relative_error(param.detach(), value - 0.5 * direction[key]) <= 1e-12
    assert model[0] is model[2] and model[0].weight is model[2].weight


# ----------------------------------------------------------------------------- 5. errors a user can act on


def test_a_module_passed_as_phi_points_to_from_module():
    model = nn.Linear(3, 2)
    params = dict(model.named_parameters())
    for call, run in [
        ("natural_gradient", lambda: ng.natural_gradient(model, params, _loss)),
        ("jacobian", lambda: ng.jacobian(model, params)),
    ]:
        with pytest.raises(
            TypeError, match=rf"{call}: phi is a torch.nn.Module \(Linear\); .*ng.from_module"
        ):
            run()


def test_from_module_catches_dtype_and_device_mismatches():
    model = nn.Linear(3, 2).double()
    with pytest.raises(
        TypeError,
        match=r"from_module: input is torch.float32 but the parameters of Linear are torch.float64; ",
    ):
        ng.from_module(model, torch.randn(4, 3))
    with pytest.raises(
        TypeError, match=r"from_module: input 1 is on meta but the parameters of Linear are on cpu"
    ):
        ng.from_module(model, (torch.randn(4, 3, dtype=torch.float64), torch.empty(2, device="meta")))
    ng.from_module(nn.Embedding(5, 2), torch.tensor([[1, 2]]))  # integer inputs keep their dtype


def test_tuple_outputs_are_handled_or_the_choice_is_asked_for():
    torch.manual_seed(2)
    attn = nn.MultiheadAttention(4, 2, batch_first=True).double().eval()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    phi, params = ng.from_module(attn, (x, x, x), kwargs={"need_weights": False})  # (out, None): handled
    assert torch.allclose(phi(params), attn(x, x, x, need_weights=False)[0], rtol=0, atol=1e-14)
    phi, params = ng.from_module(attn, (x, x, x))
    with pytest.raises(
        TypeError,
        match=r"from_module: MultiheadAttention.forward returned \(Tensor\(2, 3, 4\), Tensor\(2, 3, 3\)\), with 2 "
        r"tensors; pass from_module\(\.\.\., output=0\)",
    ):
        phi(params)
    rnn = nn.GRU(3, 2, batch_first=True).double()
    phi, params = ng.from_module(rnn, torch.randn(2, 4, 3, dtype=torch.float64), output=lambda out: out[1][0])
    res = ng.natural_gradient(phi, params, _loss, method="structured")
    ref = ng.reference.natural_gradient(phi, params, _loss)
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= 1e-9


def test_phi_takes_a_subset_of_the_parameters_and_names_unknown_ones():
    torch.manual_seed(6)
    model = nn.Linear(3, 2).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    phi, params = ng.from_module(model, x)
    weight = torch.zeros_like(params["weight"])
    assert torch.equal(phi({"weight": weight}), model.bias.detach().expand(4, 2))  # the bias keeps its value
    with pytest.raises(
        ValueError, match=r"from_module: phi\(params\) got parameter names the module does not have"
    ):
        phi({"weight": weight, "scale": weight})


def test_packed_sequences_get_an_actionable_error():
    torch.manual_seed(3)
    gru = nn.GRU(3, 4, batch_first=True).double()
    x = torch.randn(2, 3, 3, dtype=torch.float64)
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([3, 2]), batch_first=True)
    phi, params = ng.from_module(gru, (packed,), output=lambda out: out[1])
    with pytest.raises(
        RuntimeError, match=r"natural_gradient: phi cannot be differentiated with torch.func .*padded"
    ):
        ng.natural_gradient(phi, params, _loss)


@pytest.mark.parametrize("index", [0, 1], ids=["output", "attention-weights"])
def test_a_selected_attention_output_is_exact_on_the_structured_route(index):
    """from_module(output=...) on a root MultiheadAttention: either tensor of (out, weights) is differentiated."""
    torch.manual_seed(5)
    attn = nn.MultiheadAttention(4, 2, batch_first=True).double().eval()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    phi, params = ng.from_module(attn, (x, x, x), output=index)
    res = ng.natural_gradient(phi, params, _loss, method="structured")
    ref = ng.reference.natural_gradient(phi, params, _loss)
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= 1e-9
    assert res.info["kernel_routes"]["<outside modules>"].startswith("whole-model/vjp: in_proj_weight")


def test_ngd_step_with_batchnorm_in_training_mode_keeps_the_running_statistics():
    phi, params = _zoo("resblock-bn-train")
    model = phi.natgrad_module.module
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    objects = dict(model.named_parameters())
    start = {k: v.clone() for k, v in params.items()}  # params share storage with the model
    loss = zoo_loss(phi(params))
    direction = ng.natural_gradient(phi, params, loss).direction
    natgrad.optim.NGD(model.named_parameters(), lr=0.25, metric=ng.metrics.Euclidean()).step(phi, loss)
    assert all(torch.equal(b, buffers[k]) for k, b in model.named_buffers())
    for name, p in model.named_parameters():
        assert p is objects[name]
        assert relative_error(p.detach(), start[name] - 0.25 * direction[name]) <= 1e-12


def test_functional_call_is_safe_for_shared_modules_where_torch_func_is_not():
    """torch.func.functional_call leaves a plain tensor in a model that uses one instance twice; ours does not."""
    phi, params = _zoo("shared-sequential")
    model = phi.natgrad_module.module
    x = phi.natgrad_module.args[0]
    before = _snapshot(model)
    moved = {k: v + 0.1 for k, v in params.items()}
    expected = phi(moved)
    assert torch.equal(ng.models.functional_call(model, moved, (x,)), expected)
    _assert_untouched(model, before)
    J = torch.func.jacrev(lambda p: ng.models.functional_call(model, p, x))(params)
    assert (
        relative_error(
            torch.cat([j.reshape(expected.numel(), -1) for j in J.values()], 1), ng.jacobian(phi, params)
        )
        <= 1e-13
    )
    _assert_untouched(model, before)
    with pytest.raises(
        ValueError, match=r"functional_call: Sequential has no parameters named \['2.weight'\]"
    ):
        ng.models.functional_call(model, {"2.weight": params["0.weight"]}, x)
