"""Step sizes along a fixed direction: a grid search and Armijo backtracking on the loss.

Both search over θ(α) = θ − α d for α in (0, 1] (d already includes the learning rate) and never accept a
point whose loss is larger than L(θ): when no trial point decreases the loss they return α = 0 (no move).
"""

from __future__ import annotations

import math
from collections.abc import Callable


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def grid_search(
    loss_at: Callable[[float], float], loss0: float, factors: tuple[float, ...]
) -> tuple[float, float]:
    """Best step factor on a grid: α* = argmin_{α ∈ factors} L(θ − α d), kept only if L decreases.

    Args:
        loss_at: α ↦ L(θ − α d) as a float.
        loss0: L(θ).
        factors: the trial step factors.

    Returns:
        (α*, L(θ − α* d)); (0, loss0) when no factor gives a loss below loss0.
    """
    best_alpha, best_loss = 0.0, loss0
    for alpha in factors:
        value = _finite_or_inf(loss_at(alpha))
        if value < best_loss:
            best_alpha, best_loss = alpha, value
    return best_alpha, best_loss


def backtracking(
    loss_at: Callable[[float], float],
    loss0: float,
    slope: float,
    shrink: float = 0.5,
    sufficient_decrease: float = 1e-4,
    max_trials: int = 30,
) -> tuple[float, float]:
    """Armijo backtracking: the first α = shrinkᵏ with L(θ − α d) ≤ L(θ) − c α ⟨∇L, d⟩.

    Args:
        loss_at: α ↦ L(θ − α d) as a float.
        loss0: L(θ).
        slope: ⟨∇L(θ), d⟩, positive for a descent direction.
        shrink: factor applied to α after each failed trial, in (0, 1).
        sufficient_decrease: Armijo constant c in (0, 1).
        max_trials: number of trial points before giving up.

    Returns:
        (α, L(θ − α d)); (0, loss0) when d is not a descent direction or no trial satisfies the condition.
    """
    if not slope > 0:
        return 0.0, loss0
    alpha = 1.0
    for _ in range(max_trials):
        value = _finite_or_inf(loss_at(alpha))
        if value <= loss0 - sufficient_decrease * alpha * slope:
            return alpha, value
        alpha *= shrink
    return 0.0, loss0


def default_grid(size: int = 30) -> tuple[float, ...]:
    """The grid 1, 1/2, 1/4, …, 2^{−(size−1)} (the logarithmic grid used for energy natural gradients)."""
    return tuple(0.5**k for k in range(size))
