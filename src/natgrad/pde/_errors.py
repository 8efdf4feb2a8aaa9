"""L2 errors against a reference solution, with Gauss–Legendre quadrature on a box.

‖u_θ − u*‖_{L²(Ω)}² = ∫_Ω (u_θ − u*)² dx ≈ Σ_q w_q (u_θ(x_q) − u*(x_q))², exact for polynomials of degree
< 2k in each coordinate with k nodes per coordinate (so, for smooth u_θ − u*, accurate to many digits).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ._network import Network, Params
from ._sampling import Box, _box, _count


def gauss_legendre(
    points_per_dim: int, box: Box, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """Tensor-product Gauss–Legendre nodes (k^D, D) and weights (k^D,) on the box (weights sum to its volume)."""
    lo, hi = _box("pde.gauss_legendre", box)
    k = _count("pde.gauss_legendre", "points_per_dim", points_per_dim)
    nodes, weights = np.polynomial.legendre.leggauss(k)
    t = torch.from_numpy((nodes + 1) / 2)
    w = torch.from_numpy(weights / 2)
    axes = [lo[i] + (hi[i] - lo[i]) * t for i in range(lo.numel())]
    axis_weights = [(hi[i] - lo[i]) * w for i in range(lo.numel())]
    points = torch.stack([m.reshape(-1) for m in torch.meshgrid(*axes, indexing="ij")], dim=1)
    total = axis_weights[0]
    for aw in axis_weights[1:]:
        total = torch.outer(total, aw).reshape(-1)
    return points.to(dtype), total.to(dtype)


def l2_error(
    network: Network,
    params: Params,
    reference: Callable[[Tensor], Tensor],
    points: Tensor,
    weights: Tensor | None = None,
    relative: bool = True,
) -> float:
    """‖u_θ − u*‖ (relative: divided by ‖u*‖) from quadrature points and weights.

    Args:
        network: the `Network` (scalar output).
        params: θ.
        reference: u*, ``points -> (N,)``.
        points: (N, D) quadrature or test points.
        weights: (N,) quadrature weights (e.g. from `gauss_legendre`); None: equal weights (a mean over
            test points, the discrete relative L2 error).
        relative: divide by ‖u*‖ with the same weights.

    Raises:
        ValueError: shapes that do not match, a reference of the wrong shape, or ‖u*‖ = 0 with relative=True.
    """
    network.check_points("pde.l2_error", points)
    with torch.no_grad():
        values = network(params, points)
        if values.shape[1] != 1:
            raise ValueError(f"pde.l2_error: needs a scalar network, got {values.shape[1]} outputs")
        values = values[:, 0]
        exact = reference(points)
        if not isinstance(exact, Tensor) or exact.shape != values.shape:
            got = tuple(exact.shape) if isinstance(exact, Tensor) else type(exact).__name__
            raise ValueError(
                f"pde.l2_error: reference(points) returned {got}, expected shape {tuple(values.shape)}"
            )
        w = torch.ones_like(values) if weights is None else weights
        if w.shape != values.shape:
            raise ValueError(
                f"pde.l2_error: weights must have shape {tuple(values.shape)}, got {tuple(w.shape)}"
            )
        error = torch.sqrt((w * (values - exact) ** 2).sum())
        if not relative:
            return float(error if weights is not None else error / values.numel() ** 0.5)
        norm = torch.sqrt((w * exact**2).sum())
        if not norm > 0:
            raise ValueError("pde.l2_error: the reference is zero at every point; use relative=False")
        return float(error / norm)
