"""Metrics that are diagonal on the flattened outputs."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from natgrad.metrics._base import DiagonalLocal, LocalMetric, Metric


class Euclidean(Metric):
    """g = I: the plain least-squares geometry of the outputs."""

    def at(self, z: Tensor, call: str = "Euclidean") -> LocalMetric:
        return DiagonalLocal(torch.ones(z.numel(), dtype=z.dtype, device=z.device))


class Gaussian(Metric):
    """Fisher metric of a Gaussian with mean z and fixed variance σ²: g = diag(1/σ²).

    Args:
        variance: σ² > 0, a float or a tensor broadcastable to the output shape.
    """

    def __init__(self, variance: float | Tensor = 1.0) -> None:
        try:
            v = torch.as_tensor(variance)
        except (TypeError, ValueError, RuntimeError):
            v = None
        if v is None or v.is_complex() or v.dtype == torch.bool:
            raise TypeError(
                f"Gaussian: variance must be a positive float or a real tensor, got {type(variance).__name__}"
            )
        if not bool(torch.isfinite(v).all()) or bool((v <= 0).any()):
            raise ValueError(f"Gaussian: variance must be finite and > 0, got {variance!r}")
        self.variance = variance

    def at(self, z: Tensor, call: str = "Gaussian") -> LocalMetric:
        v = torch.as_tensor(self.variance, dtype=z.dtype, device=z.device)
        try:
            v = torch.broadcast_to(v, z.shape)
        except RuntimeError:
            raise ValueError(
                f"{call}: Gaussian variance of shape {tuple(v.shape)} does not broadcast to the "
                f"outputs' shape {tuple(z.shape)}"
            ) from None
        return DiagonalLocal((1.0 / v).reshape(-1))

    def __repr__(self) -> str:
        return f"Gaussian(variance={self.variance!r})"


class Bernoulli(Metric):
    """Fisher metric of independent Bernoulli variables with logits z: g = diag(σ(z) σ(−z))."""

    def at(self, z: Tensor, call: str = "Bernoulli") -> LocalMetric:
        # σ(z)σ(−z) through log-sigmoids: no overflow at large |z|.
        return DiagonalLocal(torch.exp(logsigmoid(z) + logsigmoid(-z)).reshape(-1))


class FisherRao(Metric):
    """Fisher–Rao metric on probability vectors z (positive entries): g = diag(1/p)."""

    def at(self, z: Tensor, call: str = "FisherRao") -> LocalMetric:
        if bool((z <= 0).any()):
            raise ValueError(
                f"{call}: FisherRao needs strictly positive probabilities, got min entry {float(z.min()):.3g}; "
                "the metric diag(1/p) is undefined on the boundary of the simplex"
            )
        return DiagonalLocal((1.0 / z).reshape(-1))
