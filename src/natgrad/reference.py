"""The literal float64 reference: materialised J, dense g, torch.linalg.pinv. Slow by design; tests use it.

Every route of :func:`natgrad.natural_gradient` is checked against :func:`natural_gradient` here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jacrev

from natgrad._checks import check_params
from natgrad._factorize import check_inverse
from natgrad._loss import output_gradient
from natgrad._result import NaturalGradient
from natgrad._tree import Parametrisation, Params, flatten_params, num_params, unflatten_like
from natgrad.exceptions import InvalidTypeError
from natgrad.linalg import Damped, GInverse, Inverse, MinNorm, MoorePenrose
from natgrad.metrics import Euclidean, Metric

CALL = "reference.natural_gradient"


def _to64(params: Params) -> Params:
    if isinstance(params, Tensor):
        return params.detach().to(torch.float64)
    return {k: v.detach().to(torch.float64) for k, v in params.items()}


def gram(phi: Parametrisation, params: Params, metric: Metric | None = None) -> dict[str, Tensor]:
    """Literal float64 pieces at ξ: J (n×d), g (n×n), G = Jᵀ g J, z. Keys: "J", "g", "G", "z".

    G is formed as AᵀA with A = BᵀJ for the metric's factor B (g = BBᵀ): the same matrix, but its rounding is
    relative to ‖A‖² = λ_max(G), as the rank cutoff assumes. Formed as (Jᵀg)J its rounding is relative to
    ‖J‖²‖g‖, which exceeds λ_max(G) when g nearly annihilates the range of J, and a zero eigenvalue can then
    come out above the cutoff.
    """
    metric = Euclidean() if metric is None else metric
    p64 = _to64(params)
    flat = flatten_params(p64)

    def phi_flat(x: Tensor) -> Tensor:
        return phi(unflatten_like(x, p64)).reshape(-1)

    z = phi(p64)
    J = jacrev(phi_flat)(flat)
    local = metric.at(z, call=CALL)
    a = local.factor().to(J).T @ J
    return {"J": J, "g": local.matrix(), "G": a.T @ a, "z": z}


def pinv_rtol(inverse: MoorePenrose | GInverse | MinNorm, n: int, d: int) -> float:
    """The eigenvalue cutoff the engine uses for this inverse, in float64."""
    mp = inverse if isinstance(inverse, MoorePenrose) else MoorePenrose(inverse.rtol)
    return mp.resolve_rtol(torch.float64, n, d)


def psd_pinv(G: Tensor, rtol: float) -> tuple[Tensor, int]:
    """(G⁺, rank) for a PSD G: eigh as ``torch.linalg.pinv(hermitian=True)`` does, cutting on signed eigenvalues.

    A Gram matrix JᵀgJ is PSD, but the one computed in floating point can carry eigenvalues of about
    −eps·λ_max. ``torch.linalg.pinv(hermitian=True)`` cuts on |λ| > rtol·max|λ|, so such an eigenvalue would be
    inverted as a direction (1/λ of the wrong sign and size); its exact value is zero. Kept: λ > rtol·λ_max.
    """
    evals = torch.linalg.eigvalsh(G)
    if not bool(evals.min() < -rtol * evals.max()):  # nothing to mis-cut: torch's pinv, bit for bit
        pinv = torch.linalg.pinv(G, rtol=rtol, hermitian=True)
        return pinv, int(torch.linalg.matrix_rank(G, rtol=rtol, hermitian=True))
    evals, evecs = torch.linalg.eigh(G)
    keep = evals > rtol * evals.max().clamp_min(0)
    kept = evecs[:, keep]
    return (kept / evals[keep]) @ kept.T, int(keep.sum())


def apply_inverse(G: Tensor, grad: Tensor, inverse: Inverse, rows: int) -> tuple[Tensor, int]:
    """v = G⁻ grad for the inverse, literally from the pseudo-inverse of G (:func:`psd_pinv`); returns (v, rank)."""
    d = G.shape[0]
    if isinstance(inverse, Damped):
        eye = torch.eye(d, dtype=G.dtype, device=G.device)
        rank = int(
            torch.linalg.matrix_rank(G, rtol=MoorePenrose().resolve_rtol(G.dtype, rows, d), hermitian=True)
        )
        return torch.linalg.solve(G + float(inverse.damping) * eye, grad), rank
    rtol = pinv_rtol(inverse, rows, d)
    if isinstance(inverse, MinNorm):
        h = inverse.h.to(torch.float64)
        h = torch.diag(h) if h.ndim == 1 else h
        evals, evecs = torch.linalg.eigh(h)
        h_is = (evecs * evals.rsqrt()) @ evecs.T
        pinv, rank = psd_pinv(h_is @ G @ h_is, rtol)
        return h_is @ pinv @ h_is @ grad, rank
    pinv, rank = psd_pinv(G, rtol)
    if isinstance(inverse, GInverse):
        eye = torch.eye(d, dtype=G.dtype, device=G.device)
        U = torch.zeros_like(G) if inverse.U is None else inverse.U.to(torch.float64)
        V = torch.zeros_like(G) if inverse.V is None else inverse.V.to(torch.float64)
        pinv = pinv + (eye - pinv @ G) @ U + V @ (eye - G @ pinv)
    return pinv @ grad, rank


def natural_gradient(
    phi: Parametrisation,
    params: Params,
    loss: Callable[[Tensor], Tensor],
    metric: Metric | None = None,
    inverse: Inverse | None = None,
) -> NaturalGradient:
    """v = G⁻ Jᵀ ∇z L computed literally in float64 (result tensors are float64).

    The rank cutoff matches the engine's (``MoorePenrose.resolve_rtol`` with r = n outputs): the factored
    routes cut on the eigenvalues of G = AᵀA, the same matrix decomposed here.
    """
    if not callable(phi) or not callable(loss):
        raise InvalidTypeError(f"{CALL}: phi and loss must be callables (params -> Tensor, Tensor -> scalar)")
    check_params(CALL, params)
    if metric is not None and not isinstance(metric, Metric):
        raise InvalidTypeError(
            f"{CALL}: metric must be a natgrad.metrics.Metric, got {type(metric).__name__}"
        )
    inverse = check_inverse(CALL, inverse, num_params(params), flatten_params(params))
    pieces = gram(phi, params, metric)
    J, G, z = pieces["J"], pieces["G"], pieces["z"]
    loss_value, u = output_gradient(CALL, loss, z)
    u = u.reshape(-1)
    grad = J.T @ u
    rows = (Euclidean() if metric is None else metric).at(z).r
    v, rank = apply_inverse(G, grad, inverse, rows)
    p64 = _to64(params)
    assert num_params(p64) == G.shape[0]
    return NaturalGradient(
        direction=unflatten_like(v, p64),
        pushforward=(J @ v).reshape(z.shape),
        gradient=unflatten_like(grad, p64),
        rank=rank,
        method="reference",
        output=z.detach(),
        loss=loss_value,
    )
