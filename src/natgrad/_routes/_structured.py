"""Structured route: K = AAᵀ assembled layer by layer from the module (never forming J or A), v = Aᵀy by VJPs.

Needs phi from ``from_module`` (the kernel reads layer inputs and backpropagated signals, which a bare callable
does not expose). Every inverse is a formula in the eigen-decomposition of K, products A x = Bᵀ J x (one JVP)
and Aᵀ y = Jᵀ B y (one VJP):

* Moore–Penrose: v = Aᵀ K⁺ c when ∇z L = Bc, else v = Aᵀ K⁺² A∇.
* GInverse: v = G⁺∇ + P U∇ + V P∇ with the kernel projector P x = (I − G⁺G) x = x − Aᵀ K⁺ A x.
* Damped: v = Aᵀ (K + λI)⁻¹ c, else v = Aᵀ w + ∇/λ with w from the same eigenpairs.
* MinNorm needs the weighted kernel A h⁻¹ Aᵀ, which the layer formulas do not give: this inverse materialises
  A and runs the dense dual route (``info["fallback"] == "dual"``); the result is the same.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from natgrad._routes._dense import (
    damped_kernel_coefficients,
    kernel_coefficients,
    kernel_eigh,
    solve_dense,
)
from natgrad._routes._problem import Problem
from natgrad.linalg import Damped, GInverse, Inverse, MinNorm, MoorePenrose
from natgrad.models import ModuleRecord
from natgrad.models.structured import factor_for, structured_kernel


class StructuredUnsupported(Exception):
    """The structured route cannot handle this phi or model; the message says why."""


def unsupported_reason(record: ModuleRecord | None, params: object, z: Tensor | None = None) -> str | None:
    """Why the structured route cannot run on (phi, params), or None when it can (checks before any work).

    ``z`` (the model output) is checked for a batch axis when given.
    """
    if record is None:
        return "phi is a plain callable; the structured route needs phi from ng.from_module(module, inputs)"
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


def _a_matvec(problem: Problem, x: Tensor) -> Tensor:
    return problem.metric.factor_t_matmul(problem.lin.jvp(x))


def _check_kernel(problem: Problem, kernel: Tensor, at_matvec) -> None:
    """A(Aᵀy) must equal K y for a fixed random probe y: catches models that break the kernel's assumptions.

    Examples coupled through the batch (other than BatchNorm, refused earlier) or parameters used outside the
    modules that register them make the layer formulas miss terms; two products expose that.
    """
    probe = torch.randn(problem.r, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = probe.to(dtype=kernel.dtype, device=kernel.device)
    direct, layered = _a_matvec(problem, at_matvec(y)), kernel @ y
    mismatch = float(torch.linalg.vector_norm(direct - layered))
    scale = float(torch.linalg.vector_norm(direct) + torch.linalg.vector_norm(layered))
    if mismatch > torch.finfo(kernel.dtype).eps ** 0.5 * scale:
        raise StructuredUnsupported(
            f"the layer kernel does not reproduce A Aᵀ (relative mismatch {mismatch / scale:.3g}); the model "
            "likely couples examples or uses parameters outside the modules that register them"
        )


def solve_structured(
    problem: Problem, inverse: Inverse, record: ModuleRecord, params: dict[str, Tensor], chunk: int
) -> tuple[Tensor, int, dict]:
    """v = G⁻∇ through the structured kernel. Returns (v, rank, info); raises StructuredUnsupported."""
    grad, c, z = problem.grad, problem.c, problem.lin.z
    if isinstance(inverse, MinNorm):
        v, rank, info = solve_dense(problem, inverse, "dual", chunk)
        return v, rank, {**info, "fallback": "dual"}
    try:
        kernel, context = structured_kernel(record.module, record.args, factor_for(problem.metric, z))
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

    mp = MoorePenrose() if isinstance(inverse, Damped) else inverse
    mp = mp if isinstance(mp, MoorePenrose) else mp.moore_penrose
    rtol = mp.resolve_rtol(grad.dtype, problem.r, problem.d)
    evals, U, keep = kernel_eigh(kernel, rtol)
    info: dict = {"consistent": c is not None, "kernel_routes": dict(context.routes)}
    a_grad = _a_matvec(problem, grad) if c is None else None
    try:
        _check_kernel(problem, kernel, at_matvec)
        if isinstance(inverse, Damped):
            lam = float(inverse.damping)
            if c is not None:
                y = U @ ((U.T @ c) / (evals.clamp_min(0) + lam))
                v = at_matvec(y)
            else:
                y = damped_kernel_coefficients(evals, U, keep, a_grad, lam)
                w = at_matvec(y)
                v = w + grad / lam
            return v, int(keep.sum()), info
        info["rtol"] = rtol
        y = kernel_coefficients(evals, U, keep, c, a_grad)
        v = at_matvec(y)
        if isinstance(inverse, GInverse):

            def complement(x: Tensor) -> Tensor:
                """(I − G⁺G) x = x − Aᵀ K⁺ A x on the retained eigenpairs."""
                return x - at_matvec(kernel_coefficients(evals, U, keep, _a_matvec(problem, x), x))

            if inverse.U is not None:
                v = v + complement(inverse.U @ grad)
            if inverse.V is not None:
                v = v + inverse.V @ complement(grad)
        return v, int(keep.sum()), info
    finally:
        context.release()
