"""Synthetic data for the linear experiments: Gaussian inputs labelled by a teacher."""

from __future__ import annotations

import torch
from torch import Tensor


def sparse_teacher(
    d: int, k: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> Tensor:
    """``(1, …, 1, 0, …, 0)/√k`` with k ones: a unit-norm k-sparse teacher."""
    if not 1 <= k <= d:
        raise ValueError(f"sparse_teacher: need 1 <= k <= d, got k={k}, d={d}")
    w = torch.zeros(d, dtype=dtype, device=device)
    w[:k] = 1.0 / k**0.5
    return w


def gaussian_inputs(
    n: int, d: int, generator: torch.Generator, *, dtype: torch.dtype = torch.float64
) -> Tensor:
    """``n`` rows ``x ~ N(0, I_d)``."""
    return torch.randn(n, d, generator=generator, dtype=dtype, device=generator.device)


def teacher_labels(X: Tensor, teacher: Tensor, task: str = "classification") -> Tensor:
    """``sign⟨w*, x⟩`` (classification; zeros mapped to +1) or ``⟨w*, x⟩`` (regression)."""
    if task not in ("classification", "regression"):
        raise ValueError(f"teacher_labels: task must be 'classification' or 'regression', got {task!r}")
    scores = X @ teacher
    if task == "regression":
        return scores
    return torch.where(scores >= 0, torch.ones_like(scores), -torch.ones_like(scores))


def check_design(name: str, X: Tensor, y: Tensor) -> None:
    """Raise unless X is a (n, d) tensor and y a (n,) tensor; messages start with ``name``."""
    if not isinstance(X, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{name}: X and y must be torch.Tensors, got {type(X).__name__}, {type(y).__name__}")
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(
            f"{name}: expected X of shape (n, d) and y of shape (n,), "
            f"got {tuple(X.shape)} and {tuple(y.shape)}"
        )
