"""Routes that materialise A = Bᵀ J (S): primal (eigh of G, d×d), dual (K, r×r), lstsq (SVD of A).

Primal and dual form their Gram matrix and decompose it in float64 whatever the model's dtype, from a float64
copy of A: a float32 Gram matrix carries an error of about eps₃₂·λ_max, which swamps every eigenvalue below
it and costs eps₃₂·cond(K) in the answer (0.05–0.9 on the shared cases with cond(K) ≈ 8·10⁴). From the
float64 product of the float32 A the answer is the exact one of a matrix within eps₃₂ of A, about
eps₃₂·cond(A) = eps₃₂·√cond(K) from float64's, and the cutoff is the kernel-error rule of the structured
routes (``linalg._precision``): every direction above 50·eps₃₂·λ_max is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad._routes._factorization import Factorization, KernelFactorization, SpectralFactorization
from natgrad._routes._problem import Problem
from natgrad._routes._route import AnyProblem, RouteName
from natgrad.linalg._gram import row_gram
from natgrad.linalg._precision import kernel_rtol

WORK = torch.float64


def widened_bytes(r: int, d: int, itemsize: int) -> int:
    """The float64 copy of A that a narrower model's Gram routes hold (none for float64 models)."""
    return 8 * r * d if itemsize < 8 else 0


def widened(problem: Problem) -> tuple[Tensor, Tensor, float]:
    """(A in the model's dtype, A in float64, the cutoff for a Gram matrix of the model's A formed in float64)."""
    a = problem.a_dense()
    r, d = a.shape  # from A itself: the distributed engine passes a stand-in with A and rtol only
    return a, a.to(WORK), kernel_rtol(problem.rtol, a.dtype, r, d)


@dataclass(frozen=True)
class _DenseRoute(AnyProblem):
    """Shared by the three dense routes: no module needed, every problem supported."""

    name: RouteName
    bounded: bool = True

    def memory(self, r: int, d: int, itemsize: int) -> int:
        raise NotImplementedError

    def auto_rank(self, r: int, d: int) -> int | None:
        raise NotImplementedError

    def factorize(self, problem: Problem) -> Factorization:
        raise NotImplementedError


@dataclass(frozen=True)
class PrimalRoute(_DenseRoute):
    """eigh of G = AᵀA (d × d): the cheapest when d ≤ r."""

    name: RouteName = "primal"

    def memory(self, r: int, d: int, itemsize: int) -> int:
        return itemsize * r * d + widened_bytes(r, d, itemsize) + 8 * 3 * d * d  # G and V in float64

    def auto_rank(self, r: int, d: int) -> int | None:
        return 1 if d <= r else None

    def factorize(self, problem: Problem) -> Factorization:
        _, wide, rtol = widened(problem)
        return SpectralFactorization.of_gram(wide, rtol)


@dataclass(frozen=True)
class DualRoute(_DenseRoute):
    """K = AAᵀ (r × r) with a dense A: the cheapest dense route when r < d."""

    name: RouteName = "dual"

    def memory(self, r: int, d: int, itemsize: int) -> int:
        return itemsize * 2 * r * d + widened_bytes(r, d, itemsize) + 8 * 3 * r * r  # K in float64

    def auto_rank(self, r: int, d: int) -> int | None:
        return 1 if r < d else None

    def factorize(self, problem: Problem) -> Factorization:
        a, wide, rtol = widened(problem)
        dtype = a.dtype
        del a  # only the float64 copy is kept
        return KernelFactorization(
            row_gram(wide), rtol, lambda x: wide @ x.to(WORK), lambda y: (wide.T @ y).to(dtype)
        )


@dataclass(frozen=True)
class LstsqRoute(_DenseRoute):
    """The SVD of A itself: the best conditioned (never squares A), never picked by auto."""

    name: RouteName = "lstsq"

    def memory(self, r: int, d: int, itemsize: int) -> int:
        return itemsize * (3 * r * d + 2 * min(r, d) ** 2)

    def auto_rank(self, r: int, d: int) -> int | None:
        return None

    def factorize(self, problem: Problem) -> Factorization:
        return SpectralFactorization.of_svd(problem.a_dense(), problem.rtol)


PRIMAL, DUAL, LSTSQ = PrimalRoute(), DualRoute(), LstsqRoute()
