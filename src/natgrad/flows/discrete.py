"""Discrete natural gradient descent ξ_{k+1} = ξ_k − ε G⁻∇ξ(L∘φ)(ξ_k)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import natgrad as ng
from natgrad.flows._fields import cast_params, natural_direction, record
from natgrad.flows.trajectory import Trajectory

Tensor = torch.Tensor


def natural_gradient_descent(
    phi: Callable[[Any], Tensor],
    params0: Any,
    loss: Callable[[Tensor], Tensor],
    metric: Any = None,
    inverse: Any = None,
    step_size: float = 0.1,
    n_steps: int = 10,
    dtype: torch.dtype | None = torch.float64,
    route: str = "auto",
) -> Trajectory:
    """Fixed-step natural gradient descent ξ_{k+1} = ξ_k − ε·G(ξ_k)⁻∇ξ(L∘φ)(ξ_k), recording every iterate.

    One step from ξ in two parametrisations lands on model points that differ by O(ε²) (theorem T4).

    Args:
        phi: parametrisation.
        params0: ξ_0, a Tensor or dict of Tensors.
        loss: L.
        metric: output metric g (default Euclidean).
        inverse: generalized inverse (default Moore–Penrose).
        step_size: ε > 0.
        n_steps: number of steps K ≥ 0; the trajectory holds K + 1 iterates at times k·ε.
        dtype: dtype of the iterates (default float64; None keeps the parameters' dtype).
        route: the engine's ``method`` for each natural gradient ("auto", "primal", "dual", "lstsq", "krylov").

    Returns:
        A :class:`Trajectory`.
    """
    if not (isinstance(step_size, (int, float)) and step_size > 0):
        raise ValueError(f"natural_gradient_descent: step_size must be a float > 0, got {step_size!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"natural_gradient_descent: n_steps must be an int >= 0, got {n_steps!r}")
    metric = ng.metrics.Euclidean() if metric is None else metric
    inverse = ng.MoorePenrose() if inverse is None else inverse
    template = cast_params(params0, dtype)
    direction = natural_direction(phi, template, loss, metric, inverse, route)
    y = ng.flatten_params(template).detach()
    ys = [y]
    for _ in range(n_steps):
        y = y - step_size * direction(y)
        ys.append(y)
    stacked = torch.stack(ys)
    times = step_size * torch.arange(n_steps + 1, dtype=stacked.dtype, device=stacked.device)
    outputs, losses = record(phi, template, loss, stacked)
    return Trajectory(times=times, params=stacked, outputs=outputs, losses=losses)
