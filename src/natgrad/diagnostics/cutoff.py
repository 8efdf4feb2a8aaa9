"""Sensitivity of the Moore–Penrose natural gradient to the rank cutoff near a rank drop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import natgrad as ng
from natgrad._loss import output_gradient
from natgrad.diagnostics._dense import (
    ambient_natural_gradient,
    dense_jacobian,
    g_projector,
    model_point,
    range_basis,
    relative,
)

Tensor = torch.Tensor


@dataclass(frozen=True)
class CutoffReport:
    """Outcome of :func:`cutoff_sensitivity`.

    Attributes:
        rtols: the cutoffs passed to ``MoorePenrose(rtol)``.
        ranks: the rank the engine used for each cutoff.
        pushforward_errors: ‖J v_rtol − r‖ / ‖r‖ against the reference pushforward r.
        singular_values: σ_i(J) / σ_1(J), to read off where a cutoff drops a direction.
    """

    rtols: tuple[float, ...]
    ranks: tuple[int | None, ...]
    pushforward_errors: tuple[float, ...]
    singular_values: tuple[float, ...]


def cutoff_sensitivity(
    phi: Callable[[Any], Tensor],
    params: Any,
    loss: Callable[[Tensor], Tensor],
    rtols: Sequence[float],
    metric: Any = None,
    reference: Tensor | None = None,
    method: str = "auto",
) -> CutoffReport:
    """Sweep the Moore–Penrose cutoff and measure the pushforward error against a reference.

    Args:
        phi: parametrisation.
        params: ξ (typically close to a point where rank J drops).
        loss: L.
        rtols: cutoffs for ``MoorePenrose(rtol)``.
        metric: output metric g (default Euclidean).
        reference: the correct pushforward (e.g. grad^M L); default Π^g_{im J} g⁻¹∇z L with im J of the full
            numerical rank (cutoff max(n, d)·eps on σ(J)).
        method: the engine route. Near a rank drop the conditioning matters: the SVD of A = g^{1/2}J
            (``"lstsq"``) loses about eps·cond(A), eigendecompositions of a Gram matrix up to eps·cond(A)².
    """
    if len(rtols) == 0 or any(not (r >= 0) for r in rtols):
        raise ValueError(f"cutoff_sensitivity: rtols must be a non-empty list of floats >= 0, got {rtols!r}")
    metric = ng.metrics.Euclidean() if metric is None else metric
    jac = dense_jacobian(phi, params)
    z = model_point(phi, params)
    if reference is None:
        g = metric.matrix(z).to(jac)
        u = ambient_natural_gradient(g, output_gradient("cutoff_sensitivity", loss, z)[1].reshape(-1).to(jac))
        reference = g_projector(range_basis(jac), g) @ u
    reference = reference.reshape(-1)
    ranks, errors = [], []
    for rtol in rtols:
        res = ng.natural_gradient(
            phi, params, loss, metric=metric, inverse=ng.MoorePenrose(rtol=float(rtol)), method=method
        )
        ranks.append(res.rank)
        errors.append(relative(res.pushforward.detach().reshape(-1), reference.to(res.pushforward)))
    s = torch.linalg.svdvals(jac)
    return CutoffReport(
        rtols=tuple(float(r) for r in rtols),
        ranks=tuple(ranks),
        pushforward_errors=tuple(errors),
        singular_values=tuple(float(x / s[0]) for x in s) if s.numel() and s[0] > 0 else (),
    )
