"""Factorisations of G = AᵀA at one point: what every generalized inverse is written against.

A Factorization answers three products for right-hand sides ∇ (and c with ∇ = Aᵀc when it exists):

* ``pinv``: G⁺∇ on the retained rank (= A⁺c when c is given),
* ``complement``: (I − G⁺G) x, the part of x in ker G,
* ``damped``: (G + λI)⁻¹∇ for any λ > 0 (no cutoff: damping needs none).

Two concrete forms cover the direct routes: a spectral one (orthonormal V with the eigenvalues of G, from eigh
of G or the SVD of A) and a kernel one (K = AAᵀ with products by A and Aᵀ, for the dual and structured routes).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from natgrad._result import SolveInfo, deferred_rank
from natgrad._routes._kernel_inverse import KernelInverse, retained
from natgrad.linalg._spectral import robust_eigh, robust_svd

Operator = Callable[[Tensor], Tensor]


class Factorization(ABC):
    """G = AᵀA factorised once at one point, for any number of right-hand sides.

    Attributes:
        rank: the numerical rank retained by the cutoff, or None when the route does not know it (krylov).
        applied_rtol: the cutoff on λ/λ_max it applies when it chose its own (a float32 model's Gram matrix
            solved in float64 uses the kernel-error rule), else None (the problem's).
    """

    rank: int | None
    applied_rtol: float | None = None

    @abstractmethod
    def pinv(self, grad: Tensor, c: Tensor | None) -> Tensor:
        """G⁺∇ on the retained rank; ``c`` (∇ = Aᵀc) may be used instead of ∇ when given."""

    @abstractmethod
    def complement(self, x: Tensor) -> Tensor:
        """(I − G⁺G) x: the part of x in ker G (on the retained rank)."""

    @abstractmethod
    def damped(self, grad: Tensor, c: Tensor | None, damping: float) -> Tensor:
        """(G + λI)⁻¹∇ for λ = ``damping`` > 0."""

    def result_rank(self) -> int | None:
        """``rank`` for a result: the value, or a deferred one where computing it costs more than a solve."""
        return self.rank

    def begin(self) -> None:
        """Start a new solve (resets per-solve records)."""
        return None

    def certify(self, v: Tensor) -> Tensor | None:
        """Check the last ``pinv``/``damped`` result a posteriori; returns J v when the check computed it."""
        return None

    def info(self) -> SolveInfo:
        """Route details of the solve since :meth:`begin`."""
        return {}

    def release(self) -> None:
        """Free what the factorisation holds beyond its matrices (e.g. an autograd graph)."""
        return None


class SpectralFactorization(Factorization):
    """G = V diag(λ) Vᵀ with orthonormal V (d × m), all m eigenpairs kept and a cutoff mask on them.

    ``U`` (r × m, with λ = s²) is present when it came from the SVD of A; then A⁺c = V S⁻¹ Uᵀ c is used for
    consistent right-hand sides instead of G⁺∇ = V S⁻² Vᵀ ∇ (the better conditioned form).
    """

    def __init__(
        self,
        eigenvalues: Tensor,
        V: Tensor,
        rtol: float,
        U: Tensor | None = None,
        s: Tensor | None = None,
        fallback: str | None = None,
    ) -> None:
        self.eigenvalues, self.V, self.U, self.fallback = eigenvalues, V, U, fallback
        self.s = eigenvalues.sqrt() if s is None else s  # singular values of A, exact from an SVD
        keep = retained(eigenvalues, rtol)
        self.rank, self.applied_rtol = int(keep.sum()), rtol
        self._Vk, self._sk = V[:, keep], self.s[keep]
        self._Uk = None if U is None else U[:, keep]
        self._complete = V.shape[0] == V.shape[1]  # V spans R^d: nothing outside it

    @classmethod
    def of_gram(cls, a: Tensor, rtol: float) -> SpectralFactorization:
        """From eigh of G = AᵀA (d × d)."""
        d = a.shape[1]
        lam, V, fallback = robust_eigh(a.T @ a, f"eigh of the {d} × {d} matrix G = AᵀA")
        return cls(lam, V, rtol, fallback=fallback)

    @classmethod
    def of_svd(cls, a: Tensor, rtol: float) -> SpectralFactorization:
        """From the thin SVD A = U S Vᵀ."""
        U, s, Vh, fallback = robust_svd(a, f"svd of the {a.shape[0]} × {a.shape[1]} matrix A")
        return cls(s**2, Vh.T, rtol, U, s, fallback)

    def info(self) -> SolveInfo:
        return {} if self.fallback is None else {"spectral_fallback": self.fallback}

    # The factors may be wider than the model (float64 eigh of a float32 model's G): inputs are cast to the
    # factors' dtype and results back to the input's.
    def pinv(self, grad: Tensor, c: Tensor | None) -> Tensor:
        work = self.V.dtype
        if c is not None and self._Uk is not None:
            return (self._Vk @ ((self._Uk.T @ c.to(work)) / self._sk)).to(grad.dtype)
        # s² (not λ): the rounding of the former routes
        return (self._Vk @ ((self._Vk.T @ grad.to(work)) / self._sk**2)).to(grad.dtype)

    def complement(self, x: Tensor) -> Tensor:
        return x - (self._Vk @ (self._Vk.T @ x.to(self.V.dtype))).to(x.dtype)

    def damped(self, grad: Tensor, c: Tensor | None, damping: float) -> Tensor:
        work = self.V.dtype
        if c is not None and self.U is not None:  # (AᵀA + λI)⁻¹Aᵀc = V S (S² + λ)⁻¹ Uᵀ c
            return (self.V @ ((self.s / (self.eigenvalues + damping)) * (self.U.T @ c.to(work)))).to(
                grad.dtype
            )
        wide = grad.to(work)
        coeff = self.V.T @ wide
        v = self.V @ (coeff / (self.eigenvalues + damping))
        # ∇ minus its part in span V lies in ker G, where (G + λI)⁻¹ is 1/λ
        return (v if self._complete else v + (wide - self.V @ coeff) / damping).to(grad.dtype)


@dataclass(frozen=True)
class KernelSolve:
    """The last kernel solve, for an a posteriori check: v = Aᵀy (+ ∇/λ), and K y (+ A∇/λ) as it was used.

    Then A v must equal ``layered``: the residual of the solve, measured with the true A.
    """

    y: Tensor
    layered: Tensor
    grad: Tensor
    c: Tensor | None
    damped: bool


class KernelFactorization(Factorization):
    """G through K = AAᵀ (r × r): G⁺ = Aᵀ K⁺² A, A⁺ = Aᵀ K⁺, and (G + λI)⁻¹Aᵀ = Aᵀ(K + λI)⁻¹.

    K⁺ and (K + λI)⁻¹ come from a certified Cholesky factor when the cutoff keeps every eigenvalue, else eigh
    (see ``_kernel_inverse``). Products A x and Aᵀ y are whatever the route has: a dense A or JVPs and VJPs.
    """

    def __init__(self, kernel: Tensor, rtol: float, a: Operator, at: Operator) -> None:
        self.kernel = kernel
        self.inverse = KernelInverse(kernel, rtol)
        self.applied_rtol = rtol
        self.a, self.at = a, at
        self.last: KernelSolve | None = None

    @property
    def rank(self) -> int:  # type: ignore[override]  # computed on first use, not at construction
        """The retained rank of K (its eigenvalues are computed when K is not certified full rank)."""
        return self.inverse.rank

    def begin(self) -> None:
        self.inverse.damped_by = None  # the info of a solve says how that solve applied (K + λI)⁻¹

    def result_rank(self) -> int | None:
        inverse = self.inverse  # the result keeps K alive until its rank is read, not A or the route
        known = inverse.known_rank
        return known if known is not None else deferred_rank(lambda: inverse.rank)

    def info(self) -> SolveInfo:
        return spectral_info(self.inverse)

    def pinv(self, grad: Tensor, c: Tensor | None) -> Tensor:
        kinv = self.inverse
        c = None if c is None else c.to(self.kernel.dtype)  # K may be wider than the model (float64)
        # G⁺∇ = Aᵀ K⁺ c when ∇ = Aᵀc, else Aᵀ K⁺² A∇ (G⁺ = A⁺A⁺ᵀ with A⁺ = AᵀK⁺)
        y = kinv.pinv(c) if c is not None else kinv.pinv(kinv.pinv(self.a(grad)))
        self.last = KernelSolve(y, self.kernel @ y, grad, c, damped=False)
        return self.at(y)

    def complement(self, x: Tensor) -> Tensor:
        return x - self.at(self.inverse.pinv(self.a(x)))

    def damped(self, grad: Tensor, c: Tensor | None, damping: float) -> Tensor:
        if c is not None:  # (AᵀA + λI)⁻¹Aᵀc = Aᵀ(AAᵀ + λI)⁻¹c, no pseudo-inverse needed
            y = self.inverse.damped(c.to(self.kernel.dtype), damping)
            self.last = KernelSolve(y, self.kernel @ y, grad, c, damped=True)
            return self.at(y)
        a_grad = self.a(grad)
        y = self.inverse.damped_coefficients(a_grad, damping)
        self.last = KernelSolve(y, self.kernel @ y + a_grad / damping, grad, c, damped=True)
        return self.at(y) + grad / damping


def spectral_info(inverse: KernelInverse) -> SolveInfo:
    """``spectral_fallback`` when the kernel's eigh needed one, and ``damped_solve`` after a damped solve."""
    info: SolveInfo = {} if inverse.fallback is None else {"spectral_fallback": inverse.fallback}
    if inverse.damped_by is not None:
        info["damped_solve"] = inverse.damped_by
    return info


def merge_info(*parts: dict[str, Any]) -> SolveInfo:
    """One info mapping from several (later keys win)."""
    out: dict[str, Any] = {}
    for part in parts:
        out.update(part)
    return out  # type: ignore[return-value]
