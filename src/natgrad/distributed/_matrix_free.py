"""The matrix-free strategy: conjugate gradients on K = AAᵀ (y sharded by rank) or G = AᵀA (x replicated).

Rows are sharded: rank p holds A_p = B_pᵀ J_p and applies it with one JVP. The only communication is
Aᵀy = Σ_p A_pᵀ y_p — one all-reduce of a d-vector per product — and, on the kernel system, the dot products of
sharded vectors (one all-reduced number each). Every generalized inverse becomes CG on a consistent system:

* Moore–Penrose with ∇z L = Bc: v = Aᵀ K⁺ c (kernel system, c ∈ range K when A has full row rank; when CG
  shows that it is not, the Gram system takes over) or v = G⁺ (Aᵀc) (Gram system, always consistent);
* Moore–Penrose otherwise: v = G⁺∇ = A⁺y with y = K⁺(A∇), then G v = Aᵀy: two consistent solves;
* GInverse adds (I − P)U∇ + V(I − P)∇ with P x = G⁺G x = Aᵀ K⁺ (A x), applied twice;
* MinNorm runs Moore–Penrose on A h^{-1/2} and maps back; Damped solves (K + λI) y = c or (G + λI) v = ∇.

CG from zero stays in the range of the operator, so on a consistent system it converges to the
pseudo-inverse solution. Each solve stops when the recomputed residual ‖b − Mx‖ ≤ tol·‖b‖ (restarting from the
current iterate when the recurrence claims convergence that the recomputed residual does not confirm), or at
``max_iter`` products; the certificate reports the residuals, and the caller raises ``ConvergenceError``
when one is above the tolerance. The inverses themselves are the engine's (``_routes._inverse``), applied to
:class:`ShardedKrylovFactorization`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad._routes._factorization import Factorization, SolveInfo
from natgrad._routes._problem import Problem
from natgrad.distributed._comm import Communicator

# A residual this many times ‖b‖ means b leaves the range of a singular system (CG then grows instead of
# converging); a false alarm on a consistent system costs only the fallback to the Gram system.
DIVERGENCE = 10.0


@dataclass(frozen=True)
class Certificate:
    """How the matrix-free solves ended (identical on every rank).

    Attributes:
        system: "kernel" (K = AAᵀ, r × r, unknowns sharded by rank) or "gram" (G = AᵀA, d × d, replicated).
        iterations: operator products over all solves.
        residual: the largest recomputed relative residual ‖b − Mx‖ / ‖b‖ over the solves.
        solves: number of CG solves.
        tol: the tolerance every solve had to meet.
        converged: whether every solve met it (a call that returns always has True).
        fallback: why the kernel system gave way to the Gram system, or None.
    """

    system: str
    iterations: int
    residual: float
    solves: int
    tol: float
    converged: bool
    fallback: str | None = None


class ShardedRows:
    """A = [A_0; A_1; …] with this rank's rows A_p (A_p S for MinNorm: the problem applies S).

    A local product that raises is kept and reported through the flag of the next collective, so that every
    rank leaves the solve together instead of waiting for this one.
    """

    def __init__(self, comm: Communicator, problem: Problem) -> None:
        self.comm, self.problem = comm, problem
        self.error: BaseException | None = None

    def rows(self, x: Tensor) -> Tensor:
        """A_p x for a replicated x (local, no communication)."""
        if self.error is None:
            try:
                return self.problem.a_matvec(x)
            except Exception as exc:  # noqa: BLE001 -- reported with the next collective
                self.error = exc
        return torch.zeros(self.problem.r, dtype=x.dtype, device=x.device)

    def cols(self, y: Tensor) -> Tensor:
        """Aᵀy = Σ_p A_pᵀ y_p: one all-reduce of d numbers (plus an error flag)."""
        return self.cols_and_sums(y)[0]

    def cols_and_sums(self, y: Tensor, extra: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(Aᵀy, Σ_p extra_p) in one all-reduce; ``extra`` is a short vector of local partial sums."""
        d = self.problem.d
        k = 0 if extra is None else extra.numel()
        buffer = torch.zeros(d + 1 + k, dtype=y.dtype, device=y.device)
        if self.error is None:
            try:
                buffer[:d] = self.problem.at_matvec(y)
                if extra is not None:
                    buffer[d + 1 :] = extra
            except Exception as exc:  # noqa: BLE001 -- reported on every rank by agree() below
                self.error = exc
        if self.error is not None:
            buffer.zero_()
            buffer[d] = 1
        self.comm.all_reduce(buffer)
        self._check(float(buffer[d]))
        return buffer[:d], buffer[d + 1 :]

    def sharded_dot(self, a: Tensor, b: Tensor) -> Tensor:
        """⟨a, b⟩ for vectors sharded by rank: one all-reduce of the number and the error flag."""
        buffer = torch.stack([a @ b, torch.zeros((), dtype=a.dtype, device=a.device)])
        if self.error is not None:
            buffer[0], buffer[1] = 0.0, 1.0
        self.comm.all_reduce(buffer)
        self._check(float(buffer[1]))
        return buffer[0]

    def _check(self, flag: float) -> None:
        if flag != 0.0:
            self.comm.agree(self.error, "a matrix-free product (Krylov iteration)")


def cg(
    apply: Callable[[Tensor], tuple[Tensor, Tensor]],
    b: Tensor,
    dot: Callable[[Tensor, Tensor], Tensor],
    tol: float,
    max_iter: int,
    diverge: bool = False,
) -> tuple[Tensor, int, float]:
    """x ≈ M⁺b for PSD M and b in its range. Returns (x, products used, recomputed relative residual).

    ``apply(p)`` returns (Mp, pᵀMp), so that the curvature can travel with the product's own all-reduce.
    With ``diverge``, stops early, unconverged, when the residual grows DIVERGENCE times above ‖b‖: CG on a
    singular system whose right-hand side leaves the range does that instead of converging.
    """
    x = torch.zeros_like(b)
    b_norm = float(dot(b, b)) ** 0.5
    if b_norm == 0.0:
        return x, 0, 0.0
    used, residual = 0, 1.0
    r = b.clone()
    while used < max_iter:
        p = r.clone()
        rr = float(dot(r, r))
        while used < max_iter:
            mp, curvature = apply(p)
            used += 1
            if not float(curvature) > 0:  # b has a part outside the range, or rounding: recompute, restart
                break
            step = rr / float(curvature)
            x = x + step * p
            r = r - step * mp
            rr_new = float(dot(r, r))
            if rr_new**0.5 <= tol * b_norm:
                break
            if diverge and rr_new > (DIVERGENCE * b_norm) ** 2:  # b is not in the range of M
                return x, used, rr_new**0.5 / b_norm
            p = r + (rr_new / rr) * p
            rr = rr_new
        r = b - apply(x)[0]
        used += 1
        residual = float(dot(r, r)) ** 0.5 / b_norm
        if residual <= tol:
            break
    return x, used, residual


class ShardedKrylovFactorization(Factorization):
    """G = AᵀA with rows sharded over ranks, "factorised" as CG solves: the engine's inverses apply unchanged.

    ``pinv``, ``complement`` and ``damped`` answer the :class:`Factorization` products with the solves of the
    module docstring; the records since :meth:`begin` give the certificate. The rank is not known (None).
    """

    rank = None

    def __init__(self, op: ShardedRows, system: str, tol: float, max_iter: int) -> None:
        self.op, self.preferred, self.tol, self.max_iter = op, system, tol, max_iter
        self.begin()

    def begin(self) -> None:
        self.system = self.preferred
        self.iterations, self.solves, self.residual = 0, 0, 0.0
        self.fallback: str | None = None

    def _solve(self, apply, b: Tensor, dot, tentative: bool = False) -> Tensor | None:
        x, used, residual = cg(apply, b, dot, self.tol, self.max_iter, diverge=tentative)
        self.iterations += used
        if tentative and not residual <= self.tol:
            return None
        self.solves += 1
        self.residual = max(self.residual, residual)
        return x

    def _kernel_solve(self, b: Tensor, damping: float = 0.0, tentative: bool = False) -> Tensor | None:
        """(K + λI)⁺ b for sharded b; None if ``tentative`` and it did not converge."""

        def apply(y: Tensor) -> tuple[Tensor, Tensor]:
            # yᵀ(K + λI)y = ‖Aᵀy‖² + λ‖y‖²: ‖y‖² rides along in the all-reduce of Aᵀy.
            w, sums = self.op.cols_and_sums(y, (y @ y).reshape(1))
            return self.op.rows(w) + damping * y, w @ w + damping * sums[0]

        return self._solve(apply, b, self.op.sharded_dot, tentative)

    def _kernel_pinv(self, b: Tensor, damping: float = 0.0) -> Tensor:
        y = self._kernel_solve(b, damping)
        assert y is not None
        return y

    def _gram_pinv(self, b: Tensor, damping: float = 0.0) -> Tensor:
        """(G + λI)⁺ b for replicated b."""

        def apply(x: Tensor) -> tuple[Tensor, Tensor]:
            gx = self.op.cols(self.op.rows(x)) + damping * x
            return gx, x @ gx

        x = self._solve(apply, b, lambda u, w: u @ w)
        assert x is not None
        return x

    def _projector(self, x: Tensor) -> Tensor:
        """P x = G⁺G x, the projection onto the row space of A."""
        if self.system == "kernel":
            return self.op.cols(self._kernel_pinv(self.op.rows(x)))
        return self._gram_pinv(self.op.cols(self.op.rows(x)))

    def complement(self, x: Tensor) -> Tensor:
        """(I − P) x, the part of x in ker A, projected twice: one pass leaves tol·‖x‖ in the row space
        (which J maps into the pushforward), the second tol²·‖x‖."""
        once = x - self._projector(x)
        return once - self._projector(once)

    def pinv(self, grad: Tensor, c: Tensor | None) -> Tensor:
        """A⁺c when c is given (∇ = Aᵀc), else G⁺∇ = A⁺y with y = (Aᵀ)⁺∇ = K⁺(A∇)."""
        if c is None:
            # Two consistent solves: y = K⁺(A∇) (A∇ lies in range K), then G v = Aᵀy (Aᵀy lies in range G).
            # Pseudo-inverting twice on one operator (K⁺K⁺A∇) would amplify the rounding in its null space.
            return self._gram_pinv(self.op.cols(self._kernel_pinv(self.op.rows(grad))))
        if self.system == "kernel":
            y = self._kernel_solve(c, tentative=True)
            if y is not None:
                return self.op.cols(y)
            # c has a part outside range K (A is rank deficient): G v = Aᵀc is consistent.
            self.system, self.fallback = "gram", "c is not in the range of K (A is rank deficient)"
        return self._gram_pinv(self.op.cols(c))

    def damped(self, grad: Tensor, c: Tensor | None, damping: float) -> Tensor:
        """(G + λI)⁻¹∇: Aᵀ(K + λI)⁻¹c on the kernel system when ∇ = Aᵀc, else CG on G + λI."""
        if self.system == "kernel" and c is not None:
            return self.op.cols(self._kernel_pinv(c, damping))
        self.system = "gram"
        return self._gram_pinv(grad, damping)

    def certificate(self) -> Certificate:
        """How the solves since :meth:`begin` ended."""
        converged = self.residual <= self.tol
        return Certificate(
            self.system, self.iterations, self.residual, self.solves, self.tol, converged, self.fallback
        )

    def info(self) -> SolveInfo:
        return {
            "iterations": self.iterations,
            "residual": self.residual,
            "converged": self.residual <= self.tol,
        }
