"""Adapting ``nn.Module`` to a functional parametrisation ξ ↦ φ(ξ) with torch.func."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from torch import Tensor, nn
from torch.func import functional_call

from natgrad.exceptions import InvalidInputError


class ModuleRecord(NamedTuple):
    """What ``from_module`` parametrised: the structured route re-runs ``module(*args, **kwargs)`` with hooks."""

    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def module_record(phi: Any) -> ModuleRecord | None:
    """The record ``from_module`` attached to ``phi`` (``phi.natgrad_module``), or None for other callables."""
    record = getattr(phi, "natgrad_module", None)
    return record if isinstance(record, ModuleRecord) else None


def from_module(
    module: nn.Module, inputs: Any, *, kwargs: dict[str, Any] | None = None
) -> tuple[Callable[[dict[str, Tensor]], Tensor], dict[str, Tensor]]:
    """The parametrisation φ(ξ) = module(inputs) as a function of the trainable parameters.

    Uses ``torch.func.functional_call``: parameters with ``requires_grad=False`` (frozen) and buffers
    (e.g. BatchNorm running statistics) keep the module's own values; tied parameters appear once
    under their first name and stay tied. Put BatchNorm/Dropout in ``eval()`` mode for a deterministic φ.

    Args:
        module: any ``nn.Module``.
        inputs: a Tensor or a tuple of positional inputs.
        kwargs: keyword inputs passed to ``module.forward``.

    Returns:
        ``(phi, params)``: ``phi(params) == module(*inputs, **kwargs)``, and ``params`` a dict of detached
        parameter tensors (sharing storage with the module). ``phi`` is a plain function carrying the attribute
        ``phi.natgrad_module``, a :class:`ModuleRecord` ``(module, args, kwargs)`` that lets
        ``natural_gradient`` use the layer-structured route (``method="structured"``).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_module: module must be a torch.nn.Module, got {type(module).__name__}")
    params = {name: p.detach() for name, p in module.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(
            f"from_module: {type(module).__name__} has no parameters with requires_grad=True; "
            "unfreeze the parameters to differentiate"
        )
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    kw = dict(kwargs or {})

    names = frozenset(params)

    def phi(p: dict[str, Tensor]) -> Tensor:
        if not names.issuperset(p):
            unknown = sorted(set(p) - names)
            raise InvalidInputError(
                f"from_module: phi(params) got parameter names the module does not have: {unknown}; expected "
                f"keys among those of the params from_module returned ({sorted(names)})"
            )
        out = functional_call(module, p, args, kw)
        if not isinstance(out, Tensor):
            raise TypeError(
                f"from_module: {type(module).__name__}.forward must return a Tensor, got {type(out).__name__}; "
                "wrap the module so that it returns the model outputs"
            )
        return out

    phi.natgrad_module = ModuleRecord(module, args, kw)  # type: ignore[attr-defined]
    return phi, params
