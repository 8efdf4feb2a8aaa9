"""Structured Krylov route: v = G⁻∇ from the layer structure with no r×r or r×d matrix, and a certificate.

The per-layer factors (layer inputs and backpropagated signals, ``emit_factors``) give products K y (about the
cost of one JVP and one VJP of the batch), columns of K (far cheaper) and its diagonal. ``MatrixFreeKernel``
turns those into K⁺ and (K + λI)⁻¹ (pivoted Cholesky preconditioner, kernel LSQR with a Ritz watch that keeps
the Moore–Penrose cutoff, or the complete factorisation when K's numerical rank is small). The solves run in
float64 whatever the model's dtype (r-vectors only; products use the model's factors); v = Aᵀy by one VJP.

The formulas are the structured route's (``_structured``): Moore–Penrose v = Aᵀ K⁺ c when ∇z L = B c, else
Aᵀ K⁺² A∇; GInverse adds P U∇ + V P∇ with P x = x − Aᵀ K⁺ A x; Damped v = Aᵀ (K + λI)⁻¹ c, else
Aᵀ w + ∇/λ with w = (K + λI)⁻¹y₀ − y₀/λ, y₀ = K⁺A∇. MinNorm needs the weighted kernel A h⁻¹ Aᵀ, which the
layer formulas do not give: refused.

Certificate (``info["certificate"]``): the relative residual ‖A v − c‖/‖c‖ measured with the true A through the
pushforward J v (returned anyway), the products with K, the preconditioner's rank and whether it was complete.
Iterative refinement against that residual runs when the kernel solve met its tolerance but the pushforward
residual did not; a result that still misses the tolerance raises. The layered products are checked against the
pushforward too (coupled examples or parameters used outside their modules make them wrong): a mismatch raises
``StructuredUnsupported`` so that ``auto`` falls back.
"""

from __future__ import annotations

import torch
from torch import Tensor

from natgrad._routes._problem import Problem
from natgrad._routes._structured import StructuredUnsupported
from natgrad.linalg import Damped, GInverse, Inverse, MinNorm, MoorePenrose
from natgrad.linalg._matrix_free_kernel import KernelSolveError, MatrixFreeKernel
from natgrad.linalg._precision import kernel_rtol
from natgrad.models import ModuleRecord
from natgrad.models.structured import emit_factors, factor_for

WORK = torch.float64
DEFAULT_RANK = 256  # first preconditioner rank; doubled on demand up to what the memory budget allows
REFINEMENTS = 2


def default_tol(dtype: torch.dtype) -> float:
    """Default certificate tolerance on ‖A v − c‖/‖c‖: 1e-10 in float64, 1e-5 in lower precision."""
    return 1e-10 if torch.finfo(dtype).eps < 1e-10 else 1e-5


def max_preconditioner_rank(r: int, budget: int, held: int) -> int:
    """Pivots whose float64 factor (r × ℓ, plus a block of columns and the eigenbasis) fits what is left."""
    return max(1, min(r, (budget - held) // max(1, 3 * 8 * r)))


def solve_structured_krylov(
    problem: Problem,
    inverse: Inverse,
    record: ModuleRecord,
    params: dict[str, Tensor],
    *,
    tol: float,
    max_iter: int,
    budget: int,
    rank: int | None = None,
) -> tuple[Tensor, int | None, dict, Tensor]:
    """v = G⁻∇ matrix-free from the layer structure. Returns (v, rank or None, info, J v).

    Raises:
        StructuredUnsupported: the model is not one the layer formulas describe (auto falls back).
        ValueError: MinNorm.
        RuntimeError (``KernelSolveError``): the tolerance or the cutoff could not be certified.
    """
    if isinstance(inverse, MinNorm):
        raise ValueError(
            "natural_gradient: method='structured-krylov' does not support MinNorm (it needs the weighted kernel "
            "A h⁻¹ Aᵀ, which the layer formulas do not give); use method='structured' or 'dual'"
        )
    try:
        return _attempt(problem, inverse, record, params, tol, max_iter, budget, rank, check_outside=False)
    except _LayeredMismatch:
        pass
    try:
        return _attempt(problem, inverse, record, params, tol, max_iter, budget, rank, check_outside=True)
    except _LayeredMismatch as error:
        raise StructuredUnsupported(str(error)) from error


def _attempt(problem, inverse, record, params, tol, max_iter, budget, rank, check_outside: bool):
    grad, z = problem.grad, problem.lin.z
    try:
        factors, context = emit_factors(
            record.module, record.args, factor_for(problem.metric, z), check_outside=check_outside
        )
    except (ValueError, TypeError) as error:
        raise StructuredUnsupported(str(error)) from error
    if factors.rows_count != problem.r:
        raise StructuredUnsupported(f"the layer factors have r = {factors.rows_count}, expected {problem.r}")
    names = list(params)
    try:
        mp = MoorePenrose() if isinstance(inverse, Damped) else inverse
        mp = mp if isinstance(mp, MoorePenrose) else mp.moore_penrose
        rtol = kernel_rtol(mp, grad.dtype, problem.r, problem.d)
        model_dtype = factors.dtype

        def matvec(y: Tensor) -> Tensor:
            return factors.matmul(y.to(model_dtype)).to(WORK)

        kernel = MatrixFreeKernel(
            matvec,
            lambda index: factors.columns(index).to(WORK),
            factors.diagonal().to(WORK),
            rtol,
            tol=tol,
            max_iter=max_iter,
            rank=DEFAULT_RANK if rank is None else rank,
            max_rank=max_preconditioner_rank(problem.r, budget, factors.nbytes()),
            factor_eps=torch.finfo(model_dtype).eps,
        )

        def at_matvec(y: Tensor) -> Tensor:
            rows = context.vjp(y.to(model_dtype))
            return torch.cat([rows[k].reshape(-1) for k in names])

        def a_matvec(x: Tensor) -> Tensor:
            return problem.metric.factor_t_matmul(problem.lin.jvp(x)).to(WORK)

        # A generic probe first: the solve's own residual cannot see a layer kernel that is wrong only along
        # directions the solve does not weigh.
        gen = torch.Generator().manual_seed(0)
        probe = torch.randn(problem.r, generator=gen, dtype=WORK).to(z.device)
        _check_layered(matvec, probe, a_matvec(at_matvec(probe)), kernel, torch.finfo(grad.dtype).eps)
        try:
            v, jv, info = _solve(problem, inverse, kernel, at_matvec, a_matvec, matvec, tol)
        except KernelSolveError as error:
            message = str(error)
            prefix = "" if message.startswith("natural_gradient:") else "natural_gradient: "
            raise KernelSolveError(prefix + message) from None
        info["kernel_routes"] = dict(factors.routes)
        info["rtol"] = rtol
        complete = kernel.partial.complete
        rank_out = None
        if complete and not isinstance(inverse, Damped):
            rank_out = next((s["rank"] for s in kernel.record.solves if "rank" in s), None)
        return v, rank_out, info, jv
    finally:
        context.release()


def _solve(problem, inverse, kernel: MatrixFreeKernel, at_matvec, a_matvec, layered, tol: float):
    grad, c = problem.grad, problem.c
    c_work = None if c is None else c.to(WORK)
    a_grad = a_matvec(grad) if c is None else None
    lam = float(inverse.damping) if isinstance(inverse, Damped) else None

    def coefficients(rhs: Tensor) -> Tensor:
        """y for the right-hand side in c-form: K⁺ rhs, or (K + λI)⁻¹ rhs when damped."""
        return kernel.pinv(rhs) if lam is None else kernel.damped(rhs, lam)

    if c_work is not None:
        y = coefficients(c_work)
        shift = None
    elif lam is None:
        y = kernel.pinv(kernel.pinv(a_grad))
        shift = None
    else:
        y0 = kernel.pinv(a_grad)
        y = kernel.damped(y0, lam) - y0 / lam
        shift = grad / lam
    v = at_matvec(y) + (shift if shift is not None else 0)
    jv = problem.lin.jvp(v)
    certificate: dict = {"refinements": 0, "residual": None}
    if c_work is not None:
        target = c_work
        for attempt in range(REFINEMENTS + 1):
            av = problem.metric.factor_t_matmul(jv).to(WORK)
            _check_layered(layered, y, av, kernel, torch.finfo(problem.grad.dtype).eps)
            residual_vec = target - av - (lam * y if lam is not None else 0)
            residual = float(
                torch.linalg.vector_norm(residual_vec) / torch.linalg.vector_norm(target).clamp_min(1e-300)
            )
            certificate["residual"] = residual
            if residual <= tol or attempt == REFINEMENTS or (lam is None and kernel.partial.complete):
                break
            # Iterative refinement against the pushforward residual: y += K⁺ (c − A v) (damped: the shifted form)
            y = y + coefficients(residual_vec)
            v = at_matvec(y)
            jv = problem.lin.jvp(v)
            certificate["refinements"] = attempt + 1
        if residual > tol and not (lam is None and kernel.partial.complete):
            raise KernelSolveError(
                f"natural_gradient: method='structured-krylov' reached a pushforward residual ‖Av − c‖/‖c‖ = "
                f"{residual:.3g} > tol {tol:.3g} after {certificate['refinements']} refinements; loosen tol, raise "
                "max_iter or memory_budget, or use method='structured'"
            )
    if isinstance(inverse, GInverse):

        def complement(x: Tensor) -> Tensor:
            """(I − G⁺G) x = x − Aᵀ K⁺ A x."""
            return x - at_matvec(kernel.pinv(a_matvec(x)))

        if inverse.U is not None:
            v = v + complement(inverse.U @ grad)
        if inverse.V is not None:
            v = v + inverse.V @ complement(grad)
        jv = problem.lin.jvp(v)
    certificate.update(
        products=kernel.record.products,
        column_blocks=kernel.record.column_blocks,
        preconditioner_rank=kernel.partial.rank,
        complete_factorisation=kernel.partial.complete,
    )
    info = {"consistent": c is not None, "certificate": certificate, "kernel_solves": kernel.record.solves}
    return v, jv, info


def _check_layered(layered, y: Tensor, av: Tensor, kernel: MatrixFreeKernel, eps: float) -> None:
    """K y from the layer factors must equal A(Aᵀy) measured through the pushforward (up to rounding)."""
    mismatch = float(torch.linalg.vector_norm(layered(y) - av))
    scale = kernel.largest * float(torch.linalg.vector_norm(y)) + float(torch.linalg.vector_norm(av))
    if mismatch > eps**0.5 * scale:
        raise _LayeredMismatch(
            f"the layer kernel does not reproduce A Aᵀ (relative mismatch {mismatch / max(scale, 1e-300):.3g}); "
            "the model likely couples examples or uses parameters outside the modules that register them"
        )


class _LayeredMismatch(Exception):
    """The layer factors disagree with products by the true A."""
