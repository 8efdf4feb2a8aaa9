"""Test cases as data: parametrisations × metrics × losses × generalized inverses.

Every route of the engine is compared against ``natgrad.reference`` on the products of these lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import natgrad as ng


@dataclass(frozen=True)
class Case:
    """A parametrisation with its point: ``build(dtype) -> (phi, params)``; outputs shaped (N, C) or (n,)."""

    name: str
    build: Callable[[torch.dtype], tuple[Callable, object]]
    kind: str  # "logits" (N, C) real outputs, or "probabilities" (a point of the simplex)
    module: bool = True  # built with ng.from_module (so the structured route applies)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _module_case(make: Callable[[], nn.Module], inputs: Callable[[torch.Generator], Tensor], seed: int):
    def build(dtype: torch.dtype):
        torch.manual_seed(seed)
        module = make().to(dtype).eval()
        x = inputs(_gen(seed + 1)).to(dtype)
        return ng.from_module(module, x)

    return build


class TiedAutoencoder(nn.Module):
    """Decoder weight tied to the encoder weight (one parameter used twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 3)
        self.dec = nn.Linear(3, 4)
        self.dec.weight = self.enc.weight  # tied: dec uses enc.weight transposed below

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.enc(x))
        return F.linear(h, self.enc.weight.T, self.dec.bias)


def _batchnorm_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    bn = model[1]
    bn.running_mean.copy_(torch.linspace(-0.5, 0.5, 6))
    bn.running_var.copy_(torch.linspace(0.5, 2.0, 6))
    return model


def _frozen_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    model[0].bias.requires_grad_(False)
    return model


def _polynomial(dtype: torch.dtype):
    xi = torch.tensor([0.7, -1.2, 0.4], dtype=dtype)

    def phi(p: Tensor) -> Tensor:
        return torch.stack([p[0] * p[1] + p[2] ** 2, p[0] ** 3 - p[1] * p[2]])

    return phi, xi


def _softmax(dtype: torch.dtype):
    xi = torch.tensor([0.3, -0.2, 0.9, 0.1], dtype=dtype)
    return (lambda p: torch.softmax(p, dim=-1)), xi


CASES = [
    Case(
        "mlp-overparam",
        _module_case(
            lambda: nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)),
            lambda g: torch.randn(4, 3, generator=g),
            0,
        ),
        "logits",
    ),
    Case(
        "mlp-underparam",
        _module_case(
            lambda: nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)),
            lambda g: torch.randn(12, 3, generator=g),
            5,
        ),
        "logits",
    ),
    Case(
        "cnn",
        _module_case(
            lambda: nn.Sequential(
                nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)
            ),
            lambda g: torch.randn(3, 1, 4, 4, generator=g),
            2,
        ),
        "logits",
    ),
    Case("tied", _module_case(TiedAutoencoder, lambda g: torch.randn(3, 4, generator=g), 3), "logits"),
    Case(
        "batchnorm-eval",
        _module_case(_batchnorm_model, lambda g: torch.randn(5, 3, generator=g), 4),
        "logits",
    ),
    Case("frozen", _module_case(_frozen_model, lambda g: torch.randn(6, 3, generator=g), 5), "logits"),
    Case("polynomial", _polynomial, "logits", module=False),
    Case("softmax", _softmax, "probabilities", module=False),
]


@dataclass(frozen=True)
class MetricCase:
    """A metric and a loss that suits it: ``make(z) -> (metric, loss)`` built from the model point z."""

    name: str
    make: Callable[[Tensor], tuple[ng.metrics.Metric, Callable[[Tensor], Tensor]]]
    kinds: tuple[str, ...] = ("logits",)


def _targets(z: Tensor, seed: int = 7) -> Tensor:
    return torch.randn(z.shape, generator=_gen(seed)).to(z.dtype)


def _smooth_loss(z: Tensor) -> Callable[[Tensor], Tensor]:
    y = _targets(z)
    return lambda out: torch.log(torch.cosh(out - y)).sum() + 0.1 * (out**3).sum()


def _labels(z: Tensor) -> Tensor:
    classes = z.shape[-1] if z.ndim > 1 else z.numel()
    rows = z.reshape(-1, classes).shape[0]
    return torch.randint(0, classes, (rows,), generator=_gen(11))


def _categorical(z: Tensor):
    y = _labels(z)
    return ng.metrics.Categorical(), lambda out: F.cross_entropy(out.reshape(y.numel(), -1), y)


def _bernoulli(z: Tensor):
    y = (torch.rand(z.shape, generator=_gen(13)) > 0.5).to(z.dtype)
    return ng.metrics.Bernoulli(), lambda out: F.binary_cross_entropy_with_logits(out, y, reduction="sum")


def _gaussian(z: Tensor):
    var = (0.5 + torch.rand(z.shape, generator=_gen(17))).to(z.dtype)
    y = _targets(z)
    return ng.metrics.Gaussian(var), lambda out: (((out - y) ** 2) / (2 * var)).sum()


def _dense_rank_deficient(z: Tensor):
    n = z.numel()
    b = torch.randn(n, max(1, n - 1), generator=_gen(19)).to(z.dtype)
    return ng.metrics.Dense(b @ b.T), _smooth_loss(z)


def _factor(z: Tensor):
    n = z.numel()
    b = torch.randn(n, n + 2, generator=_gen(23)).to(z.dtype)
    return ng.metrics.Factor(b), _smooth_loss(z)


def _point_dependent(z: Tensor):
    n = z.numel()
    w = torch.randn(n, 2, generator=_gen(29)).to(z.dtype)

    def fn(out: Tensor) -> Tensor:
        flat = out.reshape(-1)
        return torch.diag(1.0 + flat**2) + w @ w.T * torch.tanh(flat).sum() ** 2

    return ng.metrics.PointDependent(fn), _smooth_loss(z)


def _fisher_rao(z: Tensor):
    q = torch.softmax(torch.randn(z.shape, generator=_gen(31)).to(z.dtype), dim=-1)
    return ng.metrics.FisherRao(), lambda p: (q * (q.log() - p.log())).sum()


METRICS = [
    MetricCase("euclidean", lambda z: (ng.metrics.Euclidean(), _smooth_loss(z)), ("logits", "probabilities")),
    MetricCase("gaussian", _gaussian),
    MetricCase("bernoulli", _bernoulli),
    MetricCase("categorical", _categorical),
    MetricCase("dense-singular", _dense_rank_deficient, ("logits", "probabilities")),
    MetricCase("factor", _factor),
    MetricCase("point-dependent", _point_dependent),
    MetricCase("fisher-rao", _fisher_rao, ("probabilities",)),
]


def inverses(d: int, dtype: torch.dtype) -> dict[str, object]:
    """One of each kind of generalized inverse (and damping) for d parameters."""
    g = _gen(37)
    a = torch.randn(d, d, generator=g).to(dtype)
    return {
        "moore-penrose": ng.MoorePenrose(),
        "ginverse": ng.GInverse(
            torch.randn(d, d, generator=g).to(dtype), torch.randn(d, d, generator=g).to(dtype)
        ),
        "minnorm-diag": ng.MinNorm((0.5 + torch.rand(d, generator=g)).to(dtype)),
        "minnorm-dense": ng.MinNorm(a @ a.T / d + torch.eye(d, dtype=dtype)),
        "damped": ng.Damped(0.1),
    }


INVERSE_NAMES = ["moore-penrose", "ginverse", "minnorm-diag", "minnorm-dense", "damped"]
ROUTES = ["primal", "dual", "lstsq", "krylov"]


def routes_for(case: Case) -> list[str]:
    """The routes that apply to a case: the structured route needs phi from ng.from_module."""
    return [*ROUTES, "structured"] if case.module else ROUTES


def combos() -> list[tuple[Case, MetricCase]]:
    return [(c, m) for c in CASES for m in METRICS if c.kind in m.kinds]


def relative_error(a: Tensor, b: Tensor) -> float:
    scale = torch.linalg.vector_norm(b).clamp_min(1e-300)
    return float(torch.linalg.vector_norm(a.to(b.dtype) - b) / scale)


# ---------------------------------------------------------------------------------------------------------
# Model zoo: stock torch.nn pieces a user brings (tiny: a few examples, widths ≤ 8). Each entry says whether
# the structured route applies, or the wording of its refusal.


@dataclass(frozen=True)
class ZooCase:
    """``build() -> (phi, params)`` in float64; ``refusal`` is None when every route applies, else a regex of
    the structured route's refusal (the dense routes and ``auto`` must still agree with the reference)."""

    name: str
    build: Callable[[], tuple[Callable, object]]
    refusal: str | None = None


class FastPath(nn.Module):
    """Runs ``inner`` with torch's fused attention fast path switched on or off (restored afterwards)."""

    def __init__(self, inner: nn.Module, enabled: bool) -> None:
        super().__init__()
        self.inner = inner
        self.enabled = enabled

    def forward(self, *args: Tensor) -> Tensor:
        previous = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(self.enabled)
        try:
            return self.inner(*args)
        finally:
            torch.backends.mha.set_fastpath_enabled(previous)


class Pooled(nn.Module):
    """A sequence model followed by mean pooling over positions and a linear read-out."""

    def __init__(self, body: nn.Module, width: int, classes: int = 3) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x).mean(1))


class Attention(nn.Module):
    """nn.MultiheadAttention with masks, self- or cross-attention, the output tensor of its (out, weights)."""

    def __init__(self, cross: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.cross = cross

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        source = memory if self.cross else x
        causal = torch.triu(torch.ones(x.shape[1], source.shape[1], dtype=torch.bool), 1)
        padding = torch.zeros(x.shape[0], source.shape[1], dtype=torch.bool)
        padding[0, -1] = True
        out, _ = self.attn(
            x,
            source,
            source,
            attn_mask=None if self.cross else causal,
            key_padding_mask=padding,
            need_weights=False,
        )
        return torch.tanh(out)


class SdpaBlock(nn.Module):
    """User-written causal self-attention with F.scaled_dot_product_attention and a pre-LayerNorm."""

    def __init__(self, width: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.heads = heads

    def forward(self, x: Tensor) -> Tensor:
        n, t, e = x.shape
        q, k, v = self.qkv(self.norm(x)).split(e, dim=-1)
        q, k, v = (a.reshape(n, t, self.heads, e // self.heads).transpose(1, 2) for a in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.proj(y.transpose(1, 2).reshape(n, t, e))


class TinyGPT(nn.Module):
    """Causal decoder: token + learned position embeddings, one SDPA block, a GELU MLP, a final LayerNorm and
    logits through the tied token embedding."""

    def __init__(self, vocab: int = 7, width: int = 8, length: int = 4) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Parameter(0.1 * torch.randn(length, width))
        self.block = SdpaBlock(width)
        self.mlp = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width)
        )
        self.final = nn.LayerNorm(width)
        self.out = nn.Linear(width, vocab, bias=False)
        self.out.weight = self.tokens.weight

    def forward(self, idx: Tensor) -> Tensor:
        h = self.tokens(idx) + self.positions[: idx.shape[1]]
        h = self.block(h)
        h = h + self.mlp(h)
        return self.out(self.final(h))[:, -1]


class MhaDecoder(nn.Module):
    """Causal decoder with nn.MultiheadAttention (is_causal with a mask) and a tied read-out."""

    def __init__(self, vocab: int = 7, width: int = 8) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.out = nn.Linear(width, vocab)
        self.out.weight = self.tokens.weight

    def forward(self, idx: Tensor) -> Tensor:
        h = self.tokens(idx)
        t = idx.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t, dtype=h.dtype)
        a, _ = self.attn(
            self.norm(h), self.norm(h), self.norm(h), attn_mask=mask, is_causal=True, need_weights=False
        )
        return self.out(h + a).mean(1)


class Recurrent(nn.Module):
    """An nn.RNN/LSTM/GRU stack (batch first) read out at the last step."""

    def __init__(self, rnn: nn.Module, width: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(width, 2)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class FinalState(nn.Module):
    """An LSTM from a given initial state, read out through its output sequence and its final cell state."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor, h0: Tensor, c0: Tensor) -> Tensor:
        out, (_, c) = self.rnn(x, (h0, c0))
        return self.head(out[:, -1] * torch.tanh(c[-1]))


class SequenceFirst(nn.Module):
    """A sequence-first (T, N, ...) attention or recurrent layer between batch-first transposes."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = x.transpose(0, 1)
        out = (
            self.layer(h, h, h, need_weights=False)[0]
            if isinstance(self.layer, nn.MultiheadAttention)
            else self.layer(h)[0]
        )
        return self.head(out.transpose(0, 1).mean(1))


class DictLayer(nn.Module):
    """A parametrised layer returning a dict whose only parameter-dependent entry is one tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Parameter(0.5 * torch.randn(4, 4))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"hidden": torch.tanh(x @ self.proj), "positive": x > 0}


class DictModel(nn.Module):
    """Reads the tensor entry of a dict-returning layer."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = DictLayer()
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer(x)
        return self.head(out["hidden"] * out["positive"])


class ResBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU-conv-BN plus the identity, then pooling and a linear read-out."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(x + self.bn2(self.conv2(h)))
        return self.head(h.mean((2, 3)))


class ParentUse(nn.Module):
    """A parent that uses its child's weight and its own parameter in its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 1.5]))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.lin(x))
        return self.scale * (h @ self.lin.weight)


def _zoo(
    make: Callable[[], nn.Module],
    inputs: Callable[[torch.Generator], object],
    init_seed: int,
    *,
    train: bool = False,
    **options,
) -> Callable[[], tuple[Callable, object]]:
    def build():
        torch.manual_seed(init_seed)
        module = make().double()
        module.train(train)
        x = inputs(_gen(init_seed + 1))
        x = tuple(t.double() if t.is_floating_point() else t for t in x) if isinstance(x, tuple) else x
        if isinstance(x, Tensor) and x.is_floating_point():
            x = x.double()
        return ng.from_module(module, x, **options)

    return build


def _seq(n: int = 2, t: int = 3, width: int = 8):
    return lambda g: torch.randn(n, t, width, generator=g)


def _encoder_layer() -> nn.Module:
    return nn.TransformerEncoderLayer(8, 2, 8, dropout=0.0, batch_first=True)


def _shared_sequential() -> nn.Module:
    shared = nn.Linear(4, 4)
    return nn.Sequential(shared, nn.Tanh(), shared, nn.Tanh(), nn.Linear(4, 2))


def _tied_by_assignment() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    model[2].weight = model[0].weight
    return model


_BATCHNORM_REFUSAL = r"BatchNorm2d 'bn1' normalises with batch statistics .*call model.eval\(\)"

ZOO = [
    ZooCase("encoder-layer-fastpath", _zoo(lambda: Pooled(FastPath(_encoder_layer(), True), 8), _seq(), 40)),
    ZooCase("encoder-layer-slowpath", _zoo(lambda: Pooled(FastPath(_encoder_layer(), False), 8), _seq(), 41)),
    ZooCase(
        "encoder-classifier",
        _zoo(
            lambda: nn.Sequential(
                nn.Embedding(7, 8),
                Pooled(nn.TransformerEncoder(_encoder_layer(), 2, enable_nested_tensor=False), 8),
            ),
            lambda g: torch.randint(0, 7, (2, 3), generator=g),
            42,
        ),
    ),
    ZooCase("mha-self-masked", _zoo(lambda: Attention(False), lambda g: (_seq()(g), _seq()(g)), 43)),
    ZooCase("mha-cross", _zoo(lambda: Attention(True), lambda g: (_seq()(g), _seq(t=4)(g)), 44)),
    ZooCase(
        "mha-with-weights",
        _zoo(lambda: nn.MultiheadAttention(8, 2, batch_first=True), lambda g: (_seq()(g),) * 3, 45, output=0),
    ),
    ZooCase("sdpa-block", _zoo(lambda: Pooled(SdpaBlock(), 8), _seq(), 46)),
    ZooCase("gpt-tied", _zoo(TinyGPT, lambda g: torch.randint(0, 7, (2, 4), generator=g), 47)),
    ZooCase("mha-decoder-tied", _zoo(MhaDecoder, lambda g: torch.randint(0, 7, (2, 3), generator=g), 48)),
    ZooCase(
        "lstm-stack",
        _zoo(lambda: Recurrent(nn.LSTM(3, 4, num_layers=2, batch_first=True), 4), _seq(width=3), 49),
    ),
    ZooCase(
        "gru-stack",
        _zoo(lambda: Recurrent(nn.GRU(3, 4, num_layers=2, batch_first=True), 4), _seq(width=3), 50),
    ),
    ZooCase(
        "rnn-bidirectional",
        _zoo(lambda: Recurrent(nn.RNN(3, 3, batch_first=True, bidirectional=True), 6), _seq(width=3), 51),
    ),
    ZooCase(
        "lstm-final-state",
        _zoo(
            FinalState,
            lambda g: (
                torch.randn(2, 3, 3, generator=g),
                torch.randn(1, 2, 4, generator=g),
                torch.randn(1, 2, 4, generator=g),
            ),
            61,
        ),
    ),
    ZooCase(
        "mha-sequence-first",
        _zoo(lambda: SequenceFirst(nn.MultiheadAttention(4, 2)), _seq(width=4), 62),
        r"module 'layer' \(MultiheadAttention\) returned shape \(3, 2, 4\), but the structured route needs the "
        r"batch axis first .*use batch_first layouts",
    ),
    ZooCase(
        "gru-sequence-first",
        _zoo(lambda: SequenceFirst(nn.GRU(4, 4)), _seq(width=4), 63),
        r"module 'layer' \(GRU\) returned shape \(3, 2, 4\), but the structured route needs the batch axis first",
    ),
    ZooCase("dict-output-layer", _zoo(DictModel, lambda g: torch.randn(3, 4, generator=g), 64)),
    ZooCase("resblock-bn-eval", _zoo(ResBlock, lambda g: torch.randn(3, 3, 4, 4, generator=g), 52)),
    ZooCase(
        "resblock-bn-train",
        _zoo(ResBlock, lambda g: torch.randn(3, 3, 4, 4, generator=g), 53, train=True),
        _BATCHNORM_REFUSAL,
    ),
    ZooCase("shared-sequential", _zoo(_shared_sequential, lambda g: torch.randn(3, 4, generator=g), 54)),
    ZooCase("tied-by-assignment", _zoo(_tied_by_assignment, lambda g: torch.randn(3, 4, generator=g), 55)),
    ZooCase("parent-uses-child", _zoo(ParentUse, lambda g: torch.randn(3, 4, generator=g), 56)),
    ZooCase(
        "weight-norm",
        _zoo(
            lambda: nn.Sequential(
                nn.utils.parametrizations.weight_norm(nn.Linear(3, 4)), nn.Tanh(), nn.Linear(4, 2)
            ),
            lambda g: torch.randn(3, 3, generator=g),
            57,
        ),
    ),
    ZooCase(
        "orthogonal-parametrization",
        _zoo(
            lambda: nn.Sequential(
                nn.utils.parametrizations.orthogonal(nn.Linear(4, 4)), nn.Tanh(), nn.Linear(4, 2)
            ),
            lambda g: torch.randn(3, 4, generator=g),
            58,
        ),
    ),
    ZooCase(
        "conv-transpose-groupnorm-prelu",
        _zoo(
            lambda: nn.Sequential(
                nn.ConvTranspose2d(2, 4, 2, stride=2),
                nn.GroupNorm(2, 4),
                nn.PReLU(4),
                nn.Flatten(),
                nn.Linear(4 * 4 * 4, 2),
            ),
            lambda g: torch.randn(2, 2, 2, 2, generator=g),
            59,
        ),
    ),
    ZooCase(
        "dropout-fixed-seed",
        _zoo(
            lambda: nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 2)),
            lambda g: torch.randn(3, 3, generator=g),
            60,
            train=True,
            seed=0,
        ),
        r"phi replays a fixed random state \(from_module\(seed=\.\.\.\)\)",
    ),
]


def zoo_loss(z: Tensor) -> Callable[[Tensor], Tensor]:
    """A smooth loss with a non-trivial output gradient at z, for the zoo."""
    return _smooth_loss(z)


def curved_residuals(
    n: int, d: int, seed: int
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """Float64 residuals r(θ) = 2 tanh(Aθ + b) + 0.3 (Aθ)² − y on n rows of θ ∈ ℝᵈ (they bend), and a start θ₀."""
    g = _gen(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64) / d**0.5
    b = torch.randn(n, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)

    def residuals(flat: torch.Tensor) -> torch.Tensor:
        return 2.0 * torch.tanh(a @ flat + b) + 0.3 * (a @ flat) ** 2 - y

    return residuals, 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
