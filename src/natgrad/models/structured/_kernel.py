"""The structured route: kernel K = (Bᵀ J)(Bᵀ J)ᵀ layer by layer, and the direction Jᵀ B y by one VJP."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from natgrad.exceptions import StructuredUnsupported

from ._capture import ModuleCall, check_unchanged, output_signals, recording, unowned_parameters
from ._contract import KernelFactors, SharedLinearFactor
from ._factors import BlockFactor, Factor, normalise_factor
from ._layers import shared_linear_cost
from ._modules import (
    attention_blocks,
    conv_blocks,
    embedding_blocks,
    embedding_tokens,
    generic_rows,
    linear_blocks,
    norm_rows,
    recurrent_blocks,
    structure_of,
)

_CALL = "structured_kernel"
_BLOCKS = {
    "linear": linear_blocks,
    "conv": conv_blocks,
    "embedding": embedding_blocks,
    "attention": attention_blocks,
    "recurrent": recurrent_blocks,
}


@dataclass
class StructuredContext:
    """What a structured kernel computation leaves behind for the parameter direction.

    Attributes:
        output: the model output z (N, ...), detached.
        params: the model's trainable parameters (``named_parameters`` that require grad, tied ones once).
        factor: the per-example block factor the kernel was built with.
        dense_factor: a dense (n, r) factor applied on top of the identity kernel, or None.
        routes: module name -> formula used ("linear/pair", "conv/rows", "norm", "generic", "tied", ...).
    """

    output: torch.Tensor
    params: dict[str, nn.Parameter]
    factor: BlockFactor
    dense_factor: torch.Tensor | None
    routes: dict[str, str] = field(default_factory=dict)
    _graph_output: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        """r, the kernel size."""
        if self.dense_factor is not None:
            return self.dense_factor.shape[1]
        return self.factor.num_examples * self.factor.width

    def vjp(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameter direction Jᵀ B y by one vector-Jacobian product.

        Args:
            y: coefficients, shape (r,) (or any shape with r entries).

        Returns:
            parameter name -> tensor of the parameter's shape.
        """
        if y.numel() != self.rows:
            raise ValueError(
                f"structured_vjp: y must have r = {self.rows} entries (the kernel size), "
                f"got shape {tuple(y.shape)}"
            )
        if self._graph_output is None:
            raise ValueError("structured_vjp: the context was released; recompute the kernel")
        y = y.reshape(-1).to(self.output.dtype)
        cotangent = self.dense_factor @ y if self.dense_factor is not None else self.factor.apply(y)
        grads = torch.autograd.grad(
            self._graph_output,
            list(self.params.values()),
            grad_outputs=cotangent.reshape(self._graph_output.shape),
            retain_graph=True,
            allow_unused=True,
        )
        return {
            name: torch.zeros_like(p) if g is None else g
            for (name, p), g in zip(self.params.items(), grads, strict=True)
        }

    def release(self) -> None:
        """Free the autograd graph kept for :meth:`vjp`."""
        self._graph_output = None


def structured_vjp(context: StructuredContext, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Jᵀ B y for the model, inputs and factor of ``context`` (one VJP); see :meth:`StructuredContext.vjp`."""
    return context.vjp(y)


def _as_tuple(inputs: Any) -> tuple[Any, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def _check_batch(calls: Sequence[ModuleCall], num_examples: int) -> None:
    for call in calls:
        if call.output.dim() == 0 or call.output.shape[0] != num_examples:
            raise StructuredUnsupported.at(
                _CALL,
                f"module {call.name or '<root>'!r} ({type(call.module).__name__}) returned shape "
                f"{tuple(call.output.shape)}, but the structured route needs the batch axis first with "
                f"N = {num_examples} examples in every parametrised layer (use batch_first layouts)",
            )


def _signals(
    output: torch.Tensor, calls: list[ModuleCall], factor: BlockFactor, columns_per_pass: int
) -> list[torch.Tensor]:
    """Signals (k, N, *out) for every call, backpropagating ``columns_per_pass`` factor columns at a time."""
    parts: list[list[torch.Tensor]] = [[] for _ in calls]
    for start in range(0, factor.width, columns_per_pass):
        stop = min(start + columns_per_pass, factor.width)
        batch = output_signals(output, calls, factor.cotangents(start, stop, output))
        for store, s in zip(parts, batch, strict=True):
            store.append(s)
    return [torch.cat(p, dim=0) if len(p) > 1 else p[0] for p in parts]


def structured_kernel(
    module: nn.Module,
    inputs: Any,
    output_factor: Factor = None,
    chunk_size: int | None = None,
    check_outside: bool = True,
    dtype: torch.dtype | None = None,
    kwargs: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, StructuredContext]:
    """The output-side kernel K = (Bᵀ J)(Bᵀ J)ᵀ of a network, assembled layer by layer without forming J.

    :func:`emit_factors` followed by :meth:`KernelFactors.kernel`; see :func:`emit_factors` for the
    arguments and assumptions. ``dtype`` is the precision of the contraction (default: the model's).

    Returns:
        ``(K, context)``: K of shape (r, r), and a :class:`StructuredContext` whose ``vjp(y)`` gives Jᵀ B y.
    """
    factors, context = emit_factors(module, inputs, output_factor, chunk_size, check_outside, kwargs)
    return factors.kernel(dtype), context


def emit_factors(
    module: nn.Module,
    inputs: Any,
    output_factor: Factor = None,
    chunk_size: int | None = None,
    check_outside: bool = True,
    kwargs: dict[str, Any] | None = None,
) -> tuple[KernelFactors, StructuredContext]:
    """Per-layer factors of K = (Bᵀ J)(Bᵀ J)ᵀ: layer inputs and backpropagated signals, per example.

    J = ∂ vec z / ∂ξ for z = module(*inputs) of shape (N, ...) flattened row-major to n = N·C entries and ξ
    the trainable parameters (``requires_grad=True``; frozen ones are excluded). One forward pass records
    every parametrised layer; one batched backward pass per group of factor columns gives each layer the
    signals of those columns at its output. Layers with a closed form (Linear, Conv, Embedding; see
    ``_modules``) keep (inputs, signals); normalisation layers, other parametrised modules (batched VJPs) and
    parameters used by more than one call (their rows summed over the calls) keep explicit Jacobian rows.
    Nothing r × r or r × d is formed here: :class:`KernelFactors` contracts the factors into K, into
    products K u, or into columns of K.

    Assumptions: examples are independent (example i's output depends on example i's input only; BatchNorm
    must be in eval mode), every parametrised layer keeps the batch axis first, the forward pass is
    deterministic, and each parameter is used only inside the forward of a module that registers it.

    Args:
        module: the network.
        inputs: a tensor or a tuple of positional inputs.
        output_factor: B, see :func:`~natgrad.models.structured._factors.normalise_factor`: None (identity,
            r = n), per-example blocks (N, C, k) (r = N·k, row i·k + j), a dense (n, r) tensor, or a callable
            of the detached output returning one of these.
        chunk_size: at most this many kernel rows are processed together in the batched backward passes and
            row formations (bounds the transient memory; None processes everything at once). Results do not
            depend on it.
        check_outside: look for parameters used outside the modules that register them (one extra
            backward pass and a re-run of each layer) and give them whole-model rows. With False the layer
            formulas are trusted as they are; callers then verify K against products with A (the engine does).
        kwargs: keyword inputs of ``module.forward`` (as ``from_module(..., kwargs=...)`` records them).

    Returns:
        ``(factors, context)``: the :class:`KernelFactors`, and a :class:`StructuredContext` whose
        ``vjp(y)`` gives Jᵀ B y.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"{_CALL}: module must be a torch.nn.Module, got {type(module).__name__}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"{_CALL}: chunk_size must be a positive integer or None, got {chunk_size}")
    with torch.enable_grad(), recording(module) as recorder:
        output = module(*_as_tuple(inputs), **(kwargs or {}))
    if not isinstance(output, torch.Tensor):
        raise StructuredUnsupported.at(
            _CALL, f"the module must return one tensor (N, ...), got {type(output).__name__}"
        )
    check_unchanged(recorder.calls)
    factor, dense = normalise_factor(output_factor, output, _CALL)
    num_examples, width = factor.num_examples, factor.width
    calls = recorder.calls
    _check_batch(calls, num_examples)
    for call in calls:  # fail early on coupled examples
        if structure_of(call.module) == "norm" and not isinstance(call.module, nn.LayerNorm | nn.GroupNorm):
            if call.module.training or call.module.running_mean is None:
                norm_rows(call, output.new_zeros((1, *call.output.shape)))

    columns_per_pass = width if chunk_size is None else max(1, chunk_size // max(num_examples, 1))
    examples_per_chunk = None if chunk_size is None else max(1, chunk_size // max(width, 1))

    def pause():
        return _Paused(recorder)

    params = {name: p for name, p in module.named_parameters() if p.requires_grad}
    outside = _outside_parameters(output, calls, params, pause) if check_outside else set()
    outside |= unowned_parameters(params, calls)  # e.g. MultiheadAttention.out_proj, LSTM weights
    if outside:
        # Parameters (partly) used outside the modules that register them: their rows come from batched
        # VJPs of the whole output, so the layer formulas must not count them again.
        for call in calls:
            call.params = {k: p for k, p in call.params.items() if id(p) not in outside}
        calls = [call for call in calls if call.params]
    signals: list[torch.Tensor | None] = (
        list(_signals(output, calls, factor, columns_per_pass)) if calls else []
    )

    uses: dict[int, int] = {}
    for call in calls:
        for p in call.params.values():
            uses[id(p)] = uses.get(id(p), 0) + 1
    r = num_examples * width
    factors = KernelFactors(
        num_examples,
        width,
        dense_factor=dense,
        examples_per_chunk=examples_per_chunk,
        dtype=output.dtype,
        device=output.device,
    )
    tied_rows: dict[int, torch.Tensor] = {}
    routes = factors.routes
    if outside:
        names = [name for name, p in params.items() if id(p) in outside]
        factors.rows.append(_whole_model_rows(output, [params[k] for k in names], factor, examples_per_chunk))
        routes["<outside modules>"] = "whole-model/vjp: " + ", ".join(names)

    for index, call in enumerate(calls):
        s = signals[index]
        assert s is not None
        signals[index] = None  # the factors keep what they need, in their own layout
        kind = structure_of(call.module)
        if any(uses[id(p)] > 1 for p in call.params.values()):
            for name, param_rows in generic_rows(call, s, examples_per_chunk, pause).items():
                key = id(call.params[name])
                flat = param_rows.reshape(r, -1)
                tied_rows[key] = tied_rows[key] + flat if key in tied_rows else flat
            routes[call.name] = "shared-parameter/vjp"
        elif kind in _BLOCKS:
            tokens = embedding_tokens(call) if kind == "embedding" else None
            blocks = [SharedLinearFactor(x, sig, tokens) for x, sig in _BLOCKS[kind](call, s)]
            factors.linear.extend(blocks)
            used = {"pair" if _pair_contraction(b, examples_per_chunk) else "rows" for b in blocks}
            routes[call.name] = f"{kind}/{'+'.join(sorted(used))}"
        elif kind == "norm":
            factors.rows.append(norm_rows(call, s))
            routes[call.name] = "norm"
        else:
            generic = generic_rows(call, s, examples_per_chunk, pause)
            factors.rows.append(torch.cat([v.reshape(r, -1) for v in generic.values()], dim=1))
            routes[call.name] = "generic/vjp"
    factors.rows.extend(tied_rows.values())
    context = StructuredContext(
        output=output.detach(),
        params=params,
        factor=factor,
        dense_factor=dense,
        routes=routes,
        _graph_output=output if output.requires_grad else None,
    )
    return factors, context


def _pair_contraction(block: SharedLinearFactor, examples_per_chunk: int | None) -> bool:
    """Whether the dense assembly contracts this block in the Hadamard ("pair") form."""
    n, width, positions, outputs = block.signals.shape
    cost = shared_linear_cost(n, width, positions, block.inputs.shape[2], outputs)
    return positions == 1 or cost["pair"] <= cost["rows"]


def _outside_parameters(
    output: torch.Tensor, calls: list[ModuleCall], params: dict[str, nn.Parameter], pause
) -> set[int]:
    """Ids of parameters whose use is not fully inside recorded calls of modules that register them.

    For a fixed random cotangent u, the full gradient ∂⟨u, z⟩/∂p must equal the sum over the calls owning p
    of the call's local VJP (module re-run on its recorded inputs, signal of u at its output). A parameter
    used directly in a parent's forward, or registered by a module that is never called, fails this.
    """
    plist = list(params.values())
    if not plist or not output.requires_grad:
        return set()
    u = torch.randn(output.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = u.to(dtype=output.dtype, device=output.device)
    full = torch.autograd.grad(output, plist, u, retain_graph=True, allow_unused=True)
    local = {id(p): torch.zeros_like(p) for p in plist}
    if calls:
        signals = output_signals(output, calls, u.reshape(1, output.shape[0], -1))
        for call, s in zip(calls, signals, strict=True):
            with pause():
                out = call.rerun()
            owned = list(call.params.values())
            for p, g in zip(owned, torch.autograd.grad(out, owned, s[0], allow_unused=True), strict=True):
                if g is not None:
                    local[id(p)] += g
    outside = set()
    tol = torch.finfo(output.dtype).eps ** 0.5
    for p, g in zip(plist, full, strict=True):
        g = torch.zeros_like(p) if g is None else g
        gap = torch.linalg.vector_norm(g - local[id(p)])
        if gap > tol * (torch.linalg.vector_norm(g) + torch.linalg.vector_norm(local[id(p)])):
            outside.add(id(p))
    return outside


def _whole_model_rows(
    output: torch.Tensor, plist: list[nn.Parameter], factor: BlockFactor, examples_per_chunk: int | None
) -> torch.Tensor:
    """Rows (Jᵀ B)ᵀ for the given parameters, (r, Σ numel), by batched VJPs of the whole output.

    Row a = (i, j) uses the cotangent that is column j of B_i on example i and zero elsewhere.
    """
    n, width = factor.num_examples, factor.width
    columns = factor.cotangents(0, width, output)  # (k, N, C)
    step = n if not examples_per_chunk else max(1, examples_per_chunk)
    parts = []
    for start in range(0, n, step):
        stop = min(start + step, n)
        examples = torch.arange(start, stop, device=output.device)
        cot = output.new_zeros((stop - start, width, n, columns.shape[2]))
        cot[torch.arange(stop - start, device=output.device), :, examples] = columns[:, examples].transpose(
            0, 1
        )
        grads = torch.autograd.grad(
            output,
            plist,
            grad_outputs=cot.reshape(-1, *output.shape),
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=True,
        )
        rows = [
            torch.zeros(((stop - start) * width, p.numel()), dtype=output.dtype, device=output.device)
            if g is None
            else g.reshape(g.shape[0], -1)
            for g, p in zip(grads, plist, strict=True)
        ]
        parts.append(torch.cat(rows, dim=1))
    return torch.cat(parts, dim=0)


class _Paused:
    """Suspends recording while a module is re-run for its own VJPs."""

    def __init__(self, recorder) -> None:
        self.recorder = recorder

    def __enter__(self) -> None:
        self.recorder.active = False

    def __exit__(self, *exc) -> None:
        self.recorder.active = True
