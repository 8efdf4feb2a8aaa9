"""LSQR (Paige & Saunders 1982), written once: Golub–Kahan bidiagonalisation of an operator M with the QR update of
its bidiagonal, for min ‖M x − b‖ from x₀ = 0, a Ritz-value watch against a cutoff, and a stopping status.

The recurrences (β₁u₁ = b, α₁v₁ = Mᵀu₁; β_{k+1}u_{k+1} = M v_k − α_k u_k, α_{k+1}v_{k+1} = Mᵀu_{k+1} − β_{k+1}v_k)
only ever combine, scale and measure v-vectors and apply M and Mᵀ. Where those happen is a ``Coordinates``:

* :class:`OperatorCoordinates`: M = A through products A·x and Aᵀ·y; the iterate is a vector of the column space.
* :class:`KernelCoordinates`: M = C⁻¹A known only through products with K = A Aᵀ and C⁻¹ (C⁻¹ symmetric). Every
  v-vector is Aᵀy and is held as its coefficients y: M v = C⁻¹(K y), Mᵀu = Aᵀ(C⁻¹u) has coefficients C⁻¹u, and
  ‖v‖² = yᵀK y comes from the same product K y that M v needs next. One product with K per iteration; the
  returned iterate is the coefficient vector (the caller forms Aᵀy once). With C = P^{1/2} for an SPD P that
  maps range(K) and null(K) to themselves, the weighted residual ‖C⁻¹(A v − c)‖ splits into a range part and a
  fixed null part, so the minimiser is still v = A⁺c, consistent c or not; convergence follows the spectrum of
  C⁻¹KC⁻ᵀ. The null part of c never enters B_k (B_kᵀB_k is the Lanczos matrix of AᵀC⁻ᵀC⁻¹A started at
  AᵀC⁻ᵀC⁻¹c, which does not see it), so a small Ritz value is a small *nonzero* eigenvalue being resolved.

Started at zero, the iterates stay in range(Mᵀ), so the limit is the minimum-norm least-squares solution. Stops
(``LsqrInfo.stopped``): "converged" at ‖r‖ ≤ tol·‖b‖; "least-squares" at ‖Mᵀr‖ ≤ tol·‖M‖_F·‖r‖ (an inconsistent
system solved) or when the Krylov space is exhausted (α = 0); "ritz-floor" when the watch fired; "max_iter".

Ritz watch: the squared singular values θ² of the bidiagonal B_k are Ritz values of MᵀM. A θ² below the cutoff
means LSQR is about to resolve a direction the Moore–Penrose cutoff drops (and would blow up along it); the solve
then returns the last iterate checked before, the one without it. The cutoff is absolute (``ritz_floor``: θ² <
floor) or relative (``ritz_cutoff``: θ² < cutoff·θ²_max, θ²_max estimated from B_k itself).

All scalars of the recurrence are Python floats (float64 whatever the dtype of b): each iteration reads α and β
from the device (the stopping test and the watch need them anyway; kernel coordinates read yᵀKy and yᵀy for α),
and the vector work stays on the device, in the dtype of b.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Protocol

import torch
from torch import Tensor

from natgrad.linalg._ritz import count_below, eigenvalue_bounds, normal_tridiagonal, watch

Operator = Callable[[Tensor], Tensor]
Stopped = Literal["converged", "least-squares", "ritz-floor", "max_iter"]
_NOISE = 100.0  # kernel coordinates: a direction whose K-energy is below _NOISE·eps·‖M‖²_F·‖y‖² is rounding


class Coordinates(Protocol):
    """Where LSQR's v-vectors live and how M acts on them (see the module docstring)."""

    def zeros(self, b: Tensor) -> Tensor:
        """The zero iterate for right-hand side ``b``."""
        ...

    def adjoint(self, u: Tensor) -> Tensor:
        """Mᵀu, in these coordinates."""
        ...

    def normalise(self, v: Tensor, norm_m2: float) -> tuple[float, Tensor, Tensor]:
        """(α = ‖v‖, v/α, what :meth:`image` needs for M(v/α)); α = 0 for a direction at rounding level.

        ``norm_m2`` is the running estimate of ‖M‖²_F, the scale against which rounding is judged.
        """
        ...

    def image(self, cached: Tensor) -> Tensor:
        """M v from what :meth:`normalise` returned for v."""
        ...


@dataclass(frozen=True)
class OperatorCoordinates:
    """M = A given by ``matvec`` (x -> A x) and ``rmatvec`` (y -> Aᵀ y); iterates have ``n_cols`` entries.

    Costs one product with A and one with Aᵀ per iteration (one more Aᵀ to start).
    """

    matvec: Operator
    rmatvec: Operator
    n_cols: int

    def zeros(self, b: Tensor) -> Tensor:
        """Zero vector of the column space."""
        return torch.zeros(self.n_cols, dtype=b.dtype, device=b.device)

    def adjoint(self, u: Tensor) -> Tensor:
        """Aᵀu."""
        return self.rmatvec(u)

    def normalise(self, v: Tensor, norm_m2: float) -> tuple[float, Tensor, Tensor]:
        """Euclidean norm (accurate to rounding relative to ‖v‖ itself, so no floor applies)."""
        alpha = float(torch.linalg.vector_norm(v))
        if alpha > 0:
            v = v / alpha
        return alpha, v, v

    def image(self, cached: Tensor) -> Tensor:
        """A v."""
        return self.matvec(cached)


@dataclass(frozen=True)
class KernelCoordinates:
    """M = C⁻¹A through ``kernel`` (y -> K y, K = A Aᵀ) and ``inv_sqrt_precondition`` (x -> C⁻¹x; None: C = I).

    Iterates are coefficient vectors y of Aᵀy. Costs one product with K per iteration (one more to start). The
    energy yᵀK y is computed with an absolute error of about eps·‖K‖·‖y‖²: a direction below a multiple of that
    is the Krylov space exhausted (no singular value of A left that products with K resolve), and normalising it
    would blow up rounding, so it counts as zero.
    """

    kernel: Operator
    inv_sqrt_precondition: Operator | None = None

    def _apply(self, x: Tensor) -> Tensor:
        return x if self.inv_sqrt_precondition is None else self.inv_sqrt_precondition(x)

    def zeros(self, b: Tensor) -> Tensor:
        """Zero coefficients (one per output)."""
        return torch.zeros_like(b)

    def adjoint(self, u: Tensor) -> Tensor:
        """Coefficients of Aᵀ C⁻¹ u: C⁻¹ u."""
        return self._apply(u)

    def normalise(self, v: Tensor, norm_m2: float) -> tuple[float, Tensor, Tensor]:
        """α² = yᵀK y from one product with K, which is kept (scaled) for the next M v."""
        kv = self.kernel(v)
        energy = float(v @ kv)
        if energy <= _NOISE * torch.finfo(v.dtype).eps * norm_m2 * float(v @ v):
            return 0.0, torch.zeros_like(v), torch.zeros_like(kv)
        alpha = math.sqrt(energy)
        return alpha, v / alpha, kv / alpha

    def image(self, cached: Tensor) -> Tensor:
        """M v = C⁻¹(K y) from the cached K y."""
        return self._apply(cached)


@dataclass(frozen=True)
class LsqrInfo:
    """How an LSQR solve ended.

    Attributes:
        iterations: bidiagonalisation steps taken.
        residual: ‖b − M x‖/‖b‖ (the recurrence's estimate), of the last iterate formed.
        stopped: "converged", "least-squares", "ritz-floor" or "max_iter" (module docstring).
        alphas, betas: the bidiagonal B_k (diagonal α₁…α_k, subdiagonal β₂…β_{k+1}).
    """

    iterations: int
    residual: float
    stopped: Stopped
    alphas: tuple[float, ...] = ()
    betas: tuple[float, ...] = ()

    @property
    def converged(self) -> bool:
        """Whether the solve met its tolerance (consistent or least-squares)."""
        return self.stopped in ("converged", "least-squares")

    @cached_property
    def ritz_bounds(self) -> tuple[float, float]:
        """(θ²_min, θ²_max) of B_k to 1e-3 relative ((inf, 0) before the first step); θ²_max estimates λ_max(MᵀM)."""
        if not self.betas:
            return math.inf, 0.0
        return eigenvalue_bounds(*normal_tridiagonal(list(self.alphas), list(self.betas)))


def solve_lsqr(
    coordinates: Coordinates,
    b: Tensor,
    *,
    tol: float,
    max_iter: int,
    ritz_floor: float | None = None,
    ritz_cutoff: float | None = None,
) -> tuple[Tensor, LsqrInfo]:
    """x = M⁺b by LSQR from x₀ = 0, M as ``coordinates`` apply it.

    Args:
        coordinates: :class:`OperatorCoordinates` or :class:`KernelCoordinates`.
        b: right-hand side (the output space of M).
        tol: stop at ‖r‖ ≤ tol·‖b‖, or at ‖Mᵀr‖ ≤ tol·‖M‖_F·‖r‖.
        max_iter: at most this many iterations.
        ritz_floor: return before a Ritz value θ² falls below this (None: no absolute floor).
        ritz_cutoff: return before a θ² falls below ritz_cutoff·θ²_max (None: no relative cutoff).

    Returns:
        (x, :class:`LsqrInfo`).
    """
    x = coordinates.zeros(b)
    beta = float(torch.linalg.vector_norm(b))
    if beta == 0:
        return x, LsqrInfo(0, 0.0, "converged")
    b_norm = beta
    u = b / beta
    alpha, v, cached = coordinates.normalise(coordinates.adjoint(u), 0.0)
    if alpha == 0:
        return x, LsqrInfo(0, 1.0, "least-squares", (alpha,))
    w = v.clone()
    phibar, rhobar = beta, alpha
    norm_m2 = alpha**2
    alphas, betas = [alpha], []
    watching = ritz_floor is not None or ritz_cutoff is not None
    checked = x
    stopped: Stopped = "max_iter"
    iterations = max_iter
    for it in range(1, max_iter + 1):
        u = coordinates.image(cached) - alpha * u
        beta = float(torch.linalg.vector_norm(u))
        if beta > 0:
            u = u / beta
        norm_m2 += beta**2
        betas.append(beta)
        if watching and watch(it):
            if _below_cutoff(alphas, betas, ritz_floor, ritz_cutoff):
                info = LsqrInfo(it, phibar / b_norm, "ritz-floor", tuple(alphas), tuple(betas))
                return checked, info
            checked = x
        alpha, v, cached = coordinates.normalise(coordinates.adjoint(u) - beta * v, norm_m2)
        norm_m2 += alpha**2
        alphas.append(alpha)
        rho = math.hypot(rhobar, beta)
        cs, sn = rhobar / rho, beta / rho
        theta = sn * alpha
        rhobar = -cs * alpha
        phi = cs * phibar
        phibar = sn * phibar
        x = x + (phi / rho) * w
        w = v - (theta / rho) * w
        if phibar <= tol * b_norm:  # ‖b − M x‖
            stopped, iterations = "converged", it
            break
        if phibar * alpha * abs(cs) <= tol * math.sqrt(norm_m2) * phibar or alpha == 0:  # ‖Mᵀ(b − M x)‖
            stopped, iterations = "least-squares", it
            break
    return x, LsqrInfo(iterations, phibar / b_norm, stopped, tuple(alphas), tuple(betas))


def _below_cutoff(alphas: list[float], betas: list[float], floor: float | None, cutoff: float | None) -> bool:
    """Whether B_kᵀB_k has an eigenvalue below the floor, or below cutoff·(its largest)."""
    tridiagonal = normal_tridiagonal(alphas, betas)
    threshold = 0.0 if floor is None else floor
    if cutoff is not None:
        threshold = max(threshold, cutoff * eigenvalue_bounds(*tridiagonal)[1])
    return count_below(*tridiagonal, threshold) > 0
