"""``NGD(residual_svd=True)``: a Gauss–Newton step on float64 residuals by the SVD of J, not eigh of JᵀJ.

For the Euclidean metric (G = JᵀJ, the Gauss–Newton matrix of ½‖r‖²) with d ≤ r, the engine's ``auto`` takes
the primal route: it forms G and eigendecomposes it. Forming G squares J's condition number: an eigenvalue
λᵢ = σᵢ² of the assembled G carries an error of a few eps·λ_max (see `natgrad.linalg.residual_rtol`), so
directions with λᵢ near NGD's residual cutoff 5·eps·λ_max come out with O(1) errors and nothing below it can
be resolved at all. The thin SVD of J (the engine's ``lstsq`` route, v = V S⁻¹ Uᵀ r) never forms G: the
first-order error of the least-squares solution it returns is eps·σ_max/σ_min (times ‖v‖, plus a term in
the unfitted residual, which is tiny near a solution). The option keeps singular values down to
σ ≥ 10⁶·eps·σ_max, where that error is ≤ 10⁻⁶: the cutoff (10⁶·eps)² ≈ 4.9·10⁻²⁰ on λ/λ_max, 2·10⁴ times
below the residual cutoff. The nonlinear-phase fallback of the residual default (also search along the
engine's default cutoff when the step is cut below 2⁻¹⁰) stays; without it (an explicit
``MoorePenrose(rtol=4.9e-20)``) seeds 1 and 2 of the measurement below stall at the start (loss 48).

Measured on `pinn-poisson` (2-D Poisson, 2-64-1, d = 257, N = 1,020, float64, grid line search; relative L2
after 300–1,000 steps, seeds 0 / 1 / 2): the default (eigh of JᵀJ, cutoff 5·eps) 1.0·10⁻⁷ / 2.2·10⁻⁸ /
1.0·10⁻⁷, each a plateau of the loss reached by step ~100; the SVD at the same cutoff 1.6·10⁻⁸ / 1.1·10⁻⁷ /
3.5·10⁻⁸ (full steps, α = 1, until the least-squares minimum over the kept directions: what is left lies
in directions of λ ≈ 10⁻¹⁶·λ_max); the SVD with this option's cutoff 2.7·10⁻¹⁰ / 2.2·10⁻¹⁰ / 1.8·10⁻¹⁰.
Other cutoffs on the SVD: 5·10⁻²⁶ (≈ (max(r, d)·eps)²) 7·10⁻⁷ / 2·10⁻⁶, 10⁻²³ 1.3·10⁻¹¹ / 1.8·10⁻¹² (seed 0 only after 280 steps), 10⁻¹⁸ 1·10⁻⁹ / 6·10⁻¹⁰.
Where it does not help: the 2-32-1 network on 12² + 48 points (d = 129, N = 192; ``pinn-poisson``'s quick
setting) stays in its nonlinear phase with it (relative L2 0.33 after 70 steps, against 2·10⁻⁷ with the
default), which is why it is not the default. The SVD step costs about 1.5× the primal one on d = 257,
N = 1,020 (73 against 49 ms of CPU per step, one thread).

The option applies to NGD's own residual inverse only (no ``inverse`` given, λ = 0, float64), on
``method="auto"`` and when the SVD fits the engine's default memory budget; elsewhere the step is the
default one (``last_step["method"]`` names the route).
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
