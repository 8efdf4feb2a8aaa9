"""Structured route: K = AAᵀ assembled layer by layer from the module (never forming J or A), v = Aᵀy by VJPs.

Needs phi from ``from_module`` (the kernel reads layer inputs and backpropagated signals, which a bare callable
does not expose). Every inverse is a formula in K⁺ and (K + λI)⁻¹ (a certified Cholesky factor when the cutoff
keeps full rank, else eigh: see ``_kernel_inverse``), products A x = Bᵀ J x (one JVP) and Aᵀ y = Jᵀ B y (one VJP):

* Moore–Penrose: v = Aᵀ K⁺ c when ∇z L = Bc, else v = Aᵀ K⁺² A∇.
* GInverse: v = G⁺∇ + P U∇ + V P∇ with the kernel projector P x = (I − G⁺G) x = x − Aᵀ K⁺ A x.
* Damped: v = Aᵀ (K + λI)⁻¹ c, else v = Aᵀ w + ∇/λ with w = (K + λI)⁻¹y₀ − y₀/λ, y₀ = K⁺A∇.
* MinNorm needs the weighted kernel A h⁻¹ Aᵀ, which the layer formulas do not give: this inverse materialises
  A and runs the dense dual route (``info["fallback"] == "dual"``); the result is the same.

Every result is checked a posteriori against the true A through the pushforward J v the caller needs anyway.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from natgrad._routes._dense import solve_dense
from natgrad._routes._kernel_inverse import KernelInverse
from natgrad._routes._problem import Problem
from natgrad.linalg import Damped, GInverse, Inverse, MinNorm, MoorePenrose
from natgrad.models import ModuleRecord
from natgrad.models._module import structured_obstacle
from natgrad.models.structured import factor_for, structured_kernel


class StructuredUnsupported(Exception):
    """The structured route cannot handle this phi or model; the message says why."""


def unsupported_reason(record: ModuleRecord | None, params: object, z: Tensor | None = None) -> str | None:
    """Why the structured route cannot run on (phi, params), or None when it can (checks before any work).

    ``z`` (the model output) is checked for a batch axis when given.
    """
    if record is None:
        return "phi is a plain callable; the structured route needs phi from ng.from_module(module, inputs)"
    obstacle = structured_obstacle(record)
    if obstacle is not None:
        return obstacle
    module = record.module
    trainable = {k: p for k, p in module.named_parameters() if p.requires_grad}
    if not isinstance(params, dict) or set(params) != set(trainable):
        return "params must be the dict returned by ng.from_module (the module's trainable parameters)"
    for name, value in params.items():
        own = trainable[name]
        same = value.shape == own.shape and value.dtype == own.dtype and value.device == own.device
        if not same or not (value.data_ptr() == own.data_ptr() or torch.equal(value, own.detach())):
            return (
                f"params[{name!r}] differs from the module's parameter; the structured route reads the "
                "module itself, so update the module's parameters in place (or call ng.from_module again)"
            )
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and (sub.training or sub.running_mean is None):
            return (
                f"{type(sub).__name__} {name!r} normalises with batch statistics (training mode or "
                "track_running_stats=False), which couples the examples; call model.eval() to use running statistics"
            )
    if z is not None and z.dim() == 0:
        return "the model output must have a leading batch axis (N, ...), got a scalar"
    return None


class _KernelMismatch(Exception):
    """The layer kernel disagrees with products by A (see ``_verify``)."""


def _verify(problem: Problem, kernel: Tensor, pairs: list[tuple[Tensor, Tensor, Tensor]]) -> None:
    """Check K against the true A: for each (y, K y as used, A Aᵀ y computed by a VJP and a JVP) they must agree.

    The first pair is the solve's own: y with the returned v = Aᵀy (+ ∇/λ), A v measured through the
    pushforward J v the caller needs anyway. It proves the result on its own when the solve needed no cutoff:
    with K y = c (Cholesky) it says A v = c with v in the row space of A, so v = A⁺c = G⁺∇; with
    (K + λI) y = c it says v = Aᵀ(AAᵀ + λI)⁻¹c = (G + λI)⁻¹∇. Otherwise (eigh with a cutoff, or ∇ outside
    the range of Aᵀ) a kernel that is wrong only where the solve does not look would pass, so a generic probe
    is added (c, whose Aᵀc = ∇ is known, or a fixed random vector). Examples coupled through the batch (other
    than BatchNorm, refused earlier) or parameters used outside the modules that register them make the layer
    formulas miss terms. Rounding of K y is at most about eps·‖K‖·‖y‖, which sets the scale.
    """
    norm_k = torch.linalg.matrix_norm(kernel)
    for y, layered, direct in pairs:
        mismatch = float(torch.linalg.vector_norm(direct - layered))
        scale = float(norm_k * torch.linalg.vector_norm(y) + torch.linalg.vector_norm(direct))
        if mismatch > torch.finfo(kernel.dtype).eps ** 0.5 * scale:
            raise _KernelMismatch(
                f"the layer kernel does not reproduce A Aᵀ (relative mismatch {mismatch / scale:.3g}); the model "
                "likely couples examples or uses parameters outside the modules that register them"
            )


def solve_structured(
    problem: Problem, inverse: Inverse, record: ModuleRecord, params: dict[str, Tensor], chunk: int
) -> tuple[Tensor, int, dict, Tensor]:
    """v = G⁻∇ through the structured kernel. Returns (v, rank, info, J v); raises StructuredUnsupported.

    The kernel is first built trusting the layer formulas; if the a posteriori check fails it is rebuilt
    with the search for parameters used outside their modules (which get whole-model rows), and checked again.
    """
    if isinstance(inverse, MinNorm):
        v, rank, info = solve_dense(problem, inverse, "dual", chunk)
        return v, rank, {**info, "fallback": "dual"}, problem.lin.jvp(v)
    try:
        return _solve(problem, inverse, record, params, check_outside=False)
    except _KernelMismatch:
        pass
    try:
        return _solve(problem, inverse, record, params, check_outside=True)
    except _KernelMismatch as error:
        raise StructuredUnsupported(str(error)) from error


def _solve(
    problem: Problem, inverse: Inverse, record: ModuleRecord, params: dict[str, Tensor], check_outside: bool
) -> tuple[Tensor, int, dict, Tensor]:
    grad, c, z = problem.grad, problem.c, problem.lin.z
    try:
        with record.calling():  # the module's kwargs and output selection, as in phi
            kernel, context = structured_kernel(
                record.module, record.args, factor_for(problem.metric, z), check_outside=check_outside
            )
    except (ValueError, TypeError) as error:
        raise StructuredUnsupported(str(error)) from error
    if kernel.shape != (problem.r, problem.r):
        raise StructuredUnsupported(
            f"the layer kernel has shape {tuple(kernel.shape)}, expected ({problem.r}, {problem.r})"
        )
    names = list(params)

    def at_matvec(y: Tensor) -> Tensor:
        """Aᵀ y = Jᵀ B y by one VJP, flattened in the order of ``params``."""
        rows = context.vjp(y)
        return torch.cat([rows[k].reshape(-1) for k in names])

    def probe() -> tuple[Tensor, Tensor, Tensor]:
        """(w, K w, A Aᵀ w) for a generic w: c (Aᵀc = ∇ is known) or a fixed random vector."""
        if c is not None:
            return c, kernel @ c, problem.a_matvec(grad)
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(problem.r, generator=gen, dtype=torch.float64).to(kernel.dtype).to(kernel.device)
        return w, kernel @ w, problem.a_matvec(at_matvec(w))

    def own(y: Tensor, jv: Tensor, shift: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(y, K y (+ shift), Bᵀ J v) for the returned v = Aᵀy (+ ∇/λ): the residual of the solve."""
        layered = kernel @ y if shift is None else kernel @ y + shift
        return y, layered, problem.metric.factor_t_matmul(jv)

    try:
        mp = MoorePenrose() if isinstance(inverse, Damped) else inverse
        mp = mp if isinstance(mp, MoorePenrose) else mp.moore_penrose
        rtol = mp.resolve_rtol(grad.dtype, problem.r, problem.d)
        kinv = KernelInverse(kernel, rtol)
        info: dict = {
            "consistent": c is not None,
            "kernel_routes": dict(context.routes),
            "kernel_solve": kinv.method,
        }
        a_grad = problem.a_matvec(grad) if c is None else None
        if isinstance(inverse, Damped):
            lam = float(inverse.damping)
            if c is not None:
                y = kinv.damped(c, lam)
                v = at_matvec(y)
            else:
                y = kinv.damped_coefficients(a_grad, lam)
                v = at_matvec(y) + grad / lam
            jv = problem.lin.jvp(v)
            checks = [own(y, jv, None if c is not None else a_grad / lam)]
            _verify(
                problem, kernel, checks if c is not None or kinv.method == "cholesky" else [*checks, probe()]
            )
            return v, kinv.rank, info, jv
        info["rtol"] = rtol
        # G⁺∇ = Aᵀ K⁺ c when ∇ = Aᵀc, else Aᵀ K⁺² A∇ (G⁺ = A⁺A⁺ᵀ with A⁺ = AᵀK⁺)
        y = kinv.pinv(c) if c is not None else kinv.pinv(kinv.pinv(a_grad))
        v = at_matvec(y)
        jv = problem.lin.jvp(v)
        checks = [own(y, jv)]
        _verify(
            problem, kernel, checks if c is not None and kinv.method == "cholesky" else [*checks, probe()]
        )
        if isinstance(inverse, GInverse):

            def complement(x: Tensor) -> Tensor:
                """(I − G⁺G) x = x − Aᵀ K⁺ A x on the retained eigenpairs."""
                return x - at_matvec(kinv.pinv(problem.a_matvec(x)))

            if inverse.U is not None:
                v = v + complement(inverse.U @ grad)
            if inverse.V is not None:
                v = v + inverse.V @ complement(grad)
            jv = problem.lin.jvp(v)
        return v, kinv.rank, info, jv
    finally:
        context.release()
