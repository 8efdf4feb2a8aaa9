"""Routes that materialise A = Bᵀ J: primal (eigh of G, d×d), dual (eigh of K, r×r), lstsq (SVD of A).

All three reduce A to its thin singular system A = U S Vᵀ restricted to the retained rank; every
generalized inverse is then a formula in (U, S, V):
  G⁺∇ = V S⁻² Vᵀ ∇,  and when ∇ = Aᵀc also G⁺∇ = A⁺c = V S⁻¹ Uᵀ c.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad._routes._kernel_inverse import KernelInverse, retained
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


def thin_svd(A: Tensor, route: str, rtol: float) -> Thin:
    """Thin singular system of A keeping eigenvalues s² of G (= of K) above rtol · s²_max."""
    if route == "primal":
        lam, V = torch.linalg.eigh(A.T @ A)
        keep = retained(lam, rtol)
        return Thin(lam[keep].sqrt(), V=V[:, keep])
    if route == "dual":
        lam, U = torch.linalg.eigh(A @ A.T)
        keep = retained(lam, rtol)
        return Thin(lam[keep].sqrt(), U=U[:, keep], A=A)
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    keep = retained(s**2, rtol)
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
    if route == "dual":
        kinv = KernelInverse(A @ A.T, rtol)
        if c is not None:  # ∇ = Aᵀc: (AᵀA + λI)⁻¹Aᵀc = Aᵀ(AAᵀ + λI)⁻¹c, no pseudo-inverse needed
            return A.T @ kinv.damped(c, lam), kinv.rank
        return A.T @ kinv.damped_coefficients(A @ grad, lam) + grad / lam, kinv.rank
    if route == "lstsq" and c is not None:
        U, s, Vh = torch.linalg.svd(A, full_matrices=False)
        return Vh.T @ ((s / (s**2 + lam)) * (U.T @ c)), int(retained(s**2, rtol).sum())
    if route == "primal":
        evals, V = torch.linalg.eigh(A.T @ A)
        rank = int(retained(evals, rtol).sum())
        return V @ ((V.T @ grad) / (evals + lam)), rank
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    coeff = Vh @ grad
    return Vh.T @ (coeff / (s**2 + lam)) + (grad - Vh.T @ coeff) / lam, int(retained(s**2, rtol).sum())


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
