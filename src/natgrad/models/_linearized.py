"""The model linearised at ξ: outputs z, and products with J and Jᵀ (never J itself unless asked)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap

from natgrad._tree import Params, flatten_params, unflatten_like


class Linearization:
    """φ at ξ with J = Dφ(ξ) (n × d) on flattened outputs and flattened parameters.

    Args:
        phi: callable params -> Tensor.
        params: Tensor or dict of Tensors.
    """

    def __init__(
        self, phi: Callable[[Params], Tensor], params: Params, call: str = "natural_gradient"
    ) -> None:
        self.params = params
        self.flat = flatten_params(params).detach()
        self.d = self.flat.numel()
        self.call = call
        self.out_shape: torch.Size = torch.Size()

        def phi_flat(x: Tensor) -> Tensor:
            out = phi(unflatten_like(x, params))
            if not isinstance(out, Tensor):
                raise TypeError(f"{call}: phi(params) must return a Tensor, got {type(out).__name__}")
            self.out_shape = out.shape
            return out.reshape(-1)

        self._phi_flat = phi_flat
        z_flat, self._vjp_fn = vjp(phi_flat, self.flat)
        self.z_flat = z_flat.detach()
        self.z = self.z_flat.reshape(self.out_shape)
        self.n = self.z_flat.numel()

    def vjp(self, u: Tensor) -> Tensor:
        """Jᵀ u for u of shape (n,)."""
        return self._vjp_fn(u)[0]

    def vjp_rows(self, u: Tensor) -> Tensor:
        """(Jᵀ uᵢ)ᵢ for u of shape (k, n): returns (k, d)."""
        return vmap(lambda row: self._vjp_fn(row)[0])(u)

    def jvp(self, t: Tensor) -> Tensor:
        """J t for t of shape (d,)."""
        return jvp(self._phi_flat, (self.flat,), (t,))[1]

    def jvp_rows(self, t: Tensor) -> Tensor:
        """(J tᵢ)ᵢ for t of shape (k, d): returns (k, n)."""
        return vmap(self.jvp)(t)

    def jacobian(self, chunk: int | None = None) -> Tensor:
        """Dense J (n, d), built row- or column-wise, whichever needs fewer products."""
        eye_size = min(self.n, self.d)
        chunk = chunk or eye_size
        eye = torch.eye(eye_size, dtype=self.flat.dtype, device=self.flat.device)
        if self.n <= self.d:
            return torch.cat([self.vjp_rows(eye[i : i + chunk]) for i in range(0, self.n, chunk)])
        return torch.cat([self.jvp_rows(eye[i : i + chunk]) for i in range(0, self.d, chunk)]).T


def jacobian(phi: Callable[[Params], Tensor], params: Params) -> Tensor:
    """Dense Jacobian of ``phi(params).flatten()`` with respect to ``flatten_params(params)``: (n, d)."""
    return Linearization(phi, params, call="jacobian").jacobian()
