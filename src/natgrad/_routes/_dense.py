"""Routes that materialise A = Bᵀ J: primal (eigh of G, d×d), dual (eigh of K, r×r), lstsq (SVD of A).

All three reduce A to its thin singular system A = U S Vᵀ restricted to the retained rank; every
generalized inverse is then a formula in (U, S, V):
  G⁺∇ = V S⁻² Vᵀ ∇,  and when ∇ = Aᵀc also G⁺∇ = A⁺c = V S⁻¹ Uᵀ c.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad._routes._problem import Problem
from natgrad.linalg import Damped, GInverse, Inverse, MinNorm, MoorePenrose


@dataclass
class Thin:
    """A = U diag(s) Vᵀ on the retained rank k.

    The dual route keeps U and A instead of V = AᵀU S⁻¹, so that each use of V costs one product with Aᵀ
    (r·d) rather than forming V (r·k·d); the primal route keeps V only.
    """

    s: Tensor  # (k,)
    U: Tensor | None = None  # (r, k)
    V: Tensor | None = None  # (d, k)
    A: Tensor | None = None  # (r, d), when V is implicit

    @property
    def rank(self) -> int:
        return int(self.s.numel())

    def v_times(self, w: Tensor) -> Tensor:
        """V w for w of shape (k,)."""
        return self.V @ w if self.V is not None else self.A.T @ (self.U @ (w / self.s))

    def vt_times(self, x: Tensor) -> Tensor:
        """Vᵀ x for x of shape (d,)."""
        return self.V.T @ x if self.V is not None else (self.U.T @ (self.A @ x)) / self.s


def _keep(eigenvalues: Tensor, rtol: float) -> Tensor:
    top = eigenvalues.max() if eigenvalues.numel() else eigenvalues.new_zeros(())
    return (eigenvalues > rtol * top) & (eigenvalues > 0)


def kernel_eigh(K: Tensor, rtol: float) -> tuple[Tensor, Tensor, Tensor]:
    """K = U diag(λ) Uᵀ and the mask of retained eigenvalues λ > rtol·λ_max (the cutoff of every route)."""
    evals, U = torch.linalg.eigh(K)
    return evals, U, _keep(evals, rtol)


def kernel_coefficients(evals: Tensor, U: Tensor, keep: Tensor, c: Tensor | None, a_grad: Tensor) -> Tensor:
    """y with G⁺∇ = Aᵀy, from K = AAᵀ = U diag(λ) Uᵀ: y = K⁺c when ∇ = Aᵀc, else y = K⁺²A∇.

    The second form is G⁺ = A⁺A⁺ᵀ with A⁺ = AᵀK⁺; both use only the retained eigenpairs.
    """
    Uk, ek = U[:, keep], evals[keep]
    if c is not None:
        return Uk @ ((Uk.T @ c) / ek)
    return Uk @ ((Uk.T @ a_grad) / ek**2)


def damped_kernel_coefficients(evals: Tensor, U: Tensor, keep: Tensor, a_grad: Tensor, lam: float) -> Tensor:
    """w with (G + λI)⁻¹∇ = Aᵀw + ∇/λ, from K = AAᵀ = U diag(λ) Uᵀ and A∇ (any ∇).

    ∇ = Aᵀy + ∇⊥ with y = K⁺A∇; (G + λI)⁻¹Aᵀy = Aᵀ(K + λI)⁻¹y and (G + λI)⁻¹∇⊥ = ∇⊥/λ, so
    w = (K + λI)⁻¹y − y/λ.
    """
    Uk, ek = U[:, keep], evals[keep]
    y = Uk @ ((Uk.T @ a_grad) / ek)
    return U @ ((U.T @ y) / (evals.clamp_min(0) + lam)) - y / lam


def thin_svd(A: Tensor, route: str, rtol: float) -> Thin:
    """Thin singular system of A keeping eigenvalues s² of G (= of K) above rtol · s²_max."""
    if route == "primal":
        lam, V = torch.linalg.eigh(A.T @ A)
        keep = _keep(lam, rtol)
        return Thin(lam[keep].sqrt(), V=V[:, keep])
    if route == "dual":
        lam, U = torch.linalg.eigh(A @ A.T)
        keep = _keep(lam, rtol)
        return Thin(lam[keep].sqrt(), U=U[:, keep], A=A)
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    keep = _keep(s**2, rtol)
    return Thin(s[keep], U=U[:, keep], V=Vh[keep].T)


def _moore_penrose(thin: Thin, grad: Tensor, c: Tensor | None) -> Tensor:
    if c is not None and thin.U is not None:
        return thin.v_times((thin.U.T @ c) / thin.s)
    return thin.v_times(thin.vt_times(grad) / thin.s**2)


def _complement(thin: Thin, x: Tensor) -> Tensor:
    """(I − G⁺G) x: the part of x in ker G = ker A."""
    return x - thin.v_times(thin.vt_times(x))


def _damped(
    A: Tensor, grad: Tensor, c: Tensor | None, lam: float, route: str, rtol: float
) -> tuple[Tensor, int]:
    if route == "dual" and c is not None:
        # ∇ = Aᵀc: (AᵀA + λI)⁻¹Aᵀc = Aᵀ(AAᵀ + λI)⁻¹c, no pseudo-inverse needed.
        K = A @ A.T
        rank = int(_keep(torch.linalg.eigvalsh(K), rtol).sum())
        eye = torch.eye(K.shape[0], dtype=K.dtype, device=K.device)
        return A.T @ torch.linalg.solve(K + lam * eye, c), rank
    if route == "lstsq" and c is not None:
        U, s, Vh = torch.linalg.svd(A, full_matrices=False)
        return Vh.T @ ((s / (s**2 + lam)) * (U.T @ c)), int(_keep(s**2, rtol).sum())
    if route == "primal":
        evals, V = torch.linalg.eigh(A.T @ A)
        rank = int(_keep(evals, rtol).sum())
        return V @ ((V.T @ grad) / (evals + lam)), rank
    if route == "dual":
        evals, U, keep = kernel_eigh(A @ A.T, rtol)
        return A.T @ damped_kernel_coefficients(evals, U, keep, A @ grad, lam) + grad / lam, int(keep.sum())
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    coeff = Vh @ grad
    return Vh.T @ (coeff / (s**2 + lam)) + (grad - Vh.T @ coeff) / lam, int(_keep(s**2, rtol).sum())


def solve_dense(problem: Problem, inverse: Inverse, route: str, chunk: int) -> tuple[Tensor, int, dict]:
    """v = G⁻∇ for the requested inverse via the dense ``route``. Returns (v, rank, info)."""
    A = problem.a_dense(chunk)
    grad, c = problem.grad, problem.c
    info: dict = {"consistent": c is not None}
    if isinstance(inverse, Damped):
        rtol = MoorePenrose().resolve_rtol(grad.dtype, problem.r, problem.d)
        v, rank = _damped(A, grad, c, float(inverse.damping), route, rtol)
        return v, rank, info
    if isinstance(inverse, MinNorm):
        h_is = inverse.inv_sqrt("natural_gradient")
        A = A * h_is if h_is.ndim == 1 else A @ h_is
        grad = h_is * grad if h_is.ndim == 1 else h_is @ grad
    mp = inverse if isinstance(inverse, MoorePenrose) else inverse.moore_penrose
    rtol = mp.resolve_rtol(grad.dtype, problem.r, problem.d)
    info["rtol"] = rtol
    thin = thin_svd(A, route, rtol)
    v = _moore_penrose(thin, grad, c)
    if isinstance(inverse, MinNorm):
        v = h_is * v if h_is.ndim == 1 else h_is @ v
    elif isinstance(inverse, GInverse):
        if inverse.U is not None:
            v = v + _complement(thin, inverse.U @ grad)
        if inverse.V is not None:
            v = v + inverse.V @ _complement(thin, grad)
    return v, thin.rank, info
