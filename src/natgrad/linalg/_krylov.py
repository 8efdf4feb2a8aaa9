"""Matrix-free Krylov solvers on operator products: LSQR (minimum-norm least squares) and CG (SPD)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad.linalg._ritz import count_below, eigenvalue_bounds, normal_tridiagonal, watch

Operator = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class KrylovInfo:
    """How a Krylov solve ended: iterations used, final residual measure, and whether it met the tolerance."""

    iterations: int
    residual: float
    converged: bool
    near_singular: bool = False  # stopped before resolving a singular value below the cutoff (see ``lsqr``)


def lsqr(
    matvec: Operator,
    rmatvec: Operator,
    b: Tensor,
    n_cols: int,
    *,
    tol: float,
    max_iter: int,
    cutoff: float | None = None,
) -> tuple[Tensor, KrylovInfo]:
    """x = A⁺ b by LSQR (Paige & Saunders 1982) from x₀ = 0, using only A·x and Aᵀ·y.

    Started at zero, the iterates stay in im Aᵀ, so the limit is the minimum-norm least-squares solution.
    Stops when ‖r‖ ≤ tol·‖b‖ (consistent systems) or ‖Aᵀr‖ ≤ tol·‖A‖_F·‖r‖ (inconsistent ones).

    With ``cutoff`` (the Moore–Penrose rtol on σ²/σ²_max) the Ritz values θ² of the bidiagonal are watched: a
    θ² ≤ cutoff·θ²_max means LSQR is about to resolve a direction the cutoff drops (and would blow up along
    it). It then returns the last iterate checked before, with ``converged=False, near_singular=True``.
    """
    x = torch.zeros(n_cols, dtype=b.dtype, device=b.device)
    beta = torch.linalg.vector_norm(b)
    if beta == 0:
        return x, KrylovInfo(0, 0.0, True)
    u = b / beta
    v = rmatvec(u)
    alpha = torch.linalg.vector_norm(v)
    if alpha == 0:
        return x, KrylovInfo(0, float(beta), True)
    v = v / alpha
    w = v.clone()
    phibar, rhobar = beta, alpha
    norm_a2 = alpha**2
    b_norm = beta
    alphas, betas, checked = [float(alpha)], [], x
    for it in range(1, max_iter + 1):
        u = matvec(v) - alpha * u
        beta = torch.linalg.vector_norm(u)
        if beta > 0:
            u = u / beta
        norm_a2 = norm_a2 + beta**2
        if cutoff is not None:
            betas.append(float(beta))
            if watch(it):
                tri = normal_tridiagonal(alphas, betas)
                if count_below(*tri, cutoff * eigenvalue_bounds(*tri)[1]) > 0:
                    return checked, KrylovInfo(it, float(phibar / b_norm), False, near_singular=True)
                checked = x
        v = rmatvec(u) - beta * v
        alpha = torch.linalg.vector_norm(v)
        if alpha > 0:
            v = v / alpha
        norm_a2 = norm_a2 + alpha**2
        if cutoff is not None:
            alphas.append(float(alpha))
        rho = torch.sqrt(rhobar**2 + beta**2)
        c, s = rhobar / rho, beta / rho
        theta = s * alpha
        rhobar = -c * alpha
        phi = c * phibar
        phibar = s * phibar
        x = x + (phi / rho) * w
        w = v - (theta / rho) * w
        residual = phibar  # ‖b − A x‖
        normal_residual = phibar * alpha * c.abs()  # ‖Aᵀ(b − A x)‖
        if residual <= tol * b_norm or normal_residual <= tol * torch.sqrt(norm_a2) * residual or alpha == 0:
            return x, KrylovInfo(it, float(residual / b_norm), True)
    return x, KrylovInfo(max_iter, float(phibar / b_norm), False)


def cg(matvec: Operator, b: Tensor, *, tol: float, max_iter: int) -> tuple[Tensor, KrylovInfo]:
    """x = M⁻¹ b by conjugate gradients for symmetric positive definite M; stops at ‖r‖ ≤ tol·‖b‖."""
    x = torch.zeros_like(b)
    r = b.clone()
    b_norm = torch.linalg.vector_norm(b)
    if b_norm == 0:
        return x, KrylovInfo(0, 0.0, True)
    p = r.clone()
    rr = r @ r
    for it in range(1, max_iter + 1):
        mp = matvec(p)
        step = rr / (p @ mp)
        x = x + step * p
        r = r - step * mp
        rr_new = r @ r
        if torch.sqrt(rr_new) <= tol * b_norm:
            return x, KrylovInfo(it, float(torch.sqrt(rr_new) / b_norm), True)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, KrylovInfo(max_iter, float(torch.sqrt(rr) / b_norm), False)
