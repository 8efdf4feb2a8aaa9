"""Kernel-space Krylov solvers: LSQR for v = A⁺c from products with K = A Aᵀ (with a Ritz-value watch), and PCG for damped kernels.

LSQR (Paige & Saunders 1982) on min ‖C⁻¹(A v − c)‖ from v₀ = 0 keeps its iterates in range(Aᵀ). Every vector it
forms in parameter space is Aᵀ y for a coefficient vector y, so the method can run on coefficients alone: A v
becomes K y, Aᵀu becomes the coefficient u itself, and ‖v‖² = yᵀ K y is read off the product that the next
step needs anyway. One product with K per iteration, and v = Aᵀ y is formed once at the end.

Preconditioning: with C = P^{1/2} for an SPD P that maps range(K) and null(K) to themselves (true for
P = U(Λ + σ)Uᵀ + σ(I − UUᵀ) with range(U) ⊆ range(K)), the weighted residual splits into a range part and a
fixed null part, so the minimiser is still v = A⁺c, consistent c or not. Convergence follows the spectrum of
C⁻¹ K C⁻ᵀ.

The singular values of LSQR's bidiagonal B_k are Ritz values of C⁻¹A: θ_k,min² decreases towards the
smallest nonzero eigenvalue of C⁻¹KC⁻ᵀ. The null part of c never enters B_k (B_kᵀB_k is the Lanczos matrix of
AᵀC⁻ᵀC⁻¹A started at AᵀC⁻ᵀC⁻¹c, which does not see it), so a small θ means a small *nonzero* eigenvalue being
resolved. A caller that must not resolve directions below a Moore–Penrose cutoff passes ``ritz_floor``; the solve
then returns the last iterate checked while θ_min² was above it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad.linalg._ritz import count_below, eigenvalue_bounds, normal_tridiagonal, watch

Operator = Callable[[Tensor], Tensor]
_NOISE = 100.0  # a direction whose K-energy is below _NOISE·eps·‖K‖·‖y‖² is rounding


@dataclass(frozen=True)
class KernelLsqrInfo:
    """How a kernel LSQR solve ended.

    Attributes:
        iterations: products with K.
        residual: ‖C⁻¹(A v − c)‖ / ‖C⁻¹c‖ (the recurrence's estimate).
        stopped: "converged" (residual ≤ tol), "least-squares" (the normal-equation test ‖(C⁻¹A)ᵀr‖ ≤
            tol·‖C⁻¹A‖_F·‖r‖: an inconsistent system solved), "ritz-floor" (θ_min² fell below the floor), or
            "max_iter".
        smallest_ritz: θ_min² at the end.
        largest_ritz: θ_max² at the end (estimates λ_max(C⁻¹KC⁻ᵀ)).
    """

    iterations: int
    residual: float
    stopped: str
    smallest_ritz: float
    largest_ritz: float


def kernel_lsqr(
    kernel: Operator,
    c: Tensor,
    inv_sqrt_precondition: Operator | None = None,
    *,
    tol: float,
    max_iter: int,
    ritz_floor: float | None = None,
) -> tuple[Tensor, KernelLsqrInfo]:
    """Coefficients y with Aᵀy = A⁺c (Moore–Penrose), from products with K = A Aᵀ.

    Args:
        kernel: y -> K y (r,) -> (r,).
        c: right-hand side (r,).
        inv_sqrt_precondition: x -> C⁻¹ x with C = P^{1/2} (None: the identity).
        tol: stop at a relative (preconditioned) residual ≤ tol, or when the least-squares test is ≤ tol.
        max_iter: at most this many products with K.
        ritz_floor: return before θ_min² drops below this (None: no watch).

    Returns:
        (y, :class:`KernelLsqrInfo`).
    """
    apply = inv_sqrt_precondition if inv_sqrt_precondition is not None else (lambda x: x)
    y = torch.zeros_like(c)  # coefficients of the iterate x = Aᵀ y
    u = apply(c)
    beta = float(torch.linalg.vector_norm(u))
    if beta == 0:
        return y, KernelLsqrInfo(0, 0.0, "converged", math.inf, 0.0)
    b_norm = beta
    u = u / beta
    v = apply(u)  # coefficients of v = (C⁻¹A)ᵀ u = Aᵀ C⁻ᵀ u
    kv = kernel(v)  # A v in output coordinates: K times the coefficients
    alpha = math.sqrt(max(float(v @ kv), 0.0))
    if alpha == 0:
        return y, KernelLsqrInfo(0, 1.0, "least-squares", math.inf, 0.0)
    v, kv = v / alpha, kv / alpha
    w = v.clone()
    phibar, rhobar = beta, alpha
    norm_a2 = alpha**2
    alphas, betas = [alpha], []
    checked = y
    smallest, largest = math.inf, 0.0
    stopped, iterations = "max_iter", max_iter
    eps = torch.finfo(c.dtype).eps
    for it in range(1, max_iter + 1):
        u = apply(kv) - alpha * u
        beta = float(torch.linalg.vector_norm(u))
        if beta > 0:
            u = u / beta
        norm_a2 += beta**2
        betas.append(beta)
        if ritz_floor is not None and watch(it):
            if count_below(*normal_tridiagonal(alphas, betas), ritz_floor) > 0:
                smallest, largest = eigenvalue_bounds(*normal_tridiagonal(alphas, betas))
                return checked, KernelLsqrInfo(it, phibar / b_norm, "ritz-floor", smallest, largest)
            checked = y
        v = apply(u) - beta * v
        kv_next = kernel(v)
        energy = float(v @ kv_next)  # ‖Aᵀv‖², computed with an absolute error of about eps·‖K‖·‖v‖²
        if energy <= _NOISE * eps * norm_a2 * float(v @ v):
            # The new direction is at the rounding level of vᵀKv: the Krylov space is exhausted (A has no
            # more singular values that products with K can resolve). Normalising it would blow up rounding.
            energy, v, kv_next = 0.0, torch.zeros_like(v), torch.zeros_like(kv_next)
        alpha = math.sqrt(energy)
        if alpha > 0:
            v, kv_next = v / alpha, kv_next / alpha
        norm_a2 += alpha**2
        rho = math.hypot(rhobar, beta)
        cs, sn = rhobar / rho, beta / rho
        theta = sn * alpha
        rhobar = -cs * alpha
        phi = cs * phibar
        phibar = sn * phibar
        y = y + (phi / rho) * w
        w = v - (theta / rho) * w
        kv = kv_next
        alphas.append(alpha)
        normal = phibar * alpha * abs(cs)  # ‖(C⁻¹A)ᵀ r‖
        if phibar <= tol * b_norm:
            stopped, iterations = "converged", it
            break
        if normal <= tol * math.sqrt(norm_a2) * phibar or alpha == 0:
            stopped, iterations = "least-squares", it
            break
    if betas:
        smallest, largest = eigenvalue_bounds(*normal_tridiagonal(alphas, betas))
    return y, KernelLsqrInfo(iterations, phibar / b_norm, stopped, smallest, largest)


def preconditioned_cg(
    matvec: Operator, b: Tensor, precondition: Operator, *, tol: float, max_iter: int
) -> tuple[Tensor, KernelLsqrInfo]:
    """x = M⁻¹ b for SPD M by conjugate gradients preconditioned with P⁻¹; stops at ‖b − M x‖ ≤ tol·‖b‖.

    Used for damped kernels M = K + λI, which are SPD (no cutoff applies, so no Ritz watch).
    """
    x = torch.zeros_like(b)
    b_norm = float(torch.linalg.vector_norm(b))
    if b_norm == 0:
        return x, KernelLsqrInfo(0, 0.0, "converged", math.inf, 0.0)
    residual = b.clone()
    z = precondition(residual)
    direction = z.clone()
    rz = float(residual @ z)
    for it in range(1, max_iter + 1):
        product = matvec(direction)
        step = rz / float(direction @ product)
        x = x + step * direction
        residual = residual - step * product
        norm = float(torch.linalg.vector_norm(residual))
        if norm <= tol * b_norm:
            return x, KernelLsqrInfo(it, norm / b_norm, "converged", math.nan, math.nan)
        z = precondition(residual)
        rz_next = float(residual @ z)
        direction = z + (rz_next / rz) * direction
        rz = rz_next
    return x, KernelLsqrInfo(max_iter, norm / b_norm, "max_iter", math.nan, math.nan)
