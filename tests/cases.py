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
