"""Dense float helpers shared by the diagnostics (small models only: J and g are materialised)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import natgrad as ng

Tensor = torch.Tensor


def model_point(phi: Callable[[Any], Tensor], params: Any) -> Tensor:
    """z = φ(ξ), detached."""
    return phi(params).detach()


def singular_value_cutoff(matrix: Tensor) -> float:
    """The usual numerical-rank cutoff max(m, n)·eps on singular values, relative to the largest.

    A cutoff on σ of J, used by the dense references here; the engine's ``natgrad.default_rtol`` is a cutoff
    on the eigenvalues λ = σ² of G.
    """
    return max(matrix.shape) * torch.finfo(matrix.dtype).eps


def range_basis(matrix: Tensor, rtol: float | None = None) -> Tensor:
    """Orthonormal basis Q (n × r) of im(matrix) from its SVD; r counts σ_i > rtol·σ_max."""
    u, s, _ = torch.linalg.svd(matrix, full_matrices=False)
    cut = singular_value_cutoff(matrix) if rtol is None else rtol
    rank = int((s > cut * s.max()).sum()) if s.numel() and s.max() > 0 else 0
    return u[:, :rank]


def kernel_basis(matrix: Tensor, rtol: float | None = None) -> Tensor:
    """Orthonormal basis N (d × k) of ker(matrix) (matrix m × d) from its full SVD."""
    _, s, vh = torch.linalg.svd(matrix, full_matrices=True)
    cut = singular_value_cutoff(matrix) if rtol is None else rtol
    rank = int((s > cut * s.max()).sum()) if s.numel() and s.max() > 0 else 0
    return vh[rank:].T.conj()


def g_projector(basis: Tensor, g: Tensor) -> Tensor:
    """g-orthogonal projector onto span(basis): Π = Q (Qᵀ g Q)⁺ Qᵀ g (n × n)."""
    n = g.shape[0]
    if basis.shape[1] == 0:
        return torch.zeros(n, n, dtype=g.dtype, device=g.device)
    gram = basis.T @ g @ basis
    return basis @ torch.linalg.pinv(gram, hermitian=True) @ basis.T @ g


def ambient_natural_gradient(g: Tensor, grad_z: Tensor) -> Tensor:
    """u = g⁻¹ ∇z L (g⁺ ∇z L when g is only PSD)."""
    return torch.linalg.pinv(g, hermitian=True) @ grad_z


def dense_jacobian(phi: Callable[[Any], Tensor], params: Any) -> Tensor:
    """J = Dφ(ξ), n × d, from the engine's dense Jacobian."""
    return ng.jacobian(phi, params)


def flat(tree: Any) -> Tensor:
    """A Tensor or dict of Tensors as one flat vector."""
    return ng.flatten_params(tree).detach()


def relative(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖ (Frobenius); the absolute ‖a − b‖ when b = 0."""
    diff = float(torch.linalg.norm((a - b).reshape(-1)))
    scale = float(torch.linalg.norm(b.reshape(-1)))
    return diff / scale if scale > 0 else diff


def norm(a: Tensor) -> float:
    """‖a‖ (Frobenius) as a float."""
    return float(torch.linalg.norm(a.reshape(-1)))
