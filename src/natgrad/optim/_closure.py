"""The torch-style closure route: run ``closure()`` once and capture the model's call with a forward hook.

A closure (zero the gradients, compute the loss, ``loss.backward()``, return the loss) hands the optimizer
only a loss. A natural gradient needs the model's outputs z and the map params ↦ z, so the optimizer keeps
the module (`NGD.from_module`), and a forward hook records the inputs of the model's one call inside the
closure, its output z₀ and, through a tensor hook, ∇_z L(z₀) when the closure calls ``backward()``. From
these the step is well defined: J from ``functional_call(module, params, inputs)`` and the loss through its
gradient at z₀ — the direction depends on L only through ∇_z L(z₀). The metric g cannot be read off a
closure (its graph is freed by ``backward()``), so it must be given to the optimizer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

CALL = "NGD.step(closure)"


@dataclass(frozen=True)
class CapturedCall:
    """The model's call inside a closure: inputs, output z₀, ∇_z L(z₀) and the closure's returned loss."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Tensor
    output_grad: Tensor
    loss: Tensor


def is_closure(fn: Callable[..., Any]) -> bool:
    """True for a callable taking no arguments (torch's closure), False for ``forward(params)``."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: treat as forward
        return False
    try:
        signature.bind()
    except TypeError:
        return False
    try:
        signature.bind(None)
    except TypeError:
        return True
    return False


def _detached(value: Any) -> Any:
    return value.detach() if isinstance(value, Tensor) else value


def run_closure(module: torch.nn.Module, closure: Callable[[], Any]) -> CapturedCall:
    """Run ``closure()`` with a forward hook on ``module``; check that it fits the closure route.

    If the closure returns a loss that still has its graph (it did not call ``backward()``), this calls
    ``loss.backward()`` so that ``p.grad`` is set as after a torch closure.

    Raises:
        TypeError / ValueError: the closure did not call the model exactly once, the model's output is not one
            tensor, or the returned loss is not a scalar tensor that depends on the output.
    """
    calls: list[tuple[tuple[Any, ...], dict[str, Any], Any]] = []
    grads: list[Tensor] = []

    def hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        calls.append((args, kwargs, output))
        if isinstance(output, Tensor) and output.requires_grad:
            output.register_hook(grads.append)

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.enable_grad():
            loss = closure()
            if not grads and isinstance(loss, Tensor) and loss.requires_grad and len(calls) == 1:
                loss.backward()
    finally:
        handle.remove()
    fix = "or call step(forward, loss) with forward = lambda p: torch.func.functional_call(model, p, (x,))"
    if len(calls) != 1:
        raise ValueError(
            f"{CALL}: the closure called the model given to NGD.from_module {len(calls)} times; expected "
            f"exactly one call (the step re-evaluates that call with new parameters); {fix}"
        )
    args, kwargs, output = calls[0]
    if not isinstance(output, Tensor):
        raise TypeError(
            f"{CALL}: the model returned {type(output).__name__}; the closure route needs a model whose "
            f"forward returns one tensor; {fix}"
        )
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise TypeError(
            f"{CALL}: closure() must return the loss as a scalar tensor (zero the grads, compute the loss, "
            f"call loss.backward(), return the loss), got {got}"
        )
    if len(grads) != 1:
        raise ValueError(
            f"{CALL}: no gradient reached the model's output ({len(grads)} backward passes through it); the "
            "closure must return a loss computed from the model's output and call loss.backward() at most "
            "once"
        )
    return CapturedCall(
        tuple(_detached(a) for a in args),
        {k: _detached(v) for k, v in kwargs.items()},
        output.detach(),
        grads[0].detach(),
        loss.detach(),
    )


class OutputGradientLoss:
    """L̂(z) = L(z₀) + ⟨∇_z L(z₀), z − z₀⟩: the closure's loss as far as the step can know it.

    The natural gradient depends on the loss only through ∇_z L(z₀), which L̂ reproduces exactly.
    """

    def __init__(self, value: Tensor, output: Tensor, output_grad: Tensor) -> None:
        self.value, self.output, self.output_grad = value, output, output_grad

    def __call__(self, z: Tensor) -> Tensor:
        """L(z₀) + ⟨∇_z L(z₀), z − z₀⟩."""
        return self.value.to(z.dtype) + (self.output_grad * (z - self.output)).sum()
