"""Matrix-free route: Krylov solves on A x = Bᵀ(J x) and Aᵀ y = Jᵀ(B y); nothing of size r×d or d×d exists.

"Factorising" costs nothing here: each product with G⁺ or (G + λI)⁻¹ is its own iterative solve.
Moore–Penrose: v = A⁺c by LSQR when ∇ = Aᵀc, else v = A⁺ (Aᵀ)⁺ ∇ = G⁺∇ (two least-squares solves);
Damped: CG on G + λI. The numerical rank is not available (None).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from natgrad._routes._factorization import Factorization, Operator, SolveInfo
from natgrad._routes._problem import Problem
from natgrad._routes._route import AnyProblem, RouteName
from natgrad.linalg import KrylovInfo, cg, lsqr


class KrylovFactorization(Factorization):
    """Products with G⁺, I − G⁺G and (G + λI)⁻¹ by LSQR and CG; records each solve's outcome."""

    rank = None

    def __init__(self, problem: Problem) -> None:
        self.a: Operator = problem.a_matvec
        self.at: Operator = problem.at_matvec
        self.r, self.d = problem.r, problem.d
        self.tol, self.max_iter = problem.tol, problem.max_iter
        self.solves: list[KrylovInfo] = []

    def _least_squares(self, mv: Operator, rmv: Operator, b: Tensor, cols: int) -> Tensor:
        x, info = lsqr(mv, rmv, b, cols, tol=self.tol, max_iter=self.max_iter)
        self.solves.append(info)
        return x

    def pinv(self, grad: Tensor, c: Tensor | None) -> Tensor:
        if c is not None:
            return self._least_squares(self.a, self.at, c, self.d)
        y = self._least_squares(self.at, self.a, grad, self.r)
        return self._least_squares(self.a, self.at, y, self.d)

    def complement(self, x: Tensor) -> Tensor:
        return x - self._least_squares(self.a, self.at, self.a(x), self.d)

    def damped(self, grad: Tensor, c: Tensor | None, damping: float) -> Tensor:
        v, info = cg(lambda x: self.at(self.a(x)) + damping * x, grad, tol=self.tol, max_iter=self.max_iter)
        self.solves.append(info)
        return v

    def begin(self) -> None:
        self.solves = []

    def info(self) -> SolveInfo:
        return {
            "iterations": sum(s.iterations for s in self.solves),
            "residual": max((s.residual for s in self.solves), default=0.0),
            "converged": all(s.converged for s in self.solves),
        }


@dataclass(frozen=True)
class KrylovRoute(AnyProblem):
    """LSQR / CG on products with J and Jᵀ: the route when nothing dense fits."""

    name: RouteName = "krylov"
    bounded: bool = False

    def memory(self, r: int, d: int, itemsize: int) -> int:
        return itemsize * 8 * (r + d)

    def auto_rank(self, r: int, d: int) -> int | None:
        return 9  # the last resort: always applies, never refused for memory

    def factorize(self, problem: Problem) -> Factorization:
        return KrylovFactorization(problem)


KRYLOV = KrylovRoute()
