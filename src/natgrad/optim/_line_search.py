"""Step sizes along a fixed direction: a grid search and Armijo backtracking on the loss.

The functions do the search; the strategy objects (`FullStep`, `GridSearch`, `Backtracking`) are what the
optimizer holds, like its `LevenbergMarquardt` damping rule. Both searches over θ(α) = θ − α d for α in (0, 1] (d already includes the learning rate) and never accept a
point whose loss is larger than L(θ): when no trial point decreases the loss they return α = 0 (no move).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


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


@dataclass(frozen=True)
class LineProblem:
    """What a step-size strategy sees: the loss along θ(α) = θ − α d and the quadratic model's terms.

    Attributes:
        loss_at: α ↦ L(θ − α d) as a float (one forward evaluation per call).
        loss0: L(θ).
        slope: ⟨∇L(θ), d⟩ (positive for a descent direction).
        curvature: dᵀ G d with G the loss's Gauss–Newton/Fisher matrix, so the model predicts
            m(α) = L − α·slope + ½ α²·curvature.
    """

    loss_at: Callable[[float], float]
    loss0: float
    slope: float
    curvature: float


class LineSearch(Protocol):
    """A step-size strategy: ``search(problem) -> (α, L(θ − α d) or None when not evaluated)``."""

    @property
    def needs_model(self) -> bool:
        """Whether ``search`` uses the slope and curvature (they cost the step's pushforward)."""
        ...

    def search(self, problem: LineProblem) -> tuple[float, float | None]:
        """The step factor α and the loss there (None when the strategy did not evaluate it)."""
        ...


@dataclass(frozen=True)
class FullStep:
    """α = 1 always (the plain natural gradient step); the loss after the step is not evaluated."""

    needs_model: bool = False

    def search(self, problem: LineProblem) -> tuple[float, float | None]:
        """α = 1 without evaluating the loss."""
        return 1.0, None


@dataclass(frozen=True)
class GridSearch:
    """α* = argmin over ``factors`` of L(θ − α d), kept only if the loss decreases (see `grid_search`)."""

    factors: tuple[float, ...] = field(default_factory=default_grid)
    needs_model: bool = False

    def __post_init__(self) -> None:
        if not self.factors or not all(math.isfinite(a) and a > 0 for a in self.factors):
            raise ValueError(f"GridSearch: factors must be finite numbers > 0, got {self.factors!r}")

    def search(self, problem: LineProblem) -> tuple[float, float | None]:
        """Best grid factor, or α = 0 when none decreases the loss."""
        return grid_search(problem.loss_at, problem.loss0, self.factors)


@dataclass(frozen=True)
class Backtracking:
    """Armijo backtracking from α = 1 (see `backtracking`): needs the slope ⟨∇L, d⟩ from the model."""

    shrink: float = 0.5
    sufficient_decrease: float = 1e-4
    max_trials: int = 30
    needs_model: bool = True

    def __post_init__(self) -> None:
        if not (0 < self.shrink < 1 and 0 < self.sufficient_decrease < 1 and self.max_trials >= 1):
            raise ValueError(
                "Backtracking: need 0 < shrink < 1, 0 < sufficient_decrease < 1 and max_trials >= 1, got "
                f"shrink={self.shrink}, sufficient_decrease={self.sufficient_decrease}, "
                f"max_trials={self.max_trials}"
            )

    def search(self, problem: LineProblem) -> tuple[float, float | None]:
        """First Armijo point, or α = 0 when d is not a descent direction or no trial passes."""
        return backtracking(
            problem.loss_at,
            problem.loss0,
            problem.slope,
            self.shrink,
            self.sufficient_decrease,
            self.max_trials,
        )


LINE_SEARCH_NAMES = (None, "grid", "backtracking")


def resolve_line_search(setting: object, grid: tuple[float, ...] | None) -> LineSearch:
    """The strategy for the optimizer's ``line_search`` setting (a name, None, or a strategy object)."""
    if setting is None:
        return FullStep()
    if setting == "grid":
        return GridSearch(tuple(grid)) if grid else GridSearch()
    if setting == "backtracking":
        return Backtracking()
    if isinstance(setting, FullStep | GridSearch | Backtracking) or (
        hasattr(setting, "search") and hasattr(setting, "needs_model")
    ):
        return setting
    raise ValueError(
        f"NGD: line_search must be one of {LINE_SEARCH_NAMES} or a strategy object (FullStep, GridSearch, "
        f"Backtracking), got {setting!r}"
    )
