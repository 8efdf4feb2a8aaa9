"""Structured Krylov route: v = G⁻∇ from the layer structure with no r×r or r×d matrix, and a certificate.

The per-layer factors (layer inputs and backpropagated signals, ``emit_factors``) give products K y (about the
cost of one JVP and one VJP of the batch), columns of K (far cheaper) and its diagonal. ``MatrixFreeKernel``
turns those into K⁺ and (K + λI)⁻¹ (pivoted Cholesky preconditioner, kernel LSQR with a Ritz watch that keeps
the Moore–Penrose cutoff, or the complete factorisation when K's numerical rank is small). The solves run in
float64 whatever the model's dtype (r-vectors only; products use the model's factors); v = Aᵀy by one VJP.

The formulas are the structured route's (``_structured``): Moore–Penrose v = Aᵀ K⁺ c when ∇z L = B c, else
Aᵀ K⁺² A∇; GInverse adds P U∇ + V P∇ with P x = x − Aᵀ K⁺ A x; Damped v = Aᵀ (K + λI)⁻¹ c, else
Aᵀ w + ∇/λ with w = (K + λI)⁻¹y₀ − y₀/λ, y₀ = K⁺A∇. MinNorm needs the weighted kernel A h⁻¹ Aᵀ, which the
layer formulas do not give: that problem is handed to the krylov route (``info["fallback"] == "krylov"``).

Certificate (``info["certificate"]``): the relative residual ‖A v − c‖/‖c‖ measured with the true A through the
pushforward J v (returned anyway), the products with K, the preconditioner's rank and whether it was complete,
and ``rounding_floor`` ≈ eps·‖A‖‖v‖/‖c‖, the residual the model's arithmetic can resolve at all: a residual read
below it certifies no more than the floor (float32 at very large r, where K is ill-conditioned), so
``certified`` is False when the floor lies above tol (the result's status is then "at_rounding_floor").
Preconditioner reuse (``_preconditioner_reuse``): ``preconditioner`` (the problem's, from an earlier
factorisation's ``reusable()``) preconditions the damped solves instead of a new pivoted Cholesky when it was
built on the same batch and its iteration count stayed low; the certificate is the same, so the answer is too.
``info["certificate"]["preconditioner"]`` says whether it was reused, how many builds ran and why.
Iterative refinement against that residual runs when the kernel solve met its tolerance but the pushforward
residual did not; a result that still misses the tolerance raises ``KernelSolveError`` (a ``ConvergenceError``).
The layered products are checked against the true A with a generic probe before any solve, and with the solve's
own y after it (coupled examples or parameters used outside their modules make them wrong): the factors are
rebuilt once with the search for outside parameters, then ``StructuredUnsupported`` lets ``auto`` fall back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from natgrad._routes._factorization import Factorization, SolveInfo
from natgrad._routes._krylov import KRYLOV
from natgrad._routes._preconditioner_reuse import (
    KernelPreconditioner,
    batch_key,
    iteration_limit,
    reuse_refusal,
)
from natgrad._routes._problem import Problem
from natgrad._routes._route import Route, RouteName
from natgrad._routes._structured import factor_for, layer_factor_bytes, unsupported_reason
from natgrad._tree import Params
from natgrad.exceptions import StructuredUnsupported
from natgrad.linalg._matrix_free_kernel import KernelSolveError, MatrixFreeKernel
from natgrad.linalg._precision import kernel_rtol
from natgrad.models import ModuleRecord
from natgrad.models.structured import KernelFactors, StructuredContext, emit_factors

WORK = torch.float64
DEFAULT_RANK = 256  # first preconditioner rank; doubled on demand up to what the memory budget allows
REFINEMENTS = 2


def max_preconditioner_rank(r: int, budget: int, held: int) -> int:
    """Pivots whose float64 factor (r × ℓ, plus a block of columns and the eigenbasis) fits what is left."""
    return max(1, min(r, (budget - held) // max(1, 3 * 8 * r)))


class StructuredKrylovFactorization(Factorization):
    """K⁺ and (K + λI)⁻¹ of the layer kernel by ``MatrixFreeKernel``; Aᵀy by VJPs of the recorded graph."""

    def __init__(self, problem: Problem) -> None:
        assert problem.record is not None
        self.problem = problem
        self._build(problem.record, check_outside=False)
        if not self._probe_agrees():
            self.context.release()
            self._build(problem.record, check_outside=True)
            if not self._probe_agrees():
                self.context.release()
                raise StructuredUnsupported(self._mismatch_message)
        self.rank: int | None = None
        self.last_jv: Tensor | None = None
        self.begin()

    def _build(self, record: ModuleRecord, check_outside: bool) -> None:
        problem, z = self.problem, self.problem.lin.z
        with record.calling():  # the output selection of from_module, as in phi
            factors, context = emit_factors(
                record.module,
                record.args,
                factor_for(problem.metric, z),
                check_outside=check_outside,
                kwargs=record.kwargs,
            )
        if factors.rows_count != problem.r:
            context.release()
            raise StructuredUnsupported(
                f"the layer factors have r = {factors.rows_count}, expected {problem.r}"
            )
        self.factors: KernelFactors = factors
        self.context: StructuredContext = context
        self.model_dtype = factors.dtype
        self.rtol = kernel_rtol(problem.rtol, self.model_dtype, problem.r, problem.d)
        self.batch = batch_key(record, problem.r, problem.metric)
        given = problem.preconditioner
        self.refusal = reuse_refusal(given, self.batch)
        self.start = given if self.refusal is None else None
        self.kernel = MatrixFreeKernel(
            self.layered,
            lambda index: factors.columns(index).to(WORK),
            factors.diagonal().to(WORK),
            self.rtol,
            tol=problem.tol,
            max_iter=problem.max_iter,
            rank=DEFAULT_RANK,
            max_rank=max_preconditioner_rank(problem.r, problem.budget, factors.nbytes()),
            factor_eps=torch.finfo(self.model_dtype).eps,
            start=None if self.start is None else (self.start.partial, self.start.preconditioner),
            start_iterations=self._start_iterations(),
            rebuild_on_pivots=self.start is None or not self.start.pivots_stale,
        )

    def _start_iterations(self) -> int | None:
        start = self.start
        if start is None:
            return None
        return 0 if start.refresh_first else start.iteration_limit

    def layered(self, y: Tensor) -> Tensor:
        """K y from the layer factors (computed in the model's dtype, returned in float64)."""
        return self.factors.matmul(y.to(self.model_dtype)).to(WORK)

    def at(self, y: Tensor) -> Tensor:
        """Aᵀ y = Jᵀ B y by one VJP, flattened in the order of ``params``."""
        rows = self.context.vjp(y.to(self.model_dtype))
        return torch.cat([rows[k].reshape(-1) for k in self.problem.params])

    def a(self, x: Tensor) -> Tensor:
        """A x = Bᵀ J x by one JVP, in float64."""
        return self.problem.a_matvec(x.to(self.model_dtype)).to(WORK)

    _mismatch_message = (
        "the layer kernel does not reproduce A Aᵀ; the model likely couples examples or uses parameters outside "
        "the modules that register them"
    )

    def _agrees(self, y: Tensor, direct: Tensor) -> bool:
        """K y from the layer factors equals A Aᵀ y measured through the true A, up to rounding."""
        mismatch = float(torch.linalg.vector_norm(self.layered(y) - direct))
        scale = self.kernel.largest * float(torch.linalg.vector_norm(y)) + float(
            torch.linalg.vector_norm(direct)
        )
        return mismatch <= torch.finfo(self.model_dtype).eps ** 0.5 * scale

    def _probe_agrees(self) -> bool:
        """A generic probe: the solve's own residual cannot see a kernel wrong only where it does not look."""
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(self.problem.r, generator=gen, dtype=WORK).to(self.problem.lin.z.device)
        return self._agrees(w, self.a(self.at(w)))

    def begin(self) -> None:
        self.certificate: dict = {
            "refinements": 0,
            "residual": None,
            "rounding_floor": None,
            "certified": None,
        }
        self.last_jv = None

    def _coefficients(self, rhs: Tensor, damping: float | None, tol: float | None = None) -> Tensor:
        return self.kernel.pinv(rhs, tol) if damping is None else self.kernel.damped(rhs, damping, tol)

    def _certified(self, c: Tensor, damping: float | None) -> Tensor:
        """v = Aᵀ y for y = K⁺c (or (K + λI)⁻¹c), refined against the pushforward residual ‖c − A v − λy‖.

        Refinement adds Aᵀδy to v (accumulated in float64) instead of recomputing Aᵀy: in the model's dtype the
        VJP's rounding is about eps·‖A‖‖y‖, which for a float32 model and an ill-conditioned K is well above
        eps·‖v‖; the correction's VJP only rounds at the size of δy.
        """
        problem, tol = self.problem, self.problem.tol
        y = self._coefficients(c, damping)
        v = self.at(y).to(WORK)
        complete = damping is None and self.kernel.partial.complete
        for attempt in range(REFINEMENTS + 1):
            jv = problem.lin.jvp(v.to(self.model_dtype))
            av = problem.metric.factor_t_matmul(jv).to(WORK)
            if not self._agrees(y, av):
                self.context.release()
                raise StructuredUnsupported(self._mismatch_message)
            residual_vec = c - av - (damping * y if damping is not None else 0)
            residual = float(
                torch.linalg.vector_norm(residual_vec) / torch.linalg.vector_norm(c).clamp_min(1e-300)
            )
            self.certificate["residual"] = residual
            # With a complete factorisation the Moore–Penrose answer is exact even when c has a part outside
            # range(A), which no v can reproduce: the residual is reported, not required.
            if residual <= tol or complete or attempt == REFINEMENTS:
                break
            # The correction only has to remove what is left (with a margin): not the full tolerance again.
            correction = self._coefficients(
                residual_vec, damping, min(0.5, 0.5 * tol / max(residual, 1e-300))
            )
            y = y + correction
            v = v + self.at(correction).to(WORK)
            self.certificate["refinements"] = attempt + 1
        if residual > tol and not complete:
            raise KernelSolveError(
                f"natural_gradient: method='structured-krylov': the matrix-free kernel solve reached a pushforward "
                f"residual ‖Av − c‖/‖c‖ = "
                f"{residual:.3g} > tol {tol:.3g} after {self.certificate['refinements']} refinements; loosen tol, "
                "raise max_iter or memory_budget, or use method='structured'"
            )
        # What the model's arithmetic can certify: the JVP of v (and v's own rounding) carry an error of about
        # eps·‖A‖‖v‖, so a measured residual below this floor is not evidence of a smaller true one (an
        # ill-conditioned float32 kernel at large r can sit far above tol while the measurement reads below it).
        floor = (
            torch.finfo(self.model_dtype).eps
            * self.kernel.largest**0.5
            * float(torch.linalg.vector_norm(v) / torch.linalg.vector_norm(c).clamp_min(1e-300))
        )
        # a complete factorisation applied the cutoff literally: its answer needs no residual certificate
        self.certificate.update(rounding_floor=floor, certified=complete or floor <= tol)
        self.last_jv = jv
        if damping is None:
            self._note_rank()
        return v.to(self.model_dtype)

    def _note_rank(self) -> None:
        """The retained rank is known when the factorisation completed (the cutoff then applied literally)."""
        if self.kernel.partial.complete:
            self.rank = next((s["rank"] for s in reversed(self.kernel.record.solves) if "rank" in s), None)

    def pinv(self, grad: Tensor, c: Tensor | None) -> Tensor:
        if c is not None:
            return self._certified(c.to(WORK), None)
        y = self.kernel.pinv(self.kernel.pinv(self.a(grad)))  # G⁺∇ = Aᵀ K⁺² A∇
        self._note_rank()
        return self.at(y)

    def complement(self, x: Tensor) -> Tensor:
        return x - self.at(self.kernel.pinv(self.a(x)))

    def damped(self, grad: Tensor, c: Tensor | None, damping: float) -> Tensor:
        if c is not None:
            return self._certified(c.to(WORK), damping)
        y0 = self.kernel.pinv(self.a(grad))
        w = self.kernel.damped(y0, damping) - y0 / damping
        return self.at(w) + grad / damping

    def certify(self, v: Tensor) -> Tensor | None:
        return self.last_jv

    def reusable(self) -> KernelPreconditioner:
        """The preconditioner the solves ran on, for a later factorisation (``preconditioner=``)."""
        kernel, start = self.kernel, self.start
        if kernel.reused and start is not None:
            last = kernel.reused_iterations if kernel.reused_iterations is not None else start.last_iterations
            return replace(start, last_iterations=last, reuses=start.reuses + 1, refresh_first=False)
        fresh = kernel.fresh_iterations
        on_pivots = kernel.greedy_builds == 0  # every build of this factorisation reused the old pivots
        greedy = start.greedy_iterations if on_pivots and start is not None else fresh
        limit = iteration_limit(greedy)
        return KernelPreconditioner(
            kernel.partial,
            kernel.preconditioner,
            self.batch,
            greedy,
            fresh,
            0,
            # a try as it is that failed: the next step goes to the pivots at once
            refresh_first=start is not None and not start.refresh_first,
            pivots_stale=on_pivots and fresh is not None and limit is not None and fresh > limit,
        )

    def _reuse_info(self) -> dict:
        """The certificate's account of the preconditioner: reused as it was, rebuilt (on its pivots), built."""
        kernel = self.kernel
        rebuilt = next((s for s in kernel.record.solves if "rebuilt" in s), None)
        return {
            "reused": kernel.reused,
            "builds": kernel.builds,
            "greedy_builds": kernel.greedy_builds,
            "on_old_pivots": bool(rebuilt and rebuilt["on_pivots"]),
            "reuses": self.start.reuses + 1 if kernel.reused and self.start is not None else 0,
            "iterations": kernel.reused_iterations if kernel.reused else kernel.fresh_iterations,
            "built_because": None if kernel.reused else (rebuilt["because"] if rebuilt else self.refusal),
        }

    def info(self) -> SolveInfo:
        kernel = self.kernel
        certificate = {
            **self.certificate,
            "products": kernel.record.products,
            "column_blocks": kernel.record.column_blocks,
            "preconditioner_rank": kernel.partial.rank,
            "complete_factorisation": kernel.partial.complete,
            "preconditioner": self._reuse_info(),
        }
        return {
            "kernel_routes": dict(self.factors.routes),
            "rtol": self.rtol,
            "certificate": certificate,
            "kernel_solves": list(kernel.record.solves),
            **(
                {}
                if kernel.preconditioner.fallback is None
                else {"spectral_fallback": kernel.preconditioner.fallback}
            ),
        }

    def release(self) -> None:
        self.context.release()


@dataclass(frozen=True)
class StructuredKrylovRoute:
    """The layer factors of a module from ``from_module``, solved matrix-free: no r×r or r×d matrix."""

    name: RouteName = "structured-krylov"
    bounded: bool = True

    def memory(self, r: int, d: int, itemsize: int) -> int:
        """r-vectors and the first float64 preconditioner (r × 256, three copies), one d-vector set; the
        per-layer factors are ``held_memory``. The preconditioner grows only within the budget."""
        return 8 * r * (16 + 3 * DEFAULT_RANK) + itemsize * 8 * d

    def held_memory(self, problem: Problem) -> int:
        return layer_factor_bytes(problem)

    def auto_rank(self, r: int, d: int) -> int | None:
        # after the dense routes, before the plain krylov route; at d ≤ r the only bounded route after primal
        return 5 if r < d else 2

    def refuses(self, record: ModuleRecord | None, params: Params) -> str | None:
        return unsupported_reason(record, params)

    def supports(self, problem: Problem) -> str | None:
        return unsupported_reason(problem.record, problem.params, problem.lin.z)

    def delegate(self, problem: Problem) -> Route:
        return KRYLOV if problem.scaling is not None else self

    def factorize(self, problem: Problem) -> StructuredKrylovFactorization:
        return StructuredKrylovFactorization(problem)


STRUCTURED_KRYLOV = StructuredKrylovRoute()
