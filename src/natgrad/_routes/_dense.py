"""Routes that materialise A = Bᵀ J (S): primal (eigh of G, d×d), dual (K, r×r), lstsq (SVD of A)."""

from __future__ import annotations

from dataclasses import dataclass

from natgrad._routes._factorization import Factorization, KernelFactorization, SpectralFactorization
from natgrad._routes._problem import Problem
from natgrad._routes._route import AnyProblem, RouteName


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
        return itemsize * (r * d + 3 * d * d)

    def auto_rank(self, r: int, d: int) -> int | None:
        return 1 if d <= r else None

    def factorize(self, problem: Problem) -> Factorization:
        return SpectralFactorization.of_gram(problem.a_dense(), problem.rtol)


@dataclass(frozen=True)
class DualRoute(_DenseRoute):
    """K = AAᵀ (r × r) with a dense A: the cheapest dense route when r < d."""

    name: RouteName = "dual"

    def memory(self, r: int, d: int, itemsize: int) -> int:
        return itemsize * (2 * r * d + 3 * r * r)

    def auto_rank(self, r: int, d: int) -> int | None:
        return 1 if r < d else None

    def factorize(self, problem: Problem) -> Factorization:
        a = problem.a_dense()
        return KernelFactorization(a @ a.T, problem.rtol, lambda x: a @ x, lambda y: a.T @ y)


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
