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
        output: the output tensor (still attached to the graph).
        versions: version counters of the tensor inputs when recorded, to detect in-place changes.
    """

    name: str
    module: nn.Module
    params: dict[str, nn.Parameter]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: torch.Tensor
    versions: list[tuple[torch.Tensor, int]] = field(default_factory=list)


def own_trainable_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """The module's directly registered parameters that require grad."""
    return {k: p for k, p in module._parameters.items() if p is not None and p.requires_grad}


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


class _Recorder:
    """Holds the recorded calls; recording can be paused while a module is re-run."""

    def __init__(self) -> None:
        self.calls: list[ModuleCall] = []
        self.active = True

    def hook(self, name: str, params: dict[str, nn.Parameter]):
        def record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            if not self.active:
                return None
            if not isinstance(output, torch.Tensor):
                raise StructuredUnsupported.at(
                    "structured_kernel",
                    f"module {name or '<root>'!r} ({type(module).__name__}) owns "
                    f"trainable parameters but returns {type(output).__name__}; the structured route needs "
                    "modules with parameters to return one tensor (move the parameters into a submodule)",
                )
            tensors = [t for t in _tensors((args, kwargs))]
            call = ModuleCall(
                name=name,
                module=module,
                params=params,
                args=_detach(args),
                kwargs=_detach(kwargs),
                output=output,
                versions=[(t, t._version) for t in tensors],
            )
            self.calls.append(call)
            # The clone shields the recorded output from in-place changes made by later layers.
            return output.clone()

        return record


@contextmanager
def recording(model: nn.Module) -> Iterator[_Recorder]:
    """Context in which every forward call of a module with own trainable parameters is recorded."""
    recorder = _Recorder()
    handles = []
    try:
        for name, module in model.named_modules(remove_duplicate=True):
            params = own_trainable_parameters(module)
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
