"""The one loss-gradient helper: (L(z), ∇z L) for a loss on the model outputs."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.func import grad as func_grad

from natgrad.exceptions import InvalidInputError, InvalidTypeError


def output_gradient(call: str, loss: Callable[[Tensor], Tensor], z: Tensor) -> tuple[Tensor, Tensor]:
    """(L(z), ∇z L), both detached, ∇z L shaped like z; ``loss`` must return a scalar Tensor.

    Uses ``torch.func.grad``, so it works inside ``torch.no_grad()`` and never touches ``z.grad``.
    """
    value_box: list[Tensor] = []

    def scalar_loss(x: Tensor) -> Tensor:
        value = loss(x)
        if not isinstance(value, Tensor) or value.numel() != 1:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise InvalidInputError(f"{call}: loss(z) must return a scalar Tensor, got {got}")
        if not value.is_floating_point():
            raise InvalidTypeError(
                f"{call}: loss(z) must return a floating-point scalar, got dtype {value.dtype}; a loss with "
                "integer (or boolean, or complex) values has no real gradient"
            )
        value = value.reshape(())
        value_box.append(value)
        return value

    g = func_grad(scalar_loss)(z.detach())
    return value_box[0].detach(), g
