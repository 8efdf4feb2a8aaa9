"""Recorded trajectories of a flow or of discrete steps, and their comparison across parametrisations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Trajectory:
    """A trajectory sampled at T times.

    Attributes:
        times: (T,) sample times (for discrete steps, k·step_size).
        params: (T, d) flattened parameters ξ(t) (flattened in the parameters' dict insertion order).
        outputs: (T, n) flattened model points z(t) = φ(ξ(t)).
        losses: (T,) L(z(t)).
    """

    times: Tensor
    params: Tensor
    outputs: Tensor
    losses: Tensor

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, for JSON results."""
        return {
            "times": self.times.tolist(),
            "params": self.params.tolist(),
            "outputs": self.outputs.tolist(),
            "losses": self.losses.tolist(),
        }


@dataclass(frozen=True)
class ParametrisationComparison:
    """Outcome of :func:`compare_parametrisations` (Euclidean norms).

    Attributes:
        model_gaps: ‖z_a(t) − z_b(t)‖ per time.
        param_gaps: ‖ξ_a(t) − m(ξ_b(t))‖ per time (m the parameter map, identity by default).
        max_model_gap: max over t of ``model_gaps``.
        max_param_gap: max over t of ``param_gaps``.
    """

    model_gaps: tuple[float, ...]
    param_gaps: tuple[float, ...]
    max_model_gap: float
    max_param_gap: float


def compare_parametrisations(
    traj_a: Trajectory, traj_b: Trajectory, param_map: Callable[[Tensor], Tensor] | None = None
) -> ParametrisationComparison:
    """Compare two trajectories sampled at the same times.

    Args:
        traj_a: trajectory in chart ξ.
        traj_b: trajectory in chart η.
        param_map: maps one flattened η to the flattened ξ chart (e.g. the change of chart f), so that
            parameter trajectories are compared in the same coordinates; identity when None.

    Returns:
        model gaps max_t ‖z_a(t) − z_b(t)‖ and parameter gaps max_t ‖ξ_a(t) − f(η_b(t))‖.
    """
    if traj_a.times.shape != traj_b.times.shape or not torch.allclose(
        traj_a.times, traj_b.times.to(traj_a.times)
    ):
        raise ValueError(
            "compare_parametrisations: both trajectories must be sampled at the same times, got "
            f"{traj_a.times.numel()} and {traj_b.times.numel()} times (pass the same t_eval / step settings)"
        )
    if traj_a.outputs.shape != traj_b.outputs.shape:
        raise ValueError(
            "compare_parametrisations: model outputs must have the same shape, got "
            f"{tuple(traj_a.outputs.shape)} and {tuple(traj_b.outputs.shape)}"
        )
    mapped = (
        traj_b.params
        if param_map is None
        else torch.stack([param_map(row).reshape(-1) for row in traj_b.params])
    )
    if mapped.shape != traj_a.params.shape:
        raise ValueError(
            "compare_parametrisations: parameters must have the same shape after param_map, got "
            f"{tuple(traj_a.params.shape)} and {tuple(mapped.shape)} "
            "(pass param_map to map chart b to chart a)"
        )
    model = torch.linalg.vector_norm(traj_a.outputs - traj_b.outputs.to(traj_a.outputs), dim=1)
    param = torch.linalg.vector_norm(traj_a.params - mapped.to(traj_a.params), dim=1)
    return ParametrisationComparison(
        model_gaps=tuple(model.tolist()),
        param_gaps=tuple(param.tolist()),
        max_model_gap=float(model.max()),
        max_param_gap=float(param.max()),
    )
