"""A network u_θ: R^D → R^m seen as a function of its inputs, and its input derivatives (the `Jet`).

For ``nn.Sequential`` stacks of ``Linear`` layers and elementwise activations (tanh, sigmoid, SiLU) the
derivatives are propagated forward through the layers together with the values (a "forward Laplacian"):
for a pre-activation h with input Jacobian ∂h (D × w) and partial Laplacian Δ_S h = Σ_{i∈S} ∂²_i h,

    linear  h ↦ W h + b:   ∂h ↦ ∂h Wᵀ,   Δ_S h ↦ Δ_S h Wᵀ,
    σ       a = σ(h):       ∂a = σ'(h) ∂h,  Δ_S a = σ''(h) Σ_{i∈S} (∂_i h)² + σ'(h) Δ_S h.

That costs about (D + 2) forward passes and consists of plain batched tensor operations, so its parameter
derivatives (the Jacobian of a PDE residual) cost a small multiple of one gradient. Every other model is
differentiated per point with torch.func (``jacrev`` for ∂u, ``hessian`` for Δu), vectorised with ``vmap``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import cast

import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian, jacrev, vmap

Params = Mapping[str, Tensor]

# σ, and (σ', σ'') from (h, a = σ(h)), for the activations the forward propagation knows.
_Derivatives = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
_ACTIVATIONS: dict[type, tuple[Callable[[Tensor], Tensor], _Derivatives]] = {
    nn.Tanh: (torch.tanh, lambda h, a: (1 - a * a, -2 * a * (1 - a * a))),
    nn.Sigmoid: (torch.sigmoid, lambda h, a: (a * (1 - a), a * (1 - a) * (1 - 2 * a))),
    nn.SiLU: (nn.functional.silu, lambda h, a: _silu_derivatives(h)),
}


def _silu_derivatives(h: Tensor) -> tuple[Tensor, Tensor]:
    s = torch.sigmoid(h)
    ds = s * (1 - s)
    return s + h * ds, ds * (2 + h * (1 - 2 * s))


def mlp(
    widths: Sequence[int],
    activation: type[nn.Module] = nn.Tanh,
    *,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> nn.Sequential:
    """A fully connected network widths[0] → … → widths[-1] with ``activation`` between the linear layers.

    Weights are Glorot-normal, N(0, 2 / (fan_in + fan_out)), drawn in float64 from ``generator`` (so a seed
    gives the same network in every dtype); biases are zero.
    float64 by default: PINN residuals involve second derivatives and their Gauss–Newton systems are ill
    conditioned, so single precision stops the error early.

    Raises:
        ValueError: fewer than two widths or a width below 1.
    """
    widths = list(widths)
    if len(widths) < 2 or any(not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(
            f"pde.mlp: widths must be at least two positive integers (input, ..., output), got {widths}"
        )
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        linear = nn.Linear(fan_in, fan_out, dtype=dtype, device=device)
        with torch.no_grad():
            std = (2.0 / (fan_in + fan_out)) ** 0.5
            draw = torch.randn(
                linear.weight.shape, generator=generator, dtype=torch.float64
            )  # same in any dtype
            linear.weight.copy_((draw * std).to(dtype=dtype, device=linear.weight.device))
            linear.bias.zero_()
        layers.append(linear)
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def _forward_plan(module: nn.Module) -> list[str | type] | None:
    """The layers in order — a linear layer's name or an activation's type — when forward propagation
    applies, else None."""
    if not isinstance(module, nn.Sequential) or len(module) == 0:
        return None
    plan: list[str | type] = []
    for name, layer in module.named_children():
        if type(layer) is nn.Linear:
            plan.append(name)
        elif type(layer) in _ACTIVATIONS:
            plan.append(type(layer))
        elif type(layer) is nn.Identity:
            continue
        else:
            return None
        if layer._forward_hooks or layer._forward_pre_hooks:
            return None
    return plan if plan and isinstance(plan[0], str) else None


class Network:
    """A model u_θ(x) with x ∈ R^D (points are rows of an (N, D) tensor) and m outputs.

    Args:
        module: any ``nn.Module`` mapping (N, D) to (N, m) or (N,).
        input_dim: D; inferred from the first ``nn.Linear`` when omitted.

    Attributes:
        forward_propagation: True when derivatives are propagated through the layers (see module notes);
            False: per-point torch.func derivatives.
    """

    def __init__(self, module: nn.Module, input_dim: int | None = None) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"pde.Network: module must be a torch.nn.Module, got {type(module).__name__}")
        if input_dim is None:
            first = next((m for m in module.modules() if isinstance(m, nn.Linear)), None)
            if first is None:
                raise ValueError(
                    "pde.Network: cannot infer the input dimension (no nn.Linear layer); pass input_dim=D"
                )
            input_dim = first.in_features
        if not isinstance(input_dim, int) or input_dim < 1:
            raise ValueError(f"pde.Network: input_dim must be a positive integer, got {input_dim!r}")
        self.module = module
        self.input_dim = input_dim
        self._plan = _forward_plan(module)
        if self._plan is not None:  # a Sequential stack: its first layer says what it takes
            first_layer = cast(nn.Linear, module.get_submodule(cast(str, self._plan[0])))
            if first_layer.in_features != input_dim:
                raise ValueError(
                    f"pde.Network: input_dim={input_dim} but the first layer {self._plan[0]!r} takes "
                    f"{first_layer.in_features} input(s); pass input_dim={first_layer.in_features} or omit it"
                )
        self.forward_propagation = self._plan is not None

    def params(self) -> dict[str, Tensor]:
        """The module's parameters by name, detached (the point θ for `natgrad.natural_gradient`).

        They share storage with the module, so they follow its in-place updates (an optimizer's steps);
        clone them to keep a snapshot.
        """
        return {name: p.detach() for name, p in self.module.named_parameters()}

    def check_points(self, call: str, points: Tensor) -> None:
        """Points must be a finite floating (N, D) tensor with D the network's input dimension."""
        if not isinstance(points, Tensor):
            raise TypeError(
                f"{call}: points must be a torch.Tensor of shape (N, D), got {type(points).__name__}"
            )
        if points.ndim != 2 or points.shape[1] != self.input_dim:
            raise ValueError(
                f"{call}: points must have shape (N, {self.input_dim}) for a network with {self.input_dim} "
                f"input(s), got {tuple(points.shape)}; pass one point per row with all coordinates"
            )
        if not points.is_floating_point():
            raise TypeError(f"{call}: points must be floating point, got dtype {points.dtype}")
        like = next(iter(self.module.parameters()), None)
        if like is not None and (points.dtype != like.dtype or points.device != like.device):
            raise TypeError(
                f"{call}: points are {points.dtype} on {points.device} but the network's parameters are "
                f"{like.dtype} on {like.device}; convert them with points.to(dtype, device)"
            )
        if not bool(torch.isfinite(points).all()):
            bad = int((~torch.isfinite(points)).any(1).sum())
            raise ValueError(f"{call}: {bad} point(s) contain NaN or inf; every coordinate must be finite")

    def __call__(self, params: Params, points: Tensor) -> Tensor:
        """u_θ at the points, shape (N, m)."""
        out = functional_call(self.module, dict(params), (points,))
        return out.reshape(points.shape[0], -1)

    def jet(self, params: Params, points: Tensor, laplacian_dims: Sequence[int] | None = None) -> Jet:
        """The `Jet` of u_θ at the points (derivatives computed when first asked for)."""
        return Jet(self, params, points, laplacian_dims)

    # --------------------------------------------------------------- derivative computations
    def _propagate(
        self, params: Params, points: Tensor, order: int, dims: tuple[int, ...]
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(value (N, m), ∂u (N, m, D) or None, Δ_S u (N, m) or None) by forward propagation."""
        n, dim = points.shape
        h = points
        grad = torch.eye(dim, dtype=points.dtype, device=points.device).expand(n, dim, dim) if order else None
        lap = torch.zeros(n, dim, dtype=points.dtype, device=points.device) if order > 1 else None
        mask = torch.zeros(dim, dtype=points.dtype, device=points.device)
        mask[list(dims)] = 1.0
        assert self._plan is not None
        for what in self._plan:
            if isinstance(what, str):
                layer = cast(nn.Linear, self.module.get_submodule(what))  # parameters not in params keep
                weight = params.get(f"{what}.weight", layer.weight)  # their own values
                bias: Tensor | None = params.get(f"{what}.bias", layer.bias)
                h = h @ weight.T + (bias if bias is not None else 0.0)
                grad = grad @ weight.T if grad is not None else None
                lap = lap @ weight.T if lap is not None else None
            else:
                activation, derivatives = _ACTIVATIONS[what]
                a = activation(h)
                if grad is not None:
                    d1, d2 = derivatives(h, a)
                    if lap is not None:
                        lap = d2 * torch.einsum("i,nij->nj", mask, grad * grad) + d1 * lap
                    grad = d1.unsqueeze(1) * grad
                h = a
        return h, (grad.transpose(1, 2) if grad is not None else None), lap

    def _per_point(
        self, params: Params, points: Tensor, order: int, dims: tuple[int, ...]
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The same through torch.func per point: jacrev for ∂u, the Hessian's diagonal for Δ_S u."""

        def at(x: Tensor) -> Tensor:
            return functional_call(self.module, dict(params), (x.unsqueeze(0),)).reshape(-1)

        value = self(params, points)
        grad = vmap(jacrev(at))(points) if order else None
        lap = None
        if order > 1:
            hess = vmap(hessian(at))(points)  # (N, m, D, D)
            lap = hess.diagonal(dim1=-2, dim2=-1)[..., list(dims)].sum(-1)
        return value, grad, lap

    def derivatives(
        self, params: Params, points: Tensor, order: int, dims: tuple[int, ...]
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(u, ∂u, Δ_S u) up to ``order`` (0, 1 or 2), by forward propagation when it applies."""
        if self._plan is not None:
            return self._propagate(params, points, order, dims)
        return self._per_point(params, points, order, dims)


class Jet:
    """Value and input derivatives of a `Network` at a batch of points, computed on first use.

    For a scalar network (m = 1) ``value`` is (N,), ``gradient`` (N, D), ``laplacian()`` (N,); for m > 1
    they keep the output axis: (N, m), (N, m, D), (N, m).

    Args:
        network: the `Network`.
        params: the parameters θ (a dict keyed like ``module.named_parameters()``).
        points: (N, D).
        laplacian_dims: the coordinates S of the Laplacian Δ_S = Σ_{i∈S} ∂²_i (default: all).
    """

    def __init__(
        self,
        network: Network,
        params: Params,
        points: Tensor,
        laplacian_dims: Sequence[int] | None = None,
    ) -> None:
        self.network = network
        self.params = params
        self.points = points
        self.dims = _dims("pde.Jet", laplacian_dims, network.input_dim)
        self._cache: dict[int, tuple[Tensor, Tensor | None, Tensor | None]] = {}

    def _at_order(self, order: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        for have in (2, 1, 0):
            if have >= order and have in self._cache:
                return self._cache[have]
        self._cache[order] = self.network.derivatives(self.params, self.points, order, self.dims)
        return self._cache[order]

    def _squeeze(self, t: Tensor) -> Tensor:
        return t.squeeze(1) if t.shape[1] == 1 else t

    def _input_jacobian(self) -> Tensor:
        grad = self._at_order(1)[1]
        assert grad is not None  # order ≥ 1 computes it
        return grad

    @property
    def value(self) -> Tensor:
        """u_θ(x): (N,) for a scalar network, (N, m) otherwise."""
        return self._squeeze(self._at_order(0)[0])

    @property
    def gradient(self) -> Tensor:
        """∇_x u_θ: (N, D) for a scalar network, (N, m, D) (the input Jacobian) otherwise."""
        return self._squeeze(self._input_jacobian())

    def derivative(self, dim: int) -> Tensor:
        """∂u/∂x_dim (e.g. the time derivative when x_dim is time): (N,) or (N, m)."""
        (dim,) = _dims("pde.Jet.derivative", [dim], self.network.input_dim)
        return self._squeeze(self._input_jacobian()[..., dim])

    def laplacian(self) -> Tensor:
        """Δ_S u = Σ_{i∈S} ∂²u/∂x_i² over the jet's ``laplacian_dims`` S: (N,) or (N, m)."""
        lap = self._at_order(2)[2]
        assert lap is not None  # order 2 computes it
        return self._squeeze(lap)

    def divergence(self, dims: Sequence[int] | None = None) -> Tensor:
        """div u = Σ_k ∂u_k/∂x_{dims[k]} of a vector field u with m = len(dims) outputs: (N,)."""
        dims = _dims("pde.Jet.divergence", dims, self.network.input_dim)
        jac = self._input_jacobian()
        if jac.shape[1] != len(dims):
            raise ValueError(
                f"pde.divergence: the network has {jac.shape[1]} output(s) but the divergence over coordinates "
                f"{list(dims)} needs {len(dims)}; pass dims with one coordinate per output"
            )
        return torch.stack([jac[:, k, dim] for k, dim in enumerate(dims)]).sum(0)


def _dims(call: str, dims: Sequence[int] | None, input_dim: int) -> tuple[int, ...]:
    if dims is None:
        return tuple(range(input_dim))
    out = []
    for dim in dims:
        if isinstance(dim, bool) or not isinstance(dim, int) or not -input_dim <= dim < input_dim:
            raise ValueError(
                f"{call}: coordinate indices must be integers in [-{input_dim}, {input_dim}) for a network "
                f"with {input_dim} input(s), got {list(dims)}"
            )
        out.append(dim % input_dim)
    if len(set(out)) != len(out):
        raise ValueError(f"{call}: coordinate indices must be distinct, got {list(dims)}")
    return tuple(out)
