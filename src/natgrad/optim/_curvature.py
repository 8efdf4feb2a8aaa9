"""What a step needs to know about the loss: its metric, the metric's scale, and g(z) u products.

`resolve_curvature` turns the optimizer's ``metric`` setting and the loss into a `Curvature`:
``metric="auto"`` takes the metric from a loss of `natgrad.optim` (categorical / Bernoulli / Gaussian Fisher,
Euclidean for least squares); a metric object is used as given (scale 1, any loss). With ``mc_samples = k``
the exact metric is replaced by the Monte-Carlo Fisher (1/k) Σ_j s_j s_jᵀ of sampled scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import natgrad as ng

from ._losses import monte_carlo_factor


@dataclass(frozen=True)
class Curvature:
    """The metric used for one step.

    Attributes:
        metric: engine metric g(z₀) handed to `natural_gradient`.
        scale: s with (Gauss–Newton curvature of the loss) = s · Jᵀ g J.
        matvec: u ↦ g(z₀) u (u shaped like z₀).
    """

    metric: Any
    scale: float
    matvec: Callable[[torch.Tensor], torch.Tensor]


def _dense_matvec(metric: Any, z: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    # formed only when asked for (momentum, adaptive damping): g is n × n
    return lambda u: (metric.matrix(z) @ u.reshape(-1)).reshape(u.shape)


def resolve_curvature(
    metric_setting: Any,
    loss: Any,  # a callable z -> scalar; with metric="auto" also a loss of ._losses (scale, metric, ...)
    z: torch.Tensor,
    mc_samples: int | None,
    generator: torch.Generator | None,
) -> Curvature:
    """The `Curvature` for one step at outputs z₀ = ``z``.

    Raises:
        ValueError: ``metric="auto"`` with a loss that does not carry a metric, or Monte-Carlo sampling
            requested for a loss that cannot sample scores.
    """
    z = z.detach()
    if metric_setting is None or (isinstance(metric_setting, str) and metric_setting == "auto"):
        if not hasattr(loss, "metric"):
            raise ValueError(
                "NGD.step: metric='auto' needs a loss that knows its Fisher metric (natgrad.optim."
                "CrossEntropy, BinaryCrossEntropy, GaussianNLL, LeastSquares), got "
                f"{type(loss).__name__}; wrap the loss in one of these or pass metric=<a natgrad metric>"
            )
        scale = float(loss.scale(z))
        if mc_samples is None:
            return Curvature(loss.metric(z), scale, lambda u: loss.metric_matvec(z, u))
        factor = monte_carlo_factor(loss.sample_scores(z, mc_samples, generator))
        return Curvature(
            ng.metrics.Factor(factor),
            scale,
            lambda u: (factor @ (factor.T @ u.reshape(-1))).reshape(u.shape),
        )
    if isinstance(metric_setting, str):
        raise ValueError(
            f"NGD: metric must be 'auto', None or a natgrad metric object, got {metric_setting!r}"
        )
    if mc_samples is not None:
        raise ValueError(
            "NGD.step: mc_samples needs the metric from the loss (metric='auto'); a given metric is used "
            "exactly"
        )
    return Curvature(metric_setting, 1.0, _dense_matvec(metric_setting, z))
