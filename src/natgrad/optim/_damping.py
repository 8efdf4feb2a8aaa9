"""Levenberg–Marquardt adaptation of the damping λ from the reduction ratio ρ.

ρ = (L(θ) − L(θ − d)) / (m(0) − m(−d)) compares the actual decrease of the loss with the decrease predicted by
the quadratic model m(δ) = L + ⟨∇L, δ⟩ + ½ δᵀ G δ (G the Gauss–Newton/Fisher matrix of the loss):
a good model (ρ > upper) lets λ shrink, a poor one (ρ < lower) makes it grow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LevenbergMarquardt:
    """λ ← λ / boost if ρ > upper; λ ← λ · boost if ρ < lower; clipped to [minimum, maximum].

    Args:
        boost: multiplicative change, > 1.
        lower: ratio below which λ grows.
        upper: ratio above which λ shrinks.
        minimum: smallest damping.
        maximum: largest damping.
    """

    boost: float = 1.5
    lower: float = 0.25
    upper: float = 0.75
    minimum: float = 1e-12
    maximum: float = 1e8

    def __post_init__(self) -> None:
        if not self.boost > 1:
            raise ValueError(f"LevenbergMarquardt: boost must be > 1, got {self.boost}")
        if not 0 <= self.lower < self.upper:
            raise ValueError(
                f"LevenbergMarquardt: need 0 <= lower < upper, got lower={self.lower}, upper={self.upper}"
            )

    def update(self, damping: float, ratio: float) -> float:
        """The next damping given the current one and the reduction ratio ρ (non-finite ρ counts as bad)."""
        if not math.isfinite(ratio) or ratio < self.lower:
            damping = damping * self.boost
        elif ratio > self.upper:
            damping = damping / self.boost
        return min(max(damping, self.minimum), self.maximum)


def reduction_ratio(actual: float, predicted: float) -> float:
    """ρ = actual / predicted decrease; −inf when the model predicts no decrease."""
    if not predicted > 0:
        return -math.inf
    return actual / predicted
