"""Differential operators of a network's output with respect to its inputs, and linear combinations of them.

Each takes a `Network`, parameters θ and points (N, D) and returns one value per point; all are built on the
network's `Jet`, so they are differentiable in θ by torch.func (the residual Jacobian of the PDE problem).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._network import Jet, Network, Params, _dims

Coefficient = float | Callable[[Tensor], Tensor] | None


def _jet(
    call: str, network: Network, params: Params, points: Tensor, dims: Sequence[int] | None = None
) -> Jet:
    if not isinstance(network, Network):
        raise TypeError(
            f"{call}: expected a natgrad.pde.Network (wrap the module: pde.Network(module)), "
            f"got {type(network).__name__}"
        )
    network.check_points(call, points)
    return Jet(network, params, points, _dims(call, dims, network.input_dim))


def value(network: Network, params: Params, points: Tensor) -> Tensor:
    """u_θ(x) at each point: (N,) for a scalar network, (N, m) otherwise."""
    return _jet("pde.value", network, params, points).value


def gradient(network: Network, params: Params, points: Tensor) -> Tensor:
    """∇_x u_θ(x): (N, D) for a scalar network, (N, m, D) otherwise."""
    return _jet("pde.gradient", network, params, points).gradient


def laplacian(network: Network, params: Params, points: Tensor, dims: Sequence[int] | None = None) -> Tensor:
    """Δu_θ(x) = Σ_{i∈dims} ∂²u/∂x_i² (all coordinates by default): (N,) or (N, m)."""
    return _jet("pde.laplacian", network, params, points, dims).laplacian()


def divergence(network: Network, params: Params, points: Tensor, dims: Sequence[int] | None = None) -> Tensor:
    """div u_θ(x) = Σ_k ∂u_k/∂x_{dims[k]} for a network with len(dims) outputs: (N,)."""
    return _jet("pde.divergence", network, params, points).divergence(dims)


def time_derivative(network: Network, params: Params, points: Tensor, time_dim: int = -1) -> Tensor:
    """∂u_θ/∂t with t the coordinate ``time_dim`` of each point (the last one by default): (N,) or (N, m)."""
    return _jet("pde.time_derivative", network, params, points).derivative(time_dim)


def _coefficient(c: float | Callable[[Tensor], Tensor], points: Tensor) -> Tensor | float:
    return c(points) if callable(c) else float(c)


@dataclass(frozen=True)
class LinearOperator:
    """L u = a Δ_S u + Σ_i b_i ∂u/∂x_i + c u, coefficients constants or functions of the points.

    Args:
        laplacian: a (scalar or ``points -> (N,)``); None for no second-order term.
        laplacian_dims: S, the coordinates of the Laplacian (default: all).
        advection: b, a sequence of D coefficients (each scalar or ``points -> (N,)``); None for none.
            A time derivative is the advection term of the time coordinate: ``advection=(0, 0, 1)``.
        reaction: c (scalar or ``points -> (N,)``); None for none.

    Example: the heat operator u_t − κ Δ_x u on points (x, y, t) is
    ``LinearOperator(laplacian=-kappa, laplacian_dims=(0, 1), advection=(0, 0, 1))``.
    """

    laplacian: Coefficient = None
    laplacian_dims: tuple[int, ...] | None = None
    advection: tuple[Coefficient, ...] | None = None
    reaction: Coefficient = None

    def __call__(self, jet: Jet) -> Tensor:
        """L u at the jet's points (the jet's own Laplacian coordinates are replaced by ``laplacian_dims``)."""
        points = jet.points
        out = torch.zeros(points.shape[0], dtype=points.dtype, device=points.device)
        if self.laplacian is not None:
            lap_jet = jet
            dims = _dims("pde.LinearOperator", self.laplacian_dims, jet.network.input_dim)
            if dims != jet.dims:
                lap_jet = Jet(jet.network, jet.params, points, dims)
            out = out + _coefficient(self.laplacian, points) * _scalar("laplacian", lap_jet.laplacian())
        if self.advection is not None:
            if len(self.advection) != jet.network.input_dim:
                raise ValueError(
                    f"pde.LinearOperator: advection must have one coefficient per input coordinate "
                    f"({jet.network.input_dim}), got {len(self.advection)}"
                )
            grad = _scalar("advection", jet.gradient)
            for i, b in enumerate(self.advection):
                if b is not None and not (not callable(b) and float(b) == 0.0):
                    out = out + _coefficient(b, points) * grad[:, i]
        if self.reaction is not None:
            out = out + _coefficient(self.reaction, points) * _scalar("reaction", jet.value)
        return out

    def apply(self, network: Network, params: Params, points: Tensor) -> Tensor:
        """L u_θ at the points: (N,)."""
        return self(_jet("pde.LinearOperator.apply", network, params, points, self.laplacian_dims))


def _scalar(term: str, t: Tensor) -> Tensor:
    if t.ndim != 1 and not (t.ndim == 2 and term == "advection"):
        raise ValueError(
            f"pde.LinearOperator: the {term} term needs a scalar network (one output), got values of shape "
            f"{tuple(t.shape)}"
        )
    return t
