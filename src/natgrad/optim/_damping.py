"""Levenberg–Marquardt adaptation of the damping λ from the reduction ratio ρ.

ρ = (L(θ) − L(θ − d)) / (m(0) − m(−d)) compares the actual decrease of the loss with the decrease predicted by
the quadratic model m(δ) = L + ⟨∇L, δ⟩ + ½ δᵀ G δ (G the Gauss–Newton/Fisher matrix of the loss):
a good model (ρ > upper) lets λ shrink, a poor one (ρ < lower) makes it grow.

Floor tied to the arithmetic: a damping below eps·tr(G) (eps of the model's dtype) is below the rounding
error of the assembled curvature (‖ΔK‖ ≲ eps·Σ_i ‖a_i‖² = eps·tr(K), and tr(K) = tr(G)), so it regularises
nothing the solve can resolve; in float32 a λ of 1e-12 makes (G + λI)⁻¹ an unregularised inverse of a
numerically singular matrix. The optimizer passes ``floor = eps·tr(sG)`` (estimated, see `trace_floor`).
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

    def update(self, damping: float, ratio: float, floor: float = 0.0) -> float:
        """The next damping given the current one and the reduction ratio ρ (non-finite ρ counts as bad).

        Args:
            damping: current λ.
            ratio: reduction ratio ρ of the step just taken.
            floor: precision floor of the arithmetic (eps·tr(G)); the result is at least max(minimum, floor).
        """
        if not math.isfinite(ratio) or ratio < self.lower:
            damping = damping * self.boost
        elif ratio > self.upper:
            damping = damping / self.boost
        return min(max(damping, self.minimum, floor), self.maximum)

    def rescue(self, damping: float, curvature_along_step: float, floor: float) -> float:
        """The damping after a step that increased the loss (the safeguard of undamped or fixed-λ runs).

        λ ← max(boost·λ, q, floor) with q = dᵀGd/‖d‖² the curvature along the failed step: directions of G
        with eigenvalues below q, which a generalized inverse amplified, are at least halved next time.
        """
        rescued = max(damping * self.boost, curvature_along_step, floor, self.minimum)
        return min(rescued, self.maximum)

    def relax(self, damping: float, resting: float, floor: float) -> float:
        """After a successful safeguarded step: λ/boost, back to ``resting`` once below max(resting, floor)."""
        if damping <= resting:
            return resting
        relaxed = damping / self.boost
        return resting if relaxed < max(resting, floor, self.minimum) else relaxed


def reduction_ratio(actual: float, predicted: float) -> float:
    """ρ = actual / predicted decrease; −inf when the model predicts no decrease."""
    if not predicted > 0:
        return -math.inf
    return actual / predicted
