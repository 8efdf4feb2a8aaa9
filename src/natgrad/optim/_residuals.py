"""NGD's route for a Gauss–Newton step on float64 residuals: the SVD of J, not the eigendecomposition of JᵀJ.

For the Euclidean metric (G = JᵀJ, the Gauss–Newton matrix of ½‖r‖²) with d ≤ r, the engine's ``auto`` takes
the primal route: it forms G and eigendecomposes it. Forming G squares J's condition number: an eigenvalue
λᵢ = σᵢ² of the assembled G carries an error of a few eps·λ_max (see `natgrad.linalg.residual_rtol`), so the
eigenvectors of the directions kept just above NGD's residual cutoff 5·eps·λ_max are accurate only to about
eps·λ_max / gap — O(1) when the gaps are themselves a few eps·λ_max — and their components of v = G⁺∇ are
noise. The thin SVD of J (the engine's ``lstsq`` route, v = V S⁻¹ Uᵀ r) never forms G: its singular values
and vectors carry errors of eps·σ_max, so the same directions (those with σᵢ² above the same cutoff) come out
accurate to about eps·σ_max / (σᵢ gap) instead.

Measured on `pinn-poisson` (2-D Poisson, 2-64-1, d = 257, N = 1,020, float64, grid line search, seed 0, the same
cutoff 5·eps·λ_max): on the primal route the line search never accepts a full step after the nonlinear phase
(α = 2⁻¹⁰–2⁻⁴ from step 60 on) and the loss stays at 2.05·10⁻¹³ from step 100 to 1,000 (relative L2 error
1.0·10⁻⁷); on the SVD route the steps 35–47 are full Gauss–Newton steps (α = 1, quadratic convergence) and
the run reaches the least-squares minimum over the kept directions, loss 3.4·10⁻¹⁴ and error 1.6·10⁻⁸, by
step 41. The SVD costs 1.5× the primal step there (73 against 49 ms of CPU per step, one thread).

The rule applies to NGD's own residual inverse only (no ``inverse`` given, λ = 0, float64 — where the residual
cutoff is the measured rule), on ``method="auto"`` and when the SVD fits the engine's default memory budget;
an explicit ``method`` is always obeyed, and d > r keeps ``auto``'s kernel routes.
"""

from __future__ import annotations

from typing import Any

import torch

import natgrad as ng
from natgrad.natural_gradient import DEFAULT_MEMORY_BUDGET, route_memory

SVD_ROUTE = "lstsq"
SVD_RESIDUAL_RTOL = (1e6 * torch.finfo(torch.float64).eps) ** 2


def residual_method(
    method: str, metric: Any, residual_default: bool, rows: int, cols: int, dtype: torch.dtype
) -> str:
    """The route of a step: ``"lstsq"`` (the SVD of J) for NGD's residual default on ``auto`` with d ≤ r.

    Args:
        method: the optimizer's ``method`` setting; anything but ``"auto"`` is returned unchanged.
        metric: the step's metric (the rule needs `natgrad.metrics.Euclidean`, G = JᵀJ).
        residual_default: whether the step solves with NGD's own residual inverse (no ``inverse`` given,
            no damping).
        rows: r, the number of residuals.
        cols: d, the number of parameters.
        dtype: dtype of the residuals (the rule is float64's, where the residual cutoff was measured).
    """
    if method != "auto" or not residual_default or dtype != torch.float64 or cols > rows:
        return method
    if not isinstance(metric, ng.metrics.Euclidean):
        return method
    itemsize = torch.finfo(dtype).bits // 8
    return SVD_ROUTE if route_memory(SVD_ROUTE, rows, cols, itemsize) <= DEFAULT_MEMORY_BUDGET else method
