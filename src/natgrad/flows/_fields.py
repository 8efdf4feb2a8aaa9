"""Vector fields on flattened parameters: −G⁻∇ξ(L∘φ) and −∇ξ(L∘φ)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import natgrad as ng

Tensor = torch.Tensor


def cast_params(params0: Any, dtype: torch.dtype | None) -> Any:
    """Detached copy of the parameters, in ``dtype`` when given."""
    if isinstance(params0, torch.Tensor):
        return params0.detach().to(dtype) if dtype is not None else params0.detach().clone()
    if isinstance(params0, dict):
        return {
            k: (v.detach().to(dtype) if dtype is not None else v.detach().clone()) for k, v in params0.items()
        }
    raise TypeError(f"flows: params0 must be a Tensor or a dict of Tensors, got {type(params0).__name__}")


def natural_direction(
    phi: Callable[[Any], Tensor],
    template: Any,
    loss: Callable[[Tensor], Tensor],
    metric: Any,
    inverse: Any,
    route: str = "auto",
) -> Callable[[Tensor], Tensor]:
    """y ↦ G⁻ ∇ξ(L∘φ) at ξ = unflatten(y), flattened, from the engine (``route`` is its ``method``)."""

    def direction(y: Tensor) -> Tensor:
        params = ng.unflatten_like(y, template)
        res = ng.natural_gradient(phi, params, loss, metric=metric, inverse=inverse, method=route)
        return ng.flatten_params(res.direction).detach()

    return direction


def euclidean_direction(
    phi: Callable[[Any], Tensor], template: Any, loss: Callable[[Tensor], Tensor]
) -> Callable[[Tensor], Tensor]:
    """y ↦ ∇ξ(L∘φ) at ξ = unflatten(y), flattened (reverse mode)."""

    def direction(y: Tensor) -> Tensor:
        with torch.enable_grad():
            yy = y.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(loss(phi(ng.unflatten_like(yy, template))), yy)
        return grad.detach()

    return direction


def record(phi: Callable[[Any], Tensor], template: Any, loss: Callable[[Tensor], Tensor], ys: Tensor):
    """Model points z = φ(ξ) (flattened) and losses L(z) for each row of ys."""
    with torch.no_grad():
        outs = [phi(ng.unflatten_like(y, template)).detach() for y in ys]
        losses = torch.stack([torch.as_tensor(loss(z)).detach().reshape(()) for z in outs])
    return torch.stack([z.reshape(-1) for z in outs]), losses
