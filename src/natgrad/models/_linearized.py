"""The model linearised at ξ: outputs z, and products with J and Jᵀ (never J itself unless asked)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap

from natgrad._checks import check_params
from natgrad._tree import Parametrisation, Params, flatten_params, leaves
from natgrad.exceptions import InvalidTypeError


class Linearization:
    """φ at ξ with J = Dφ(ξ) (n × d) on flattened outputs and flattened parameters.

    Args:
        phi: callable params -> Tensor.
        params: Tensor or dict of Tensors.
    """

    def __init__(self, phi: Parametrisation, params: Params, call: str = "natural_gradient") -> None:
        self.params = params
        self.flat = flatten_params(params).detach()
        self.d = self.flat.numel()
        self.call = call
        self.out_shape: torch.Size = torch.Size()
        # Differentiate with respect to the parameter tensors themselves, not a flat vector split into views:
        # slicing a flat vector makes every VJP zero-fill and add a d-sized buffer per tensor.
        self._leaves = tuple(t.detach() for t in leaves(params))
        self._sizes = [t.numel() for t in self._leaves]

        def phi_leaves(*tensors: Tensor) -> Tensor:
            structured = (
                tensors[0] if isinstance(params, Tensor) else dict(zip(params.keys(), tensors, strict=True))
            )
            out = phi(structured)
            if not isinstance(out, Tensor):
                raise TypeError(f"{call}: phi(params) must return a Tensor, got {type(out).__name__}")
            self.out_shape = out.shape
            return out.reshape(-1)

        self._phi_leaves = phi_leaves
        z_flat, self._vjp_fn = vjp(phi_leaves, *self._leaves)[:2]  # (output, vjp_fn): no aux
        self.z_flat = z_flat.detach()
        self.z = self.z_flat.reshape(self.out_shape)
        self.n = self.z_flat.numel()

    def _split(self, t: Tensor) -> tuple[Tensor, ...]:
        return tuple(
            p.reshape(leaf.shape) for p, leaf in zip(t.split(self._sizes), self._leaves, strict=True)
        )

    def _vjp_flat(self, u: Tensor) -> Tensor:
        return torch.cat([g.reshape(-1) for g in self._vjp_fn(u)])

    def vjp(self, u: Tensor) -> Tensor:
        """Jᵀ u for u of shape (n,)."""
        return self._vjp_flat(u)

    def vjp_rows(self, u: Tensor) -> Tensor:
        """(Jᵀ uᵢ)ᵢ for u of shape (k, n): returns (k, d)."""
        return vmap(self._vjp_flat)(u)

    def jvp(self, t: Tensor) -> Tensor:
        """J t for t of shape (d,)."""
        return jvp(self._phi_leaves, self._leaves, self._split(t))[1]

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


def jacobian(phi: Parametrisation, params: Params) -> Tensor:
    """Dense Jacobian of ``phi(params).flatten()`` with respect to ``flatten_params(params)``: (n, d)."""
    if not callable(phi):
        raise InvalidTypeError(
            f"jacobian: phi must be a callable (params -> Tensor), got {type(phi).__name__}"
        )
    check_params("jacobian", params)
    return Linearization(phi, params, call="jacobian").jacobian()
