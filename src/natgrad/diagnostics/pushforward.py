"""Pushforward of the natural parameter gradient versus the natural gradient on the model."""

from __future__ import annotations

from collections.abc import Callable
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
    norm,
    range_basis,
    relative,
)

Tensor = torch.Tensor


@dataclass(frozen=True)
class PushforwardReport:
    """Outcome of :func:`pushforward_check` (all vectors flattened to length n; norms Euclidean).

    With u = g⁻¹∇z L the ambient natural gradient, Π the g-orthogonal projector onto im J and
    grad^M L = Π^g_{T_z M} u (when a model tangent basis is given):

    Attributes:
        rank: numerical rank of J used for Π.
        error_vs_projection: ‖J v − Π u‖ / ‖Π u‖ (0 up to rounding, for every ξ: theorem T1).
        outside_image: ‖u − Π u‖ / ‖u‖, the part of the ambient natural gradient outside im J.
        ambient_gap: ‖J v − u‖ / ‖u‖.
        error_vs_model_gradient: ‖J v − grad^M L‖ / ‖grad^M L‖, or None without a model tangent.
        model_gradient_outside_image: ‖grad^M L − Π grad^M L‖ / ‖grad^M L‖, or None.
        error_minus_outside: ‖(J v − grad^M L) + (grad^M L − Π grad^M L)‖ / ‖grad^M L‖, or None:
            where the rank drops, the error equals minus the g-orthogonal part of grad^M L.
        pushforward: J v from the engine.
        projection: Π u.
        ambient: u.
        model_gradient: grad^M L, or None.
    """

    rank: int
    error_vs_projection: float
    outside_image: float
    ambient_gap: float
    error_vs_model_gradient: float | None
    model_gradient_outside_image: float | None
    error_minus_outside: float | None
    pushforward: Tensor
    projection: Tensor
    ambient: Tensor
    model_gradient: Tensor | None


def model_gradient(g: Tensor, grad_z: Tensor, model_tangent: Tensor) -> Tensor:
    """grad^M L = Π^g_{T M}(g⁻¹∇z L): the vector of T M with g(grad^M L, w) = dL(w) for all w ∈ T M.

    Args:
        g: metric at z, n × n.
        grad_z: ∇z L, length n.
        model_tangent: n × m matrix whose columns span T_z M.
    """
    basis = range_basis(model_tangent)
    return g_projector(basis, g) @ ambient_natural_gradient(g, grad_z)


def pushforward_check(
    phi: Callable[[Any], Tensor],
    params: Any,
    loss: Callable[[Tensor], Tensor],
    metric: Any | None = None,
    inverse: Any | None = None,
    model_tangent: Tensor | None = None,
    rtol: float | None = None,
) -> PushforwardReport:
    """Compare J v (v = G⁻∇ξ(L∘φ) from the engine) with Π^g_{im J} g⁻¹∇z L and with grad^M L.

    Args:
        phi: parametrisation, params ↦ model point.
        params: ξ.
        loss: L, model point ↦ scalar.
        metric: output metric g (default Euclidean).
        inverse: generalized inverse for the engine (default Moore–Penrose).
        model_tangent: optional n × m matrix whose columns span T_z M (m = dim M).
        rtol: cutoff on singular values of J for the reference projector Π (default max(n, d)·eps).

    Returns:
        A :class:`PushforwardReport`.
    """
    metric = ng.metrics.Euclidean() if metric is None else metric
    inverse = ng.MoorePenrose() if inverse is None else inverse
    z = model_point(phi, params)
    n = z.numel()
    if model_tangent is not None:
        if not isinstance(model_tangent, torch.Tensor) or model_tangent.dim() != 2:
            raise TypeError(
                "pushforward_check: model_tangent must be a 2-D Tensor (n × m, columns spanning T_z M), "
                f"got {type(model_tangent).__name__}"
                + (
                    f" of shape {tuple(model_tangent.shape)}"
                    if isinstance(model_tangent, torch.Tensor)
                    else ""
                )
            )
        if model_tangent.shape[0] != n:
            raise ValueError(
                f"pushforward_check: model_tangent must have n = {n} rows (one per flattened output), "
                f"got shape {tuple(model_tangent.shape)}"
            )
    res = ng.natural_gradient(phi, params, loss, metric=metric, inverse=inverse)
    jv = res.pushforward.detach().reshape(-1)
    jac = dense_jacobian(phi, params)
    g = metric.matrix(z).to(jac)
    grad_z = output_gradient("pushforward_check", loss, z)[1].reshape(-1).to(jac)
    u = ambient_natural_gradient(g, grad_z)
    basis = range_basis(jac, rtol)
    proj = g_projector(basis, g)
    pu = proj @ u
    grad_m = err_m = out_m = err_minus = None
    if model_tangent is not None:
        grad_m = model_gradient(g, grad_z, model_tangent.to(jac))
        err_m = relative(jv, grad_m)
        orth = grad_m - proj @ grad_m
        scale = norm(grad_m)
        out_m = norm(orth) / scale if scale > 0 else norm(orth)
        err_minus = norm((jv - grad_m) + orth) / scale if scale > 0 else norm((jv - grad_m) + orth)
    return PushforwardReport(
        rank=basis.shape[1],
        error_vs_projection=relative(jv, pu),
        outside_image=norm(u - pu) / norm(u) if norm(u) > 0 else 0.0,
        ambient_gap=relative(jv, u),
        error_vs_model_gradient=err_m,
        model_gradient_outside_image=out_m,
        error_minus_outside=err_minus,
        pushforward=jv,
        projection=pu,
        ambient=u,
        model_gradient=grad_m,
    )
