"""The route of a step's factorisation: a damped step on a large module problem goes matrix-free.

The engine's ``auto`` factorises densely: when d ≤ r the primal route materialises A = Bᵀ J (r × d), forms
G = AᵀA and eigendecomposes it; when r < d the structured route assembles K (r × r) from the layers and
factorises it (an eigendecomposition when K is rank-deficient). Either costs about r·d·min(r, d) + min(r, d)³.
At full batch that is most of a training run: on scikit-learn's digits (r = 11,313 weighted outputs, d = 3,466
parameters) 12–17 s of CPU per step; on 300 of them (r = 2,700) 2.7 s. But the optimizer's steps are damped on
most steps (the safeguard's λ > 0), and (G + λI)⁻¹∇ is what the ``structured-krylov`` route solves best:
preconditioned CG in kernel coordinates from per-layer factors, 5–20 kernel products a step (0.35 s of CPU in
float32, 0.45 s in float64 on digits), certified by the pushforward residual ‖A v + λy − c‖/‖c‖ ≤ tol. So a
step whose inverse is ``Damped(λ)``, on a module problem (``forward`` is a φ of ``ng.from_module``, or one
`NGD.functional` call whose output it returns) with r·d·min(r, d) ≥ ``MATRIX_FREE_WORK``, is factorised by
``structured-krylov``. λ = 0 (the generalized inverse) keeps ``auto``'s choice, whose cutoff a dense
decomposition applies literally; so do a damped solve the route cannot certify (for the rest of its step) and
a model the per-layer factors do not cover; a ``method=`` other than ``"auto"`` is always obeyed.

Tolerance: the certificate measures A v through a JVP in the model's dtype, so its rounding floor is about
eps·‖A‖‖v‖/‖c‖; in float32 that reaches 1e-6 along an ill-conditioned training run (digits: 1.3e-6 at
λ = 0.011), where the engine's default 1e-6 stopped the run. The optimizer asks ``STEP_TOL`` of its
matrix-free solves: 1e-5 in float32 (the step is (G + λI)⁻¹∇ with a certified relative residual ≤ 1e-5),
the engine's default (1e-12) in float64.

Preconditioner reuse: the route's preconditioner (a pivoted Cholesky factorisation of K and its eigenbasis,
most of a damped step's cost at full batch) is handed from step to step (``preconditioner=`` in, the
factorisation's ``preconditioner`` out; NGD keeps it in its step state, not in ``state_dict``). The route uses
it for the same batch while its CG iteration count stays low, and rebuilds it otherwise; every direction is
certified by the same pushforward residual, so reuse changes the cost only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

import natgrad as ng
from natgrad.exceptions import ConvergenceError, MemoryBudgetError, NatgradError, StructuredUnsupported
from natgrad.models import module_record

# r·d·min(r, d) from which a damped step goes matrix-free. Measured (digits MLP, d = 3,466, float32, one
# thread, CPU per step over 20 default steps): batches of 64 (r = 576, 1.2e9) dense 0.08 s, matrix-free 0.06 s;
# of 128 (r = 1,152, 4.6e9) 0.30 s and 0.085 s; full batch (r = 11,313, 1.4e11) 12 s and 0.4 s.
MATRIX_FREE_WORK = 2e9
STEP_TOL = {torch.float32: 1e-5}  # other dtypes: the engine's default tolerance

Forward = Callable[[dict[str, Tensor]], Tensor]


@dataclass(frozen=True)
class ModuleCall:
    """One call of `NGD.functional`: the model, its inputs, the optimizer → module name map and the output."""

    module: torch.nn.Module
    names: Mapping[str, str]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Tensor


_RECORDER: ContextVar[list[ModuleCall] | None] = ContextVar("natgrad_optim_module_calls", default=None)


def note_call(call: ModuleCall) -> None:
    """Record a call of `NGD.functional` when a step is listening (otherwise nothing)."""
    calls = _RECORDER.get()
    if calls is not None:
        calls.append(call)


@contextmanager
def _listening() -> Iterator[list[ModuleCall]]:
    calls: list[ModuleCall] = []
    token = _RECORDER.set(calls)
    try:
        yield calls
    finally:
        _RECORDER.reset(token)


class RecordingForward:
    """``forward`` as given, remembering what its first call was: z₀ and the `NGD.functional` calls inside it."""

    def __init__(self, forward: Forward) -> None:
        self.forward = forward
        self.first: tuple[Tensor, list[ModuleCall]] | None = None

    def __getattr__(self, name: str) -> Any:  # ``natgrad_module``, ``linearize``: the forward's own
        if name in ("forward", "first"):  # not yet set (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.forward, name)

    def __call__(self, params: dict[str, Tensor]) -> Tensor:
        if self.first is not None:
            return self.forward(params)
        with _listening() as calls:
            out = self.forward(params)
        self.first = (out, calls)
        return out


@dataclass(frozen=True)
class ModuleProblem:
    """The step's problem as ``ng.from_module`` sees it: φ, its parameters, optimizer name → module name."""

    phi: Forward
    params: dict[str, Tensor]
    names: Mapping[str, str]
    output: Tensor


def module_problem(forward: Any, theta: dict[str, Tensor]) -> ModuleProblem | None:
    """The module behind the step's ``forward`` at θ, or None when there is none the structured routes could use.

    ``forward`` is a `RecordingForward` after its first call. It wraps a φ from ``ng.from_module`` (parameters named
    like the module's), or a function whose call was exactly one `NGD.functional` call returning the output
    unchanged; either way over all of the module's trainable parameters.
    """
    if not isinstance(forward, RecordingForward) or forward.first is None:
        return None
    output, calls = forward.first
    record = module_record(forward.forward)
    if record is not None:
        if set(theta) != _trainable(record.module):
            return None
        return ModuleProblem(forward.forward, theta, {name: name for name in theta}, output.detach())
    if len(calls) != 1 or calls[0].output is not output:
        return None  # several calls, or an output changed after the module's: not the module's φ
    call = calls[0]
    if set(call.names) != set(theta) or set(call.names.values()) != _trainable(call.module):
        return None
    try:
        phi, _ = ng.from_module(call.module, call.args, kwargs=call.kwargs)
    except NatgradError:  # inputs from_module does not take: the engine's own choice then
        return None
    params = {call.names[name]: t for name, t in theta.items()}
    return ModuleProblem(phi, params, dict(call.names), output.detach())


def _trainable(module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def prefers_matrix_free(r: int, d: int, inverse: Any) -> bool:
    """Whether a step with ``inverse`` at (r, d) goes to ``structured-krylov`` (module docstring)."""
    return isinstance(inverse, ng.Damped) and r * d * min(r, d) >= MATRIX_FREE_WORK


def damped_goes_matrix_free(forward: Any, theta: dict[str, Tensor], metric: Any) -> bool:
    """Whether a damped step at θ would be factorised by ``structured-krylov`` (a large module problem)."""
    problem = module_problem(forward, theta)
    if problem is None:
        return False
    d = sum(t.numel() for t in theta.values())
    return prefers_matrix_free(metric.at(problem.output, call="NGD.step").r, d, ng.Damped(1.0))


class MatrixFreeFactorization:
    """The module problem's ``structured-krylov`` factorisation, answering in the optimizer's parameter names.

    A solve that cannot certify its tolerance (``ConvergenceError``: the float32 rounding floor above it, say)
    is not an answer: that solve and every later one of the step go to ``dense()``, the engine's own
    factorisation, and the result's ``info["certificate"]`` says why.
    """

    def __init__(self, fac: ng.GramFactorization, names: Mapping[str, str], dense: Callable[[], Any]) -> None:
        self.fac, self.names, self._make_dense = fac, names, dense
        self._dense: Any = None
        self._refusal: str | None = None

    @property
    def preconditioner(self) -> Any:
        """The route's preconditioner for the next step's factorisation (see `natgrad.factorize`)."""
        return self.fac.preconditioner

    @property
    def method(self) -> str:
        """The route that factorised G."""
        return self.fac.method if self._dense is None else self._dense.method

    def refuses(self, inverse: Any) -> str | None:
        """Why a solve with ``inverse`` cannot reuse the factorisation (see `natgrad.GramFactorization`)."""
        return (self.fac if self._dense is None else self._dense).refuses(inverse)

    def solve(self, loss: Callable[[Tensor], Tensor], *, inverse: Any = None) -> Any:
        """`natgrad.GramFactorization.solve`, direction and gradient keyed by the optimizer's names."""
        if self._dense is None:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    result = self.fac.solve(loss, inverse=inverse)
                if result.status == "success":
                    return self._renamed(result)
                # an uncertified answer (the rounding floor above tol) is not a step either
                self._refusal = "; ".join(str(w.message) for w in caught) or f"status {result.status!r}"
            except ConvergenceError as error:
                self._refusal = str(error)
            self._dense = self._make_dense()
        result = self._dense.solve(loss, inverse=inverse)
        certificate = {"uncertified": self._refusal, "fallback": result.method}
        return replace(result, info={**result.info, "certificate": certificate})

    def _renamed(self, result: ng.NaturalGradient) -> ng.NaturalGradient:
        direction, gradient = dict(result.direction), dict(result.gradient)
        return replace(
            result,
            direction={name: direction[own] for name, own in self.names.items()},
            gradient={name: gradient[own] for name, own in self.names.items()},
        )


def step_factorization(
    forward: Any,
    theta: dict[str, Tensor],
    metric: Any,
    inverse: Any,
    method: str,
    preconditioner: Any = None,
) -> MatrixFreeFactorization | None:
    """The matrix-free factorisation this step prefers (module docstring), or None for the engine's choice.

    ``preconditioner``: an earlier step's (``MatrixFreeFactorization.preconditioner``), reused when it fits.
    """
    if method != "auto" or not isinstance(inverse, ng.Damped):
        return None
    problem = module_problem(forward, theta)
    if problem is None:
        return None
    d = sum(t.numel() for t in theta.values())
    if not prefers_matrix_free(metric.at(problem.output, call="NGD.step").r, d, inverse):
        return None
    tol = STEP_TOL.get(problem.output.dtype)
    try:
        fac = ng.factorize(
            problem.phi,
            problem.params,
            metric,
            inverse,
            "structured-krylov",
            tol=tol,
            preconditioner=preconditioner,
        )
    except (StructuredUnsupported, MemoryBudgetError):  # layers without factors, or too large: auto's choice
        return None
    return MatrixFreeFactorization(
        fac, problem.names, lambda: ng.factorize(forward, theta, metric, inverse, method)
    )
