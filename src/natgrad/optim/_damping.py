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
from collections.abc import Callable
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
        start_fraction: the safeguard's first damping, as a fraction of the curvature along the gradient.
    """

    boost: float = 1.5
    lower: float = 0.25
    upper: float = 0.75
    minimum: float = 1e-12
    maximum: float = 1e8
    start_fraction: float = 1.0

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

    def update_from_zero(
        self,
        damping: float,
        ratio: float,
        floor: float,
        start: Callable[[], float],
        resting: float = 0.0,
    ) -> float:
        """The rule for the safeguard of runs with a fixed damping ``resting`` (0: a generalized inverse).

        λ grows as in `update` after a poor step; growing from λ < floor jumps to ``start_fraction ·
        start()`` (the optimizer passes the curvature along the gradient, ∇ᵀG∇/‖∇‖²). After good steps λ
        shrinks back to ``resting``, never below it, and never into (0, floor) — below the floor the step
        returns to λ = 0, the generalized inverse with its cutoff.
        """
        lowest = max(floor, self.minimum)
        if not math.isfinite(ratio) or ratio < self.lower:
            if damping * self.boost < lowest:
                return min(max(start() * self.start_fraction, lowest, resting), self.maximum)
            return min(damping * self.boost, self.maximum)
        if ratio > self.upper:
            damping = damping / self.boost
        if damping >= max(resting, lowest):
            return damping
        return 0.0 if resting == 0.0 else max(resting, lowest)


def reduction_ratio(actual: float, predicted: float) -> float:
    """ρ = actual / predicted decrease; −inf when the model predicts no decrease."""
    if not predicted > 0:
        return -math.inf
    return actual / predicted
