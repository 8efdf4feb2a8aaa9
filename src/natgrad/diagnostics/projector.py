"""The projector lemma: P = J G⁻ Jᵀ g is the g-orthogonal projector onto im J for every G⁻."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import natgrad as ng
from natgrad.diagnostics._dense import (
    dense_jacobian,
    flat,
    g_projector,
    model_point,
    norm,
    range_basis,
    relative,
)

Tensor = torch.Tensor


def projector_matrix(
    phi: Callable[[Any], Tensor], params: Any, metric: Any = None, inverse: Any = None
) -> Tensor:
    """Materialise P = J G⁻ Jᵀ g (n × n) through the engine, from one factorisation of G.

    Column k is the pushforward J G⁻ Jᵀ c of the linear loss L_k(z) = ⟨c, z⟩ with c = g e_k, i.e. of the
    output gradient ∇z L_k = c: n solves against one ``ng.factorize`` (meant for small models).

    Args:
        phi: parametrisation.
        params: ξ.
        metric: output metric g (default Euclidean).
        inverse: the G⁻ to use (default Moore–Penrose; ``Damped`` gives P_λ = J (G + λI)⁻¹ Jᵀ g).
    """
    metric = ng.metrics.Euclidean() if metric is None else metric
    inverse = ng.MoorePenrose() if inverse is None else inverse
    fac = ng.factorize(phi, params, metric=metric, inverse=inverse)
    z = fac.output
    g = metric.matrix(z).to(z)
    columns = [fac.solve_output_gradient(g[:, k]).pushforward.detach().reshape(-1) for k in range(z.numel())]
    return torch.stack(columns, dim=1)


@dataclass(frozen=True)
class ProjectorReport:
    """Outcome of :func:`projector_check` (Frobenius norms).

    Attributes:
        idempotence: ‖P² − P‖ / ‖P‖.
        g_symmetry: ‖gP − (gP)ᵀ‖ / ‖gP‖.
        reproduces_image: ‖PJ − J‖ / ‖J‖.
        vs_reference: ‖P − Π‖ / ‖Π‖ with Π = Q (QᵀgQ)⁺ Qᵀ g, Q an orthonormal basis of im J.
        trace: tr P (= rank J for a projector onto im J).
        projector: P itself.
    """

    idempotence: float
    g_symmetry: float
    reproduces_image: float
    vs_reference: float
    trace: float
    projector: Tensor


def projector_check(
    phi: Callable[[Any], Tensor],
    params: Any,
    metric: Any = None,
    inverse: Any = None,
    rtol: float | None = None,
) -> ProjectorReport:
    """Check P² = P, gP = (gP)ᵀ, PJ = J and P = Π^g_{im J} for P = J G⁻ Jᵀ g.

    Args:
        phi: parametrisation.
        params: ξ.
        metric: output metric g (default Euclidean).
        inverse: G⁻ (default Moore–Penrose).
        rtol: cutoff on singular values of J for the reference Π (default max(n, d)·eps).
    """
    metric = ng.metrics.Euclidean() if metric is None else metric
    p = projector_matrix(phi, params, metric, inverse)
    jac = dense_jacobian(phi, params).to(p)
    g = metric.matrix(model_point(phi, params)).to(p)
    gp = g @ p
    reference = g_projector(range_basis(jac, rtol), g)
    return ProjectorReport(
        idempotence=relative(p @ p, p),
        g_symmetry=relative(gp.T, gp),
        reproduces_image=relative(p @ jac, jac),
        vs_reference=relative(p, reference),
        trace=float(torch.trace(p)),
        projector=p,
    )


@dataclass(frozen=True)
class GInverseReport:
    """Outcome of :func:`ginverse_independence`; index 0 is the baseline inverse.

    Attributes:
        pushforward_gaps: ‖J v_i − J v_0‖ / ‖J v_0‖ per inverse (engine pushforwards; 0 by lemma L1).
        kernel_residuals: ‖J (v_i − v_0)‖ / ‖J v_0‖ with the dense J (v_i − v_0 ∈ ker J).
        direction_gaps: ‖v_i − v_0‖ / ‖v_0‖ (in general not 0: v depends on G⁻).
        max_pushforward_gap: max over i of ``pushforward_gaps``.
        max_kernel_residual: max over i of ``kernel_residuals``.
        max_direction_gap: max over i of ``direction_gaps``.
    """

    pushforward_gaps: tuple[float, ...]
    kernel_residuals: tuple[float, ...]
    direction_gaps: tuple[float, ...]
    max_pushforward_gap: float
    max_kernel_residual: float
    max_direction_gap: float


def ginverse_independence(
    phi: Callable[[Any], Tensor],
    params: Any,
    loss: Callable[[Tensor], Tensor],
    inverses: Sequence[Any],
    metric: Any = None,
) -> GInverseReport:
    """Natural gradients for several generalized inverses: same pushforward, directions differ by ker J.

    Args:
        phi: parametrisation.
        params: ξ.
        loss: L.
        inverses: at least two generalized inverses (``MoorePenrose``, ``GInverse``, ``MinNorm``); the
            first is the baseline.
        metric: output metric g (default Euclidean).
    """
    if len(inverses) < 2:
        raise ValueError(f"ginverse_independence: pass at least 2 inverses to compare, got {len(inverses)}")
    metric = ng.metrics.Euclidean() if metric is None else metric
    fac = ng.factorize(phi, params, metric=metric, inverse=inverses[0])
    results = [
        fac.solve(loss, inverse=inv)
        if fac.refuses(inv) is None  # one factorisation serves every inverse with its cutoff
        else ng.natural_gradient(phi, params, loss, metric=metric, inverse=inv)
        for inv in inverses
    ]
    jac = dense_jacobian(phi, params)
    v0 = flat(results[0].direction)
    jv0 = results[0].pushforward.detach().reshape(-1)
    scale = norm(jv0)
    push, kern, dirs = [], [], []
    for res in results[1:]:
        vi = flat(res.direction)
        push.append(relative(res.pushforward.detach().reshape(-1), jv0))
        residual = norm(jac @ (vi - v0).to(jac))
        kern.append(residual / scale if scale > 0 else residual)
        dirs.append(relative(vi, v0))
    return GInverseReport(
        pushforward_gaps=tuple(push),
        kernel_residuals=tuple(kern),
        direction_gaps=tuple(dirs),
        max_pushforward_gap=max(push),
        max_kernel_residual=max(kern),
        max_direction_gap=max(dirs),
    )
