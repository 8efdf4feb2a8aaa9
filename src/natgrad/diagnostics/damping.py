"""Bias of Tikhonov damping (G + λI)⁻¹, which is not a generalized inverse."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import natgrad as ng
from natgrad.diagnostics._dense import flat, relative

Tensor = torch.Tensor


@dataclass(frozen=True)
class DampingReport:
    """Outcome of :func:`damping_bias`.

    Attributes:
        dampings: the λ values.
        pushforward_bias: ‖J v_λ − J v⁺‖ / ‖J v⁺‖ per λ, v_λ = (G + λI)⁻¹∇, v⁺ = G⁺∇.
        direction_bias: ‖v_λ − v⁺‖ / ‖v⁺‖ per λ.
        slope: least-squares slope of log(pushforward_bias) against log λ (1 for an O(λ) bias);
            NaN with fewer than two positive biases.
    """

    dampings: tuple[float, ...]
    pushforward_bias: tuple[float, ...]
    direction_bias: tuple[float, ...]
    slope: float


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y against log x over the pairs with x, y > 0 (NaN if fewer than 2)."""
    pairs = [(math.log(a), math.log(b)) for a, b in zip(x, y, strict=True) if a > 0 and b > 0]
    if len(pairs) < 2:
        return math.nan
    mx = sum(p[0] for p in pairs) / len(pairs)
    my = sum(p[1] for p in pairs) / len(pairs)
    sxx = sum((p[0] - mx) ** 2 for p in pairs)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pairs)
    return sxy / sxx if sxx > 0 else math.nan


def damping_bias(
    phi: Callable[[Any], Tensor],
    params: Any,
    loss: Callable[[Tensor], Tensor],
    dampings: Sequence[float],
    metric: Any = None,
) -> DampingReport:
    """Measure how far damped natural gradients are from the Moore–Penrose one, as a function of λ.

    Args:
        phi: parametrisation.
        params: ξ.
        loss: L.
        dampings: positive λ values.
        metric: output metric g (default Euclidean).
    """
    if len(dampings) == 0 or any(not (lam > 0) for lam in dampings):
        raise ValueError(
            f"damping_bias: dampings must be a non-empty list of positive floats, got {dampings!r}"
        )
    metric = ng.metrics.Euclidean() if metric is None else metric
    base = ng.natural_gradient(phi, params, loss, metric=metric, inverse=ng.MoorePenrose())
    v0, jv0 = flat(base.direction), base.pushforward.detach().reshape(-1)
    push, dirs = [], []
    for lam in dampings:
        res = ng.natural_gradient(phi, params, loss, metric=metric, inverse=ng.Damped(float(lam)))
        push.append(relative(res.pushforward.detach().reshape(-1), jv0))
        dirs.append(relative(flat(res.direction), v0))
    lams = tuple(float(x) for x in dampings)
    return DampingReport(
        dampings=lams,
        pushforward_bias=tuple(push),
        direction_bias=tuple(dirs),
        slope=loglog_slope(lams, push),
    )
