"""Structured route: K = AAᵀ assembled layer by layer from the module (never forming J or A), v = Aᵀy by VJPs.

Needs phi from ``from_module`` (the kernel reads layer inputs and backpropagated signals, which a bare callable
does not expose). The factorisation is a :class:`KernelFactorization` of the layer kernel, with products
A x = Bᵀ J x (one JVP) and Aᵀ y = Jᵀ B y (one VJP through the recorded graph). MinNorm needs the weighted
kernel A h⁻¹ Aᵀ, which the layer formulas do not give: that problem is handed to the dual route
(``info["fallback"] == "dual"``); the result is the same.

Every result is checked a posteriori against the true A through the pushforward J v the caller needs anyway.

When K fits the memory budget but the per-layer factors of all examples do not, K is assembled block by block
over chunks of examples (``models.structured._chunked``: two chunks resident, about c/2 emissions of the
factors for c chunks) and Aᵀy is formed chunk by chunk; ``info["chunked"]`` records the plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from natgrad._routes._dense import DUAL
from natgrad._routes._factorization import KernelFactorization, SolveInfo, spectral_info
from natgrad._routes._inverse import RetrySolve
from natgrad._routes._problem import Problem
from natgrad._routes._route import Route, RouteName
from natgrad._tree import Params
from natgrad.exceptions import StructuredUnsupported
from natgrad.linalg._precision import kernel_rtol
from natgrad.metrics import LocalMetric
from natgrad.metrics._base import DiagonalLocal
from natgrad.metrics._categorical import _CategoricalLocal
from natgrad.models import ModuleRecord
from natgrad.models._module import structured_obstacle
from natgrad.models.structured import (
    ChunkedAssembly,
    ChunkPlan,
    StructuredContext,
    factor_bytes,
    plan_chunks,
    structured_kernel,
)


def factor_for(local: LocalMetric, output: Tensor) -> Tensor:
    """The factor of an engine metric in the structured kernel's form.

    Per-example blocks (N, C, C) for the categorical Fisher over (N, C) logits and for diagonal metrics
    (Euclidean, Gaussian, Bernoulli, Fisher–Rao); otherwise the dense (n, r) factor B.
    """
    n_ex, per = output.shape[0], output[0].numel()
    if isinstance(local, _CategoricalLocal) and output.dim() == 2:
        return local.blocks()
    if isinstance(local, DiagonalLocal):
        return torch.diag_embed(local.root.reshape(n_ex, per))
    return local.factor()


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


def layer_factor_bytes(problem: Problem) -> int:
    """Bytes the per-layer factors of ``emit_factors`` will hold on this problem (estimated once, from shapes).

    The kernel rows are r for a per-example block factor and n (the identity kernel, then a dense n × r
    factor, also counted) otherwise.
    """
    if problem.factor_bytes is None:
        record, z = problem.record, problem.lin.z
        assert record is not None
        n, r, itemsize = z.numel(), problem.r, problem.itemsize
        blocks = factor_for(problem.metric, z).dim() == 3  # else a dense (n, r) factor
        with record.calling():
            held = factor_bytes(record.module, record.args, record.kwargs, r if blocks else n, itemsize)
        problem.factor_bytes = held + (0 if blocks else itemsize * n * r)
    return problem.factor_bytes


def _dense_factor_bytes(problem: Problem) -> int:
    """The dense n × r factor's bytes (0 for a per-example block factor), part of ``layer_factor_bytes``."""
    z = problem.lin.z
    blocks = factor_for(problem.metric, z).dim() == 3
    return 0 if blocks else problem.itemsize * z.numel() * problem.r


def _num_examples(problem: Problem) -> int:
    z = problem.lin.z
    return z.shape[0] if z.dim() > 0 else 1


def _chunked_resident(problem: Problem) -> int:
    """What the chunked assembly keeps whatever the chunk size: a dense factor D (n × r) and one r × r product."""
    dense = _dense_factor_bytes(problem)
    return dense + 8 * problem.r**2 if dense else 0


def chunk_plan(problem: Problem) -> ChunkPlan | None:
    """Chunks for the dense assembly when K fits the budget but the factors of all examples do not, else None.

    None also when not even a one-example chunk fits beside K (the route is then refused).
    """
    r, d, itemsize, budget = problem.r, problem.d, problem.itemsize, problem.budget
    kernel = STRUCTURED.memory(r, d, itemsize)
    held = layer_factor_bytes(problem)
    if kernel + held <= budget:
        return None
    examples, z = _num_examples(problem), problem.lin.z
    factor = factor_for(problem.metric, z)
    rows_per_example = factor.shape[2] if factor.dim() == 3 else z.numel() // max(1, examples)
    available = budget - kernel - _chunked_resident(problem)
    return plan_chunks(held - _dense_factor_bytes(problem), examples, rows_per_example, available)


class _KernelMismatch(Exception):
    """The layer kernel disagrees with products by A (see ``StructuredFactorization.certify``)."""


def _verify(kernel: Tensor, pairs: list[tuple[Tensor, Tensor, Tensor]], eps: float) -> None:
    """Each (y, K y as used, A Aᵀ y computed by a VJP and a JVP) must agree to rounding (``eps``: the model's)."""
    norm_k = torch.linalg.matrix_norm(kernel)
    for y, layered, direct in pairs:
        mismatch = float(torch.linalg.vector_norm(direct.to(layered.dtype) - layered))
        scale = float(norm_k * torch.linalg.vector_norm(y) + torch.linalg.vector_norm(direct))
        if mismatch > eps**0.5 * scale:
            raise _KernelMismatch(
                f"the layer kernel does not reproduce A Aᵀ (relative mismatch {mismatch / scale:.3g}); the model "
                "likely couples examples or uses parameters outside the modules that register them"
            )


class StructuredFactorization(KernelFactorization):
    """The layer kernel K of the module, its certified inverse, and Aᵀ y by VJPs of the recorded graph.

    The kernel is first built trusting the layer formulas; if the a posteriori check fails it is rebuilt with
    the search for parameters used outside their modules (which get whole-model rows), and checked again.
    """

    def __init__(self, problem: Problem) -> None:
        assert problem.record is not None
        self.problem, self.record = problem, problem.record
        self.outside_checked = False
        self._build(check_outside=False)

    def _build(self, check_outside: bool) -> None:
        problem, z = self.problem, self.problem.lin.z
        # Only StructuredUnsupported means "this model is outside the layer formulas"; any other error is a
        # bug and propagates.
        # Contracted and solved in float64 whatever the model's dtype: r ≤ a few thousand costs little, and the
        # eigenvalues then carry no float32 assembly or eigh error (see ``linalg._precision``).
        plan = chunk_plan(problem)
        context: StructuredContext | ChunkedAssembly
        if plan is None:
            with self.record.calling():  # the output selection of from_module, as in phi
                kernel, context = structured_kernel(
                    self.record.module,
                    self.record.args,
                    factor_for(problem.metric, z),
                    check_outside=check_outside,
                    dtype=torch.float64,
                    kwargs=self.record.kwargs,
                )
        else:
            context = ChunkedAssembly(
                self.record.module,
                self.record.args,
                self.record.kwargs,
                z,
                factor_for(problem.metric, z),
                plan.examples_per_chunk,
                check_outside=check_outside,
                calling=self.record.calling,
            )
            kernel = context.kernel(torch.float64)
        self.model_eps = torch.finfo(z.dtype).eps
        if kernel.shape != (problem.r, problem.r):
            context.release()
            raise StructuredUnsupported(
                f"the layer kernel has shape {tuple(kernel.shape)}, expected ({problem.r}, {problem.r})"
            )
        self.context: StructuredContext | ChunkedAssembly = context
        names = list(problem.params)

        def at_matvec(y: Tensor) -> Tensor:
            """Aᵀ y = Jᵀ B y by one VJP, flattened in the order of ``params``."""
            rows = context.vjp(y)
            return torch.cat([rows[k].reshape(-1) for k in names])

        def a_matvec(x: Tensor) -> Tensor:
            """A x = Bᵀ J x by one JVP, in the kernel's dtype."""
            return problem.a_matvec(x).to(kernel.dtype)

        # The cutoff from the assembled kernel's measured error, not 10·min(r, d)·eps (see ``linalg._precision``).
        self.rtol = kernel_rtol(problem.rtol, z.dtype, problem.r, problem.d)
        super().__init__(kernel, self.rtol, a_matvec, at_matvec)

    def pinv(self, grad: Tensor, c: Tensor | None) -> Tensor:
        return super().pinv(grad, None if c is None else c.to(self.kernel.dtype))

    def damped(self, grad: Tensor, c: Tensor | None, damping: float) -> Tensor:
        return super().damped(grad, None if c is None else c.to(self.kernel.dtype), damping)

    def _probe(self) -> tuple[Tensor, Tensor, Tensor]:
        """(w, K w, A Aᵀ w) for a generic w: c (Aᵀc = ∇ is known) or a fixed random vector."""
        last, kernel = self.last, self.kernel
        assert last is not None
        if last.c is not None:
            return last.c, kernel @ last.c, self.a(last.grad)
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(self.problem.r, generator=gen, dtype=torch.float64).to(kernel.dtype).to(kernel.device)
        return w, kernel @ w, self.a(self.at(w))

    def certify(self, v: Tensor) -> Tensor | None:
        """Check K against the true A through the returned v; returns J v.

        The first pair is the solve's own: y with the returned v = Aᵀy (+ ∇/λ), A v measured through the
        pushforward J v. It proves the result on its own when the solve needed no cutoff: with K y = c
        (Cholesky) it says A v = c with v in the row space of A, so v = A⁺c = G⁺∇; with (K + λI) y = c it says
        v = Aᵀ(AAᵀ + λI)⁻¹c = (G + λI)⁻¹∇. Otherwise (eigh with a cutoff, or ∇ outside the range of Aᵀ) a
        kernel that is wrong only where the solve does not look would pass, so a generic probe is added (c,
        whose Aᵀc = ∇ is known, or a fixed random vector). Examples coupled through the batch (other than
        BatchNorm, refused earlier) or parameters used outside the modules that register them make the layer
        formulas miss terms. Rounding of K y is at most about eps·‖K‖·‖y‖, which sets the scale.
        """
        last = self.last
        assert last is not None
        jv = self.problem.lin.jvp(v)
        checks = [(last.y, last.layered, self.problem.metric.factor_t_matmul(jv))]
        # the full-rank certificate is asked for only where the proof needs it (not for a damped solve of c)
        if last.damped:
            proven = last.c is not None or self.inverse.method == "cholesky"
        else:
            proven = last.c is not None and self.inverse.method == "cholesky"
        try:
            _verify(self.kernel, checks if proven else [*checks, self._probe()], self.model_eps)
        except _KernelMismatch as error:
            self.context.release()
            if self.outside_checked:
                raise StructuredUnsupported(str(error)) from error
            self.outside_checked = True
            self._build(check_outside=True)
            raise RetrySolve from error
        return jv

    def info(self) -> SolveInfo:
        info: SolveInfo = {
            "kernel_routes": dict(self.context.routes),
            "rtol": self.rtol,
            **spectral_info(self.inverse),
        }
        # a damped solve factorises K + λI only (``damped_solve``): K's own certificate is not run for it
        if self.last is None or not self.last.damped:
            info["kernel_solve"] = self.inverse.method
        if isinstance(self.context, ChunkedAssembly):
            info["chunked"] = self.context.info()
        return info

    def release(self) -> None:
        self.context.release()


@dataclass(frozen=True)
class StructuredRoute:
    """The layer kernel of a module from ``from_module``: K (r × r) without ever forming A."""

    name: RouteName = "structured"
    bounded: bool = True

    def memory(self, r: int, d: int, itemsize: int) -> int:
        """K (r×r, float64) and its eigenvectors, never A; the per-layer factors are ``held_memory``."""
        return 8 * 3 * r * r + itemsize * 8 * (r + d)  # K is held in float64

    def held_memory(self, problem: Problem) -> int:
        """The per-layer factors of all examples, or of two chunks when the chunked assembly is planned."""
        plan = chunk_plan(problem)
        return layer_factor_bytes(problem) if plan is None else plan.held + _chunked_resident(problem)

    def memory_note(self, problem: Problem) -> str:
        """Why the chunked assembly does not help either, for the budget error."""
        from natgrad._routes._registry import format_bytes  # the registry imports this module

        kernel = self.memory(problem.r, problem.d, problem.itemsize)
        if kernel > problem.budget:
            return f"; K (r × r, float64) and its eigenvectors alone need {format_bytes(kernel)}"
        examples = _num_examples(problem)
        if examples < 2:
            return "; the per-layer factors of a single example cannot be assembled in chunks"
        per_example = (layer_factor_bytes(problem) - _dense_factor_bytes(problem)) / examples
        return (
            "; assembling K chunk by chunk does not fit either: K and two one-example chunks of the "
            f"per-layer factors (about {format_bytes(per_example)} per example) exceed it"
        )

    def auto_rank(self, r: int, d: int) -> int | None:
        return 0 if r < d else None  # K without A: preferred whenever it applies

    def refuses(self, record: ModuleRecord | None, params: Params) -> str | None:
        return unsupported_reason(record, params)

    def supports(self, problem: Problem) -> str | None:
        return unsupported_reason(problem.record, problem.params, problem.lin.z)

    def delegate(self, problem: Problem) -> Route:
        return DUAL if problem.scaling is not None else self

    def factorize(self, problem: Problem) -> StructuredFactorization:
        return StructuredFactorization(problem)


STRUCTURED = StructuredRoute()
