"""Shared pieces of the invariance-paper experiments: float64 models, losses, figure helpers."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

Tensor = torch.Tensor
F64 = torch.float64
PAPER = "invariance"
IDENTITY_TOL = 1e-10  # identities, relative, float64
FAILURE_MIN = 1e-2  # every failure case shows at least this discrepancy


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded from the config."""
    return torch.Generator().manual_seed(int(seed))


def randn(gen: torch.Generator, *shape: int) -> Tensor:
    """Standard normal float64 tensor from ``gen``."""
    return torch.randn(*shape, generator=gen, dtype=F64)


def random_spd(gen: torch.Generator, n: int, floor: float = 0.5) -> Tensor:
    """A random SPD matrix A Aᵀ / n + floor·I."""
    a = randn(gen, n, n)
    return a @ a.T / n + floor * torch.eye(n, dtype=F64)


def random_distribution(gen: torch.Generator, k: int) -> Tensor:
    """A random point of the open simplex (softmax of normals)."""
    return torch.softmax(randn(gen, k), dim=0)


def kl_loss(q: Tensor) -> Callable[[Tensor], Tensor]:
    """L(p) = KL(q‖p) = Σ q_i log(q_i / p_i), with ∇p L = −q / p."""

    def loss(p: Tensor) -> Tensor:
        return (q * (torch.log(q) - torch.log(p))).sum()

    return loss


def softmax(xi: Tensor) -> Tensor:
    """φ(ξ) = softmax(ξ): R^k → open simplex, rank k − 1 (ker J = span 1)."""
    return torch.softmax(xi, dim=-1)


def rel(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖ (absolute when b = 0)."""
    diff = float(torch.linalg.norm((a - b).reshape(-1)))
    scale = float(torch.linalg.norm(b.reshape(-1)))
    return diff / scale if scale > 0 else diff


def loglog_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit log y = slope·log x + intercept; returns (slope, intercept)."""
    lx = [math.log(v) for v in x]
    ly = [math.log(v) for v in y]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sxx
    return slope, my - slope * mx


def figure_path(out_dir: Path, name: str) -> Path:
    """out_dir/name.png, creating out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{name}.png"


def floor_for_log(values: Sequence[float], floor: float = 1e-18) -> list[float]:
    """Values clipped from below, so exact zeros show on a log axis."""
    return [max(float(v), floor) for v in values]
