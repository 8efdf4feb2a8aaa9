"""Structured kernel and direction against the literal float64 reference (materialised J)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from natgrad.models.structured import (
    categorical_fisher_factor,
    categorical_mc_factor,
    structured_kernel,
    structured_vjp,
)
from natgrad.models.structured._layers import _add_pair, _add_rows_blockwise


def reference_jacobian(model: nn.Module, inputs: tuple) -> torch.Tensor:
    """J = ∂ vec z / ∂ξ (n × d) over trainable parameters, by jacrev."""
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}

    def flat_output(p):
        return functional_call(model, p, inputs).reshape(-1)

    jac = jacrev(flat_output)(params)
    return torch.cat([v.reshape(v.shape[0], -1) for v in jac.values()], dim=1)


def dense_factor(factor: torch.Tensor | None, n: int) -> torch.Tensor:
    if factor is None:
        return torch.eye(n, dtype=torch.float64)
    if factor.dim() == 3:
        return torch.block_diag(*factor)
    return factor


class ScaledResidual(nn.Module):
    """Custom module with its own parameter around a structured child: y = g ⊙ x + tanh(W x)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.randn(width))
        self.inner = nn.Linear(width, width)

    def forward(self, x):
        return self.gain * x + torch.tanh(self.inner(x))


class TiedLM(nn.Module):
    """Embedding whose weight is reused by the read-out Linear, over a sequence."""

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, idx):
        h = torch.tanh(self.mix(self.embed(idx)))
        return self.out(h).mean(1)


class OutsideUse(nn.Module):
    """Parameters used outside the modules that register them: a transposed tied weight in the parent's
    forward, and the bias of a module that is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 3)
        self.dec = nn.Linear(3, 4)

    def forward(self, x):
        h = torch.tanh(self.enc(x))
        return nn.functional.linear(h, self.enc.weight.T, self.dec.bias)


class Twice(nn.Module):
    """The same Linear applied twice (shared weights across calls) plus a sequence Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.layer(torch.tanh(self.layer(x))))).sum(1)


class TimeFirst(nn.Module):
    """Applies its Linear with the sequence axis first, which the structured route rejects."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3)

    def forward(self, x):
        return self.lin(x.transpose(0, 1)).transpose(0, 1).reshape(x.shape[0], -1)


def _batchnorm_eval(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    return bn.eval()


def _frozen_mlp() -> nn.Module:
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))
    model[0].weight.requires_grad_(False)
    model[2].bias.requires_grad_(False)
    return model


CASES = {
    "mlp": lambda: (
        nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)),
        (torch.randn(4, 5),),
    ),
    "mlp-sequence-inplace": lambda: (
        nn.Sequential(nn.Linear(5, 6), nn.ReLU(inplace=True), nn.Linear(6, 3), nn.Flatten()),
        (torch.randn(3, 2, 5),),
    ),
    "conv2d": lambda: (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=2, padding=1),
            nn.Tanh(),
            nn.Conv2d(4, 6, 3, groups=2, dilation=2, padding="same", padding_mode="reflect"),
            nn.Tanh(),
            nn.Conv2d(6, 4, (2, 3), stride=(1, 2), padding=(1, 0), bias=False),
            nn.Flatten(),
            nn.Linear(4 * 5 * 1, 3),
        ),
        (torch.randn(3, 3, 8, 8),),
    ),
    "conv1d": lambda: (
        nn.Sequential(
            nn.Conv1d(2, 4, 3, stride=2, padding=2, dilation=2),
            nn.Tanh(),
            nn.Conv1d(4, 4, 2, groups=4, padding=1, padding_mode="circular"),
            nn.Flatten(),
            nn.Linear(4 * 7, 2),
        ),
        (torch.randn(3, 2, 11),),
    ),
    "embedding": lambda: (
        nn.Sequential(nn.Embedding(7, 4, padding_idx=1), nn.Tanh(), nn.Flatten(), nn.Linear(12, 3)),
        (torch.tensor([[0, 1, 2], [2, 2, 6], [1, 5, 0], [3, 3, 3]]),),
    ),
    "layernorm-groupnorm": lambda: (
        nn.Sequential(
            nn.Conv2d(2, 4, 3),
            nn.GroupNorm(2, 4),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(16, 6),
            nn.LayerNorm(6),
            nn.Tanh(),
            nn.Linear(6, 3),
        ),
        (torch.randn(3, 2, 4, 4),),
    ),
    "layernorm-sequence": lambda: (
        nn.Sequential(nn.Linear(3, 4), nn.LayerNorm([2, 4]), nn.Tanh(), nn.Flatten(), nn.Linear(8, 2)),
        (torch.randn(3, 2, 3),),
    ),
    "batchnorm-eval": lambda: (
        nn.Sequential(nn.Conv2d(2, 3, 3), _batchnorm_eval(3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 2)),
        (torch.randn(3, 2, 4, 4),),
    ),
    "mixed-fallback": lambda: (
        nn.Sequential(nn.Linear(3, 5), ScaledResidual(5), nn.PReLU(), nn.Linear(5, 3)),
        (torch.randn(4, 3),),
    ),
    "outside-use": lambda: (OutsideUse(), (torch.randn(3, 4),)),
    "tied-embedding": lambda: (TiedLM(6, 4), (torch.tensor([[1, 2, 0], [5, 5, 3], [0, 4, 2]]),)),
    "module-called-twice": lambda: (Twice(), (torch.randn(3, 2, 4),)),
    "frozen": lambda: (_frozen_mlp(), (torch.randn(4, 5),)),
}


def _build(name: str, dtype=torch.float64):
    torch.manual_seed(0)
    model, inputs = CASES[name]()
    model = model.to(dtype)
    inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)
    return model, inputs


def _factors(output: torch.Tensor):
    n_ex, c = output.shape[0], output[0].numel()
    gen = torch.Generator().manual_seed(1)
    yield "identity", None
    if output.dim() == 2:
        yield "categorical", categorical_fisher_factor(output.detach())
        yield "categorical-full", categorical_fisher_factor(output.detach(), reduced=False)
    yield "blocks", torch.randn(n_ex, c, 2, generator=gen, dtype=output.dtype)
    yield "dense", torch.randn(n_ex * c, 5, generator=gen, dtype=output.dtype)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_and_direction_match_reference_float64(name):
    model, inputs = _build(name)
    output = model(*inputs)
    jac = reference_jacobian(model, inputs)
    for label, factor in _factors(output):
        b = dense_factor(factor, jac.shape[0])
        a_ref = b.T @ jac
        kernel, context = structured_kernel(model, inputs, factor)
        assert _relative(kernel, a_ref @ a_ref.T) <= 1e-12, (name, label, context.routes)
        y = torch.randn(a_ref.shape[0], dtype=torch.float64)
        direction = structured_vjp(context, y)
        flat = torch.cat([direction[k].reshape(-1) for k in context.params])
        assert _relative(flat, a_ref.T @ y) <= 1e-12, (name, label)


def test_routes_cover_structured_and_fallback_layers():
    model, inputs = _build("mixed-fallback")
    _, context = structured_kernel(model, inputs)
    assert context.routes == {
        "0": "linear/pair",
        "1": "generic/vjp",
        "1.inner": "linear/pair",
        "2": "generic/vjp",
        "3": "linear/pair",
    }
    model, inputs = _build("tied-embedding")
    _, context = structured_kernel(model, inputs)
    assert context.routes["embed"] == "shared-parameter/vjp" and context.routes["mix"] == "linear/rows"


def test_frozen_parameters_are_excluded():
    model, inputs = _build("frozen")
    _, context = structured_kernel(model, inputs)
    assert set(context.params) == {"0.bias", "2.weight", "4.weight", "4.bias"}


@pytest.mark.parametrize("name", ["conv2d", "embedding", "mixed-fallback", "tied-embedding"])
def test_chunking_gives_the_same_kernel(name):
    model, inputs = _build(name)
    factor = torch.randn(inputs[0].shape[0], model(*inputs)[0].numel(), 3, dtype=torch.float64)
    whole, _ = structured_kernel(model, inputs, factor)
    for chunk in (1, 4, 7):
        chunked, _ = structured_kernel(model, inputs, factor, chunk_size=chunk)
        assert _relative(chunked, whole) <= 1e-14


def test_pair_and_row_contractions_agree():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, 3, generator=gen, dtype=torch.float64)
    s = torch.randn(5, 2, 4, 6, generator=gen, dtype=torch.float64)
    pair = torch.zeros(10, 10, dtype=torch.float64)
    _add_pair(pair, x, s)
    for chunk in (None, 1, 2):
        rows = torch.zeros(10, 10, dtype=torch.float64)
        _add_rows_blockwise(rows, x, s, chunk)
        assert _relative(rows, pair) <= 1e-14


@pytest.mark.parametrize("name", ["mlp", "conv2d", "mixed-fallback"])
def test_float32_matches_float64_reference(name):
    model64, inputs64 = _build(name)
    output = model64(*inputs64)
    factor = categorical_fisher_factor(output.detach()) if output.dim() == 2 else None
    jac = reference_jacobian(model64, inputs64)
    a_ref = dense_factor(factor, jac.shape[0]).T @ jac
    model32, inputs32 = _build(name, torch.float32)
    kernel, context = structured_kernel(
        model32, inputs32, None if factor is None else factor.float(), chunk_size=3
    )
    assert kernel.dtype == torch.float32
    assert _relative(kernel.double(), a_ref @ a_ref.T) <= 1e-5
    y = torch.randn(a_ref.shape[0], dtype=torch.float64)
    direction = context.vjp(y.float())
    flat = torch.cat([direction[k].reshape(-1) for k in context.params]).double()
    assert _relative(flat, a_ref.T @ y) <= 1e-4


def test_categorical_factors_reproduce_the_fisher():
    logits = torch.randn(6, 5, dtype=torch.float64)
    p = torch.softmax(logits, 1)
    fisher = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    for reduced in (True, False):
        b = categorical_fisher_factor(logits, reduced=reduced)
        assert b.shape[2] == (4 if reduced else 5)
        assert torch.allclose(b @ b.transpose(1, 2), fisher, atol=1e-15, rtol=0)


def test_monte_carlo_fisher_is_unbiased():
    """E[Jᵀ B_mc B_mcᵀ J] = Jᵀ F J, checked entrywise with the sample standard error.

    With M independent draws the mean of each entry is approximately normal around its expectation with
    standard error σ̂/√M (CLT). Bounding |z| ≤ 6 for each of the d² entries gives a family-wise false
    alarm rate below d²·2·10⁻⁹ ≈ 10⁻⁵. The same test applied to a biased estimator (uncentred columns
    e_y/√k) must fail, which shows the test has power.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    logits = model(x).detach()
    jac = reference_jacobian(model, (x,))
    p = torch.softmax(logits, 1)
    exact = torch.block_diag(*(torch.diag_embed(p) - p[:, :, None] * p[:, None, :]))
    expected = jac.T @ exact @ jac
    gen = torch.Generator().manual_seed(7)
    draws, samples = 4000, 2
    unbiased, biased = [], []
    for _ in range(draws):
        b = categorical_mc_factor(logits, samples, generator=gen)
        a = torch.block_diag(*b).T @ jac
        unbiased.append(a.T @ a)
        centred_off = b + p[:, :, None] / samples**0.5  # e_y/√k: drops the −p centring
        a = torch.block_diag(*centred_off).T @ jac
        biased.append(a.T @ a)
    for stack, should_pass in ((torch.stack(unbiased), True), (torch.stack(biased), False)):
        mean = stack.mean(0)
        stderr = stack.std(0) / draws**0.5
        z = ((mean - expected).abs() / stderr.clamp_min(1e-12)).max().item()
        assert (z <= 6.0) is should_pass, z
    # The structured kernel built with one MC factor is the exact kernel of that factor.
    b = categorical_mc_factor(logits, samples, generator=gen)
    kernel, _ = structured_kernel(model, (x,), b)
    a = torch.block_diag(*b).T @ jac
    assert _relative(kernel, a @ a.T) <= 1e-12


def test_callable_factor_is_applied_to_the_output():
    model, inputs = _build("mlp")
    via_callable, _ = structured_kernel(model, inputs, categorical_fisher_factor)
    direct, _ = structured_kernel(model, inputs, categorical_fisher_factor(model(*inputs).detach()))
    assert _relative(via_callable, direct) <= 1e-15


def test_errors_name_the_call_and_the_fix():
    model, inputs = _build("batchnorm-eval")
    model.train()
    with pytest.raises(
        ValueError, match=r"structured_kernel: BatchNorm2d '1' normalises with batch statistics"
    ):
        structured_kernel(model, inputs)
    model, inputs = _build("mlp")
    with pytest.raises(
        ValueError, match=r"structured_kernel: a block output_factor must have shape \(N, C, k\)"
    ):
        structured_kernel(model, inputs, torch.ones(4, 2, 1, dtype=torch.float64))
    with pytest.raises(
        ValueError, match=r"structured_kernel: a dense output_factor must have shape \(n, r\)"
    ):
        structured_kernel(model, inputs, torch.ones(5, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"structured_kernel: output_factor must be None"):
        structured_kernel(model, inputs, "fisher")
    with pytest.raises(ValueError, match=r"structured_kernel: chunk_size must be a positive integer"):
        structured_kernel(model, inputs, chunk_size=0)
    _, context = structured_kernel(model, inputs)
    with pytest.raises(ValueError, match=r"structured_vjp: y must have r = 12 entries"):
        context.vjp(torch.ones(3, dtype=torch.float64))
    with pytest.raises(
        ValueError, match=r"structured_kernel: module 'lin' \(Linear\) returned shape \(4, 2, 3\)"
    ):
        structured_kernel(TimeFirst().double(), (torch.randn(2, 4, 5, dtype=torch.float64),))
    with pytest.raises(ValueError, match=r"categorical_mc_factor: samples must be >= 1"):
        categorical_mc_factor(torch.zeros(2, 3), 0)


@pytest.mark.parametrize("metric_name", ["Categorical", "Euclidean"])
def test_engine_bridge_matches_dual_route(metric_name):
    import natgrad

    model, inputs = _build("conv2d")
    metric = getattr(natgrad.metrics, metric_name)()
    labels = torch.tensor([0, 2, 1])

    def loss(z):
        return nn.functional.cross_entropy(z, labels, reduction="sum")

    phi, params = natgrad.from_module(model, inputs)
    expected = natgrad.natural_gradient(phi, params, loss, metric, method="dual")
    structured = natgrad.natural_gradient(phi, params, loss, metric, method="structured")
    direction, rank = structured.direction, structured.rank
    flat = torch.cat([direction[k].reshape(-1) for k in params])
    ref = torch.cat([expected.direction[k].reshape(-1) for k in params])
    assert rank == expected.rank
    assert _relative(flat, ref) <= 1e-9


def test_parameters_used_outside_their_modules_get_whole_model_rows():
    model, inputs = _build("outside-use")
    jac = reference_jacobian(model, inputs)
    kernel, context = structured_kernel(model, inputs)
    # dec is never called: its weight (unused, zero rows) and bias (used by the parent) are outside calls
    assert context.routes["<outside modules>"] == "whole-model/vjp: enc.weight, dec.weight, dec.bias"
    assert context.routes["enc"] == "linear/pair"  # enc.bias alone still takes the layer formula
    assert _relative(kernel, jac @ jac.T) <= 1e-12


@pytest.mark.parametrize("duplicated", [False, True], ids=["full-rank", "repeated-examples"])
@pytest.mark.parametrize("damping", [None, 0.3])
def test_engine_solves_by_cholesky_at_full_rank_and_by_eigh_otherwise(duplicated, damping):
    """Both kernel solves against the float64 reference: repeated examples make K singular (eigh, rank halves)."""
    import natgrad as ng

    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    x = torch.randn(3, 3, dtype=torch.float64)
    x = torch.cat([x, x]) if duplicated else x
    y = torch.tensor([0, 3, 1] * (2 if duplicated else 1))
    phi, params = ng.from_module(model, x)
    inverse = ng.MoorePenrose() if damping is None else ng.Damped(damping)

    def loss(z):
        return nn.functional.cross_entropy(z, y, reduction="sum")

    res = ng.natural_gradient(phi, params, loss, ng.metrics.Categorical(), inverse, method="structured")
    ref = ng.reference.natural_gradient(phi, params, loss, ng.metrics.Categorical(), inverse)
    if damping is None:
        assert res.info["kernel_solve"] == ("eigh" if duplicated else "cholesky")
    else:  # K + λI is factorised and nothing else: K's own full-rank certificate is not run
        assert "kernel_solve" not in res.info and res.info["damped_solve"] == "cholesky"
    assert res.rank == ref.rank == 9
    got, want = ng.flatten_params(res.direction), ng.flatten_params(ref.direction)
    assert float((got - want).norm() / want.norm()) <= 1e-9
    assert torch.allclose(res.pushforward, ref.pushforward, atol=1e-9 * float(ref.pushforward.abs().max()))
