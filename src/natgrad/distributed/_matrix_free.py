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
current iterate when the recurrence claims convergence that the recomputed residual does not confirm), or
raises :class:`ConvergenceError` at ``max_iter`` products. The certificate reports the residuals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad._routes._problem import Problem
from natgrad.distributed._comm import Communicator
from natgrad.linalg import Damped, GInverse, Inverse, MinNorm

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


class ConvergenceError(RuntimeError):
    """The matrix-free strategy did not reach its tolerance; raised on every rank with the certificate."""

    def __init__(self, message: str, certificate: Certificate) -> None:
        super().__init__(message)
        self.certificate = certificate


class ShardedRows:
    """A = [A_0; A_1; …] with this rank's rows A_p (optionally A h^{-1/2} for MinNorm)."""

    def __init__(self, comm: Communicator, problem: Problem, scale: Tensor | None) -> None:
        self.comm, self.problem, self.scale = comm, problem, scale

    def _scaled(self, x: Tensor) -> Tensor:
        if self.scale is None:
            return x
        return self.scale * x if self.scale.ndim == 1 else self.scale @ x

    def rows(self, x: Tensor) -> Tensor:
        """A_p x for a replicated x (local, no communication)."""
        return self.problem.a_matvec(self._scaled(x))

    def cols(self, y: Tensor, extra: Tensor | None = None) -> Tensor:
        """Aᵀy = Σ_p A_pᵀ y_p: one all-reduce of d numbers, plus an error flag and ``extra`` (summed too)."""
        return self.cols_and_sums(y, extra)[0]

    def cols_and_sums(self, y: Tensor, extra: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(Aᵀy, Σ_p extra_p) in one all-reduce; ``extra`` is a short vector of local partial sums."""
        error: BaseException | None = None
        d = self.problem.d
        k = 0 if extra is None else extra.numel()
        buffer = torch.zeros(d + 1 + k, dtype=y.dtype, device=y.device)
        try:
            buffer[:d] = self._scaled(self.problem.at_matvec(y))
            if extra is not None:
                buffer[d + 1 :] = extra
        except Exception as exc:  # noqa: BLE001 -- reported on every rank by agree() below
            error = exc
            buffer.zero_()
            buffer[d] = 1
        self.comm.all_reduce(buffer)
        if float(buffer[d]) != 0.0:
            self.comm.agree(error, "a matrix-free product Aᵀy")
        return buffer[:d], buffer[d + 1 :]

    def sharded_dot(self, a: Tensor, b: Tensor) -> Tensor:
        """⟨a, b⟩ for vectors sharded by rank: one all-reduced number."""
        return self.comm.all_reduce((a @ b).reshape(1))[0]


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


class MatrixFreeSolver:
    """Pseudo-inverse solves on the kernel or Gram system of :class:`ShardedRows`, with their certificate."""

    def __init__(self, op: ShardedRows, system: str, tol: float, max_iter: int, damping: float = 0.0) -> None:
        self.op, self.system, self.tol, self.max_iter, self.damping = op, system, tol, max_iter, damping
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

    def _kernel_apply(self, y: Tensor) -> tuple[Tensor, Tensor]:
        # yᵀ(K + λI)y = ‖Aᵀy‖² + λ‖y‖²: ‖y‖² rides along in the all-reduce of Aᵀy.
        w, sums = self.op.cols_and_sums(y, (y @ y).reshape(1))
        return self.op.rows(w) + self.damping * y, w @ w + self.damping * sums[0]

    def _gram_apply(self, x: Tensor) -> tuple[Tensor, Tensor]:
        gx = self.op.cols(self.op.rows(x)) + self.damping * x
        return gx, x @ gx

    def kernel_pinv(self, b: Tensor, tentative: bool = False) -> Tensor | None:
        """(K + λI)⁺ b for sharded b (λ = 0 unless damped); None if ``tentative`` and it did not converge."""
        return self._solve(self._kernel_apply, b, self.op.sharded_dot, tentative)

    def gram_pinv(self, b: Tensor) -> Tensor:
        """(G + λI)⁺ b for replicated b."""
        return self._solve(self._gram_apply, b, lambda u, w: u @ w)

    def projector(self, x: Tensor) -> Tensor:
        """P x = G⁺G x, the projection onto the row space of A."""
        if self.system == "kernel":
            return self.op.cols(self.kernel_pinv(self.op.rows(x)))
        return self.gram_pinv(self.op.cols(self.op.rows(x)))

    def complement(self, x: Tensor) -> Tensor:
        """(I − P) x, the part of x in ker A, projected twice: one pass leaves tol·‖x‖ in the row space
        (which J maps into the pushforward), the second tol²·‖x‖."""
        once = x - self.projector(x)
        return once - self.projector(once)

    def moore_penrose(self, grad: Tensor, c: Tensor | None) -> Tensor:
        """A⁺c when c is given (∇ = Aᵀc), else G⁺∇ = A⁺y with y = (Aᵀ)⁺∇ = K⁺(A∇)."""
        if c is None:
            # Two consistent solves: y = K⁺(A∇) (A∇ lies in range K), then G v = Aᵀy (Aᵀy lies in range G).
            # Pseudo-inverting twice on one operator (K⁺K⁺A∇) would amplify the rounding in its null space.
            y = self.kernel_pinv(self.op.rows(grad))
            return self.gram_pinv(self.op.cols(y))
        if self.system == "kernel":
            y = self.kernel_pinv(c, tentative=True)
            if y is not None:
                return self.op.cols(y)
            # c has a part outside range K (A is rank deficient): G v = Aᵀc is consistent.
            self.system, self.fallback = "gram", "c is not in the range of K (A is rank deficient)"
        return self.gram_pinv(self.op.cols(c))

    def certificate(self) -> Certificate:
        converged = self.residual <= self.tol
        return Certificate(
            self.system, self.iterations, self.residual, self.solves, self.tol, converged, self.fallback
        )


def solve_matrix_free(
    comm: Communicator,
    problem: Problem,
    inverse: Inverse,
    grad: Tensor,
    c: Tensor | None,
    system: str,
    tol: float,
    max_iter: int,
    call: str,
) -> tuple[Tensor, Certificate]:
    """v = G⁻∇ for the whole batch. ``problem`` holds this rank's rows; ``grad`` is the global gradient and
    ``c`` this rank's block of the global c (or None on every rank)."""
    if isinstance(inverse, Damped):
        solver = MatrixFreeSolver(
            ShardedRows(comm, problem, None), system, tol, max_iter, float(inverse.damping)
        )
        if system == "kernel" and c is not None:  # (AᵀA + λI)⁻¹Aᵀc = Aᵀ(AAᵀ + λI)⁻¹c
            v = solver.op.cols(solver.kernel_pinv(c))
        else:
            solver.system = "gram"
            v = solver.gram_pinv(grad)
    elif isinstance(inverse, MinNorm):
        h_is = inverse.inv_sqrt(call)
        solver = MatrixFreeSolver(ShardedRows(comm, problem, h_is), system, tol, max_iter)
        scaled = h_is * grad if h_is.ndim == 1 else h_is @ grad
        v_h = solver.moore_penrose(scaled, c)
        v = h_is * v_h if h_is.ndim == 1 else h_is @ v_h
    else:
        solver = MatrixFreeSolver(ShardedRows(comm, problem, None), system, tol, max_iter)
        v = solver.moore_penrose(grad, c)
        if isinstance(inverse, GInverse):
            if inverse.U is not None:
                v = v + solver.complement(inverse.U @ grad)
            if inverse.V is not None:
                v = v + inverse.V @ solver.complement(grad)
    certificate = solver.certificate()
    if not certificate.converged:
        raise ConvergenceError(
            f"{call}: strategy='matrix-free' ({certificate.system} system) stopped after "
            f"{certificate.iterations} products at relative residual {certificate.residual:.3g} > tol "
            f"{tol:.3g}; raise max_iter, loosen tol, or use strategy='kernel' (dense, with a rank cutoff)",
            certificate,
        )
    return v, certificate
