"""Parameters as a Tensor or a dict of Tensors, and their flat vector form."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, overload

import torch
from torch import Tensor

Params = Tensor | Mapping[str, Tensor]


class Parametrisation(Protocol):
    """φ: params (a Tensor or a dict of Tensors) -> a Tensor of model outputs.

    Any callable of one argument returning a Tensor fits, whatever it annotates its argument as (a function
    of a dict, of a Tensor, of ``Params``), so real callers type-check.
    """

    def __call__(self, params: Any, /) -> Tensor: ...


def leaves(params: Params) -> list[Tensor]:
    """The tensors of ``params`` in a fixed order (dict insertion order)."""
    if isinstance(params, Tensor):
        return [params]
    return list(params.values())


def flatten_params(params: Params) -> Tensor:
    """Concatenate every tensor of ``params`` into one 1-D vector (dict insertion order)."""
    return torch.cat([t.reshape(-1) for t in leaves(params)])


@overload
def unflatten_like(vector: Tensor, params: Tensor) -> Tensor: ...
@overload
def unflatten_like(vector: Tensor, params: Mapping[str, Tensor]) -> dict[str, Tensor]: ...
@overload
def unflatten_like(vector: Tensor, params: Params) -> Params: ...
def unflatten_like(vector: Tensor, params: Params) -> Params:
    """Split a flat vector into the structure of ``params`` (inverse of :func:`flatten_params`)."""
    if isinstance(params, Tensor):
        return vector.reshape(params.shape)
    out: dict[str, Tensor] = {}
    start = 0
    for name, t in params.items():
        out[name] = vector[start : start + t.numel()].reshape(t.shape)
        start += t.numel()
    return out


def num_params(params: Params) -> int:
    """Total number of scalar parameters d."""
    return sum(t.numel() for t in leaves(params))


def leaf_names(params: Params) -> list[str]:
    """Names used in messages: the dict keys, or ``"params"`` for a single tensor."""
    if isinstance(params, Tensor):
        return ["params"]
    return list(params.keys())
