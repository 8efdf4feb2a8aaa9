"""One forward pass that records, for every module owning trainable parameters, its inputs and output.

The structured kernel needs, per parametrised module call, the call's inputs (layer inputs X) and the
backpropagated signal at its output. Forward hooks record both; the output is replaced by a clone so that a
later in-place operation (``ReLU(inplace=True)``) cannot overwrite the tensor the signals are taken at.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from natgrad.exceptions import StructuredUnsupported


@dataclass
class ModuleCall:
    """One call of a module that owns trainable parameters.

    Attributes:
        name: the module's qualified name in the model ("" for the root).
        module: the module.
        params: its own trainable parameters, local name -> Parameter (not those of its children).
        args: positional inputs, detached.
        kwargs: keyword inputs, detached where tensors.
        output: the recorded output tensor (still attached to the graph).
        versions: version counters of the tensor inputs when recorded, to detect in-place changes.
        path: where ``output`` sits in the module's (tuple/dict) output; () when the output is a tensor.
    """

    name: str
    module: nn.Module
    params: dict[str, nn.Parameter]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: torch.Tensor
    versions: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    path: tuple[Any, ...] = ()

    def rerun(self) -> torch.Tensor:
        """The module re-run on the recorded inputs (grad enabled), reduced to the recorded tensor."""
        with torch.enable_grad():
            return _at(self.module(*self.args, **self.kwargs), self.path)


def own_trainable_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """The module's directly registered parameters that require grad."""
    return {k: p for k, p in module._parameters.items() if p is not None and p.requires_grad}


def plain_attention(module: nn.Module) -> bool:
    """True for an ``nn.MultiheadAttention`` whose forward is the library's own."""
    return isinstance(module, nn.MultiheadAttention) and type(module).forward is nn.MultiheadAttention.forward


def plain_recurrent(module: nn.Module) -> bool:
    """True for an ``nn.RNN``/``nn.LSTM``/``nn.GRU`` whose forward is the library's own."""
    return any(
        isinstance(module, cls) and type(module).forward is cls.forward for cls in (nn.RNN, nn.LSTM, nn.GRU)
    )


def call_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters a call of ``module`` owns: its own, plus ``out_proj``'s for MultiheadAttention
    (whose forward uses the projection's weight directly and never calls the submodule)."""
    params = own_trainable_parameters(module)
    if plain_attention(module):
        extra = own_trainable_parameters(module.out_proj)  # type: ignore[arg-type]
        params.update({f"out_proj.{k}": p for k, p in extra.items()})
    return params


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple | list):
        return type(value)(_detach(v) for v in value)
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _param_dependent(value: Any) -> list[tuple[tuple[Any, ...], torch.Tensor]]:
    """(path, tensor) for every tensor of a nested tuple/list/dict output that depends on the parameters."""
    if isinstance(value, torch.Tensor):
        return [((), value)] if value.requires_grad else []
    if isinstance(value, tuple | list):
        items: Any = enumerate(value)
    elif isinstance(value, dict):
        items = value.items()
    else:
        return []
    return [((key, *path), t) for key, v in items for path, t in _param_dependent(v)]


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def _replaced(value: Any, path: tuple[Any, ...], new: torch.Tensor) -> Any:
    """A copy of the nested output with the tensor at ``path`` replaced (tuples, lists and dicts)."""
    if not path:
        return new
    key, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, key: _replaced(value[key], rest, new)}
    items = [_replaced(v, rest, new) if i == key else v for i, v in enumerate(value)]
    return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)


def _is_parametrization(module: nn.Module) -> bool:
    from torch.nn.utils.parametrize import ParametrizationList

    return isinstance(module, ParametrizationList)


class _Recorder:
    """Holds the recorded calls; recording can be paused while a module is re-run.

    A call is recorded when its output is one tensor, or a tuple/list/dict with exactly one tensor that
    depends on the parameters (``nn.MultiheadAttention(..., need_weights=False)`` returns ``(out, None)``);
    the recorded tensor is reached through ``path``. Calls with several parameter-dependent tensors
    (other than ``nn.RNN``/``nn.LSTM``/``nn.GRU``, recorded at their output sequence) and parametrizations (which return a weight, not per-example
    outputs) are not recorded: their parameters count as used outside recorded calls and get whole-model rows.
    """

    def __init__(self) -> None:
        self.calls: list[ModuleCall] = []
        self.active = True
        self.unrecorded: dict[str, str] = {}  # module name -> why its calls are not recorded

    def hook(self, name: str, params: dict[str, nn.Parameter]):
        def record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            if not self.active:
                return None
            if _is_parametrization(module):
                self.unrecorded[name] = "parametrization"
                return None
            found = _param_dependent(output)
            if (plain_recurrent(module) or plain_attention(module)) and not isinstance(output, tuple):
                # A root module whose output from_module(output=...) already selected: the recurrence and
                # attention formulas need the signal at the output sequence, so this call gets whole-model rows.
                self.unrecorded[name] = "output selected from the module's tuple"
                return None
            sequence = output[0] if plain_recurrent(module) else None
            if isinstance(sequence, torch.Tensor) and sequence.requires_grad:
                # The output sequence; a final state used downstream makes the kernel check fail, and the
                # retry then gives these parameters whole-model rows.
                found = [((0,), output[0])]
            if len(found) != 1:
                self.unrecorded[name] = f"returns {len(found)} parameter-dependent tensors"
                return None
            path, tensor = found[0]
            tensors = [t for t in _tensors((args, kwargs))]
            call = ModuleCall(
                name=name,
                module=module,
                params=params,
                args=_detach(args),
                kwargs=_detach(kwargs),
                output=tensor,
                versions=[(t, t._version) for t in tensors],
                path=path,
            )
            self.calls.append(call)
            # The clone shields the recorded output from in-place changes made by later layers.
            return _replaced(output, path, tensor.clone())

        return record


@contextmanager
def recording(model: nn.Module) -> Iterator[_Recorder]:
    """Context in which every forward call of a module with own trainable parameters is recorded."""
    recorder = _Recorder()
    handles = []
    try:
        for name, module in model.named_modules(remove_duplicate=True):
            params = call_parameters(module)
            if params:
                handles.append(module.register_forward_hook(recorder.hook(name, params), with_kwargs=True))
        yield recorder
    finally:
        for handle in handles:
            handle.remove()


def check_unchanged(calls: list[ModuleCall]) -> None:
    """Raise if an input recorded for a module call was modified in place later in the forward pass."""
    for call in calls:
        for tensor, version in call.versions:
            if tensor._version != version:
                raise StructuredUnsupported.at(
                    "structured_kernel",
                    f"an input of module {call.name or '<root>'!r} "
                    f"({type(call.module).__name__}) was modified in place after the module used it; "
                    "use out-of-place operations (e.g. inplace=False) before parametrised layers",
                )
        call.versions = []


def output_signals(
    output: torch.Tensor, calls: list[ModuleCall], cotangents: torch.Tensor
) -> list[torch.Tensor]:
    """Backpropagated signals ∂⟨v, z⟩/∂(call output) for a batch of cotangents v, one backward pass.

    Args:
        output: model output z, shape (N, ...).
        calls: recorded module calls.
        cotangents: (m, N, C) with C = numel of one example's output.

    Returns:
        One tensor per call of shape (m, *call.output.shape) (zeros where z does not depend on it).
    """
    grads = torch.autograd.grad(
        outputs=output,
        inputs=[call.output for call in calls],
        grad_outputs=cotangents.reshape(cotangents.shape[0], *output.shape),
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=True,
    )
    return [
        torch.zeros((cotangents.shape[0], *c.output.shape), dtype=c.output.dtype, device=c.output.device)
        if g is None
        else g
        for g, c in zip(grads, calls, strict=True)
    ]


def unowned_parameters(params: dict[str, nn.Parameter], calls: list[ModuleCall]) -> set[int]:
    """Ids of trainable parameters that no recorded call owns (module never called, or its calls unrecorded)."""
    owned = {id(p) for call in calls for p in call.params.values()}
    return {id(p) for p in params.values() if id(p) not in owned}
