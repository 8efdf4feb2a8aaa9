"""Tanh MLPs with a zero read-out and the GD / natural-gradient loops of the nonlinear-network experiment."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.func import grad as func_grad

import natgrad as ng

LOSSES = ("squared", "logistic")


def tanh_mlp(
    widths: Sequence[int],
    input_dim: int,
    *,
    hidden_gain: float,
    bias_std: float,
    seed: int,
    dtype: torch.dtype = torch.float64,
) -> nn.Sequential:
    """x ↦ aᵀ tanh(W_k ⋯ tanh(W_1 x + b_1) ⋯ + b_k) + c with a = 0, c = 0 (zero read-out).

    Hidden weights are N(0, gain²/fan_in) and biases N(0, bias_std²): with gain 2 the pre-activations are of
    order one, so the tanh features are genuinely nonlinear on the data and J has full row rank with a
    moderate condition number. The zero read-out makes the initial outputs u₀ = 0 for every architecture.
    """
    if not widths or any(int(w) < 1 for w in widths):
        raise ValueError(f"tanh_mlp: widths must be a non-empty list of positive ints, got {list(widths)}")
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    fan_in = input_dim
    for width in widths:
        linear = nn.Linear(fan_in, width, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(
                torch.randn(width, fan_in, generator=generator) * hidden_gain / math.sqrt(fan_in)
            )
            linear.bias.copy_(torch.randn(width, generator=generator) * bias_std)
        layers += [linear, nn.Tanh()]
        fan_in = width
    readout = nn.Linear(fan_in, 1, dtype=dtype)
    nn.init.zeros_(readout.weight)
    nn.init.zeros_(readout.bias)
    return nn.Sequential(*layers, readout)


def output_loss(kind: str, targets: Tensor) -> Callable[[Tensor], Tensor]:
    """L(u) = ½‖u − y‖² (squared) or Σ log(1 + e^{−y u}) (logistic, labels ±1), for outputs u of shape (n, 1)."""
    if kind == "squared":
        return lambda z: 0.5 * ((z.reshape(-1) - targets) ** 2).sum()
    if kind == "logistic":
        return lambda z: torch.nn.functional.softplus(-targets * z.reshape(-1)).sum()
    raise ValueError(f"output_loss: kind must be one of {LOSSES}, got {kind!r}")


def output_metric(kind: str) -> ng.metrics.Metric:
    """The training-input Fisher of the loss: Euclidean (squared) or Bernoulli diag σ(u)σ(−u) (logistic)."""
    return ng.metrics.Euclidean() if kind == "squared" else ng.metrics.Bernoulli()


def train(
    module: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    kind: str,
    *,
    natural: bool,
    lr: float,
    steps: int,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """ξ ← ξ − lr·v with v the Moore–Penrose natural gradient (``natural=True``) or the plain gradient.

    Returns:
        The final parameters and a record with the training outputs at every step (``outputs``, steps+1 rows)
        and, for NGD, the numerical rank of J on the training inputs at every step (``ranks``).
    """
    phi, params = ng.from_module(module, inputs)
    params = {name: p.clone() for name, p in params.items()}
    loss = output_loss(kind, targets)
    metric = output_metric(kind)
    outputs, ranks = [], []
    for _ in range(steps):
        if natural:
            result = ng.natural_gradient(phi, params, loss, metric=metric)
            outputs.append(result.output.reshape(-1).tolist())
            ranks.append(int(result.rank))
            update = result.direction
        else:
            outputs.append(phi(params).reshape(-1).tolist())
            update = func_grad(lambda p: loss(phi(p)))(params)
        params = {name: params[name] - lr * update[name] for name in params}
    outputs.append(phi(params).reshape(-1).tolist())
    return params, {"outputs": outputs, "ranks": ranks}


def predict(module: nn.Module, params: dict[str, Tensor], inputs: Tensor) -> Tensor:
    """The network with parameters ``params`` on new inputs (shape (m,))."""
    with torch.no_grad():
        return functional_call(module, params, (inputs,)).reshape(-1)
