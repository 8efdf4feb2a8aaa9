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
    """A = U diag(s) Vᵀ on the retained rank k."""

    U: Tensor  # (r, k)
    s: Tensor  # (k,)
    V: Tensor  # (d, k)

    @property
    def rank(self) -> int:
        return int(self.s.numel())


def _keep(eigenvalues: Tensor, rtol: float) -> Tensor:
    top = eigenvalues.max() if eigenvalues.numel() else eigenvalues.new_zeros(())
    return (eigenvalues > rtol * top) & (eigenvalues > 0)


def thin_svd(A: Tensor, route: str, rtol: float) -> Thin:
    """Thin singular system of A keeping eigenvalues s² of G (= of K) above rtol · s²_max."""
    if route == "primal":
        lam, V = torch.linalg.eigh(A.T @ A)
        keep = _keep(lam, rtol)
        V, s = V[:, keep], lam[keep].sqrt()
        return Thin(A @ V / s, s, V)
    if route == "dual":
        lam, U = torch.linalg.eigh(A @ A.T)
        keep = _keep(lam, rtol)
        U, s = U[:, keep], lam[keep].sqrt()
        return Thin(U, s, A.T @ U / s)
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    keep = _keep(s**2, rtol)
    return Thin(U[:, keep], s[keep], Vh[keep].T)


def _moore_penrose(thin: Thin, grad: Tensor, c: Tensor | None, route: str) -> Tensor:
    if c is not None and route != "primal":
        return thin.V @ ((thin.U.T @ c) / thin.s)
    return thin.V @ ((thin.V.T @ grad) / thin.s**2)


def _complement(thin: Thin, x: Tensor) -> Tensor:
    """(I − G⁺G) x: the part of x in ker G = ker A."""
    return x - thin.V @ (thin.V.T @ x)


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
        evals, U = torch.linalg.eigh(A @ A.T)
        keep = _keep(evals, rtol)
        # ∇ = Aᵀy + ∇⊥ with y = K⁺A∇; (G + λI)⁻¹Aᵀy = Aᵀ(K + λI)⁻¹y and (G + λI)⁻¹∇⊥ = ∇⊥/λ.
        Uk, ek = U[:, keep], evals[keep]
        y = Uk @ ((Uk.T @ (A @ grad)) / ek)
        row_part = A.T @ (U @ ((U.T @ y) / (evals.clamp_min(0) + lam)))
        return row_part + (grad - A.T @ y) / lam, int(keep.sum())
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
    v = _moore_penrose(thin, grad, c, route)
    if isinstance(inverse, MinNorm):
        v = h_is * v if h_is.ndim == 1 else h_is @ v
    elif isinstance(inverse, GInverse):
        if inverse.U is not None:
            v = v + _complement(thin, inverse.U @ grad)
        if inverse.V is not None:
            v = v + inverse.V @ _complement(thin, grad)
    return v, thin.rank, info
