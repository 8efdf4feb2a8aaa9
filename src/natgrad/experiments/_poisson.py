"""Poisson problem on the unit square for physics-informed networks: data, network, residuals, error.

−Δu = f on Ω = (0, 1)²,  u = 0 on ∂Ω,  with the solution u*(x, y) = sin(πx) sin(πy), so f = 2π² u*.

The residual vector of a network u_θ on interior points x_i (N_Ω of them) and boundary points b_j (N_∂) is

    r(θ) = ( (Δu_θ(x_i) + f(x_i)) / √N_Ω ,  u_θ(b_j) / √N_∂ ),

so ½‖r‖² = ½·mean_i (Δu_θ + f)² + ½·mean_j u_θ², the usual PINN loss. The Laplacian Δu_θ(x) is the trace of the
input Hessian, computed with ``torch.func.hessian`` and vectorised over points with ``torch.func.vmap``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.func import hessian, vmap

Params = dict[str, torch.Tensor]
PointFunction = Callable[[Params, torch.Tensor], torch.Tensor]


def exact_solution(points: torch.Tensor) -> torch.Tensor:
    """u*(x, y) = sin(πx) sin(πy) at points of shape (N, 2)."""
    return torch.sin(math.pi * points[:, 0]) * torch.sin(math.pi * points[:, 1])


def source(points: torch.Tensor) -> torch.Tensor:
    """f = −Δu* = 2π² sin(πx) sin(πy)."""
    return 2 * math.pi**2 * exact_solution(points)


def tanh_mlp(
    widths: tuple[int, ...], dtype: torch.dtype, seed: int, init_std: float = 0.1, init: str = "gaussian"
) -> torch.nn.Sequential:
    """A tanh network 2 → widths → 1 with parameters drawn from a generator seeded with ``seed``.

    Args:
        widths: hidden widths.
        dtype: parameter dtype.
        seed: seed of the draw.
        init_std: standard deviation of the ``"gaussian"`` initialisation.
        init: ``"gaussian"``: every weight and bias from N(0, init_std²) (std 0.1 is the initialisation of
            Müller & Zeinhofer's energy natural gradient code); ``"xavier"``: weights of a layer with fan-in
            m and fan-out n from N(0, 2 / (m + n)) (Glorot normal), biases zero.

    Raises:
        ValueError: an unknown ``init``.
    """
    if init not in ("gaussian", "xavier"):
        raise ValueError(f"tanh_mlp: init must be 'gaussian' or 'xavier', got {init!r}")
    generator = torch.Generator().manual_seed(seed)
    layers: list[torch.nn.Module] = []
    fan_in = 2
    for width in widths:
        layers += [torch.nn.Linear(fan_in, width), torch.nn.Tanh()]
        fan_in = width
    layers.append(torch.nn.Linear(fan_in, 1))
    model = torch.nn.Sequential(*layers).to(dtype)
    with torch.no_grad():
        for layer in model:
            if not isinstance(layer, torch.nn.Linear):
                continue
            fan_out, fan_in = layer.weight.shape
            std = init_std if init == "gaussian" else math.sqrt(2.0 / (fan_in + fan_out))
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator, dtype=dtype) * std)
            bias = torch.randn(layer.bias.shape, generator=generator, dtype=dtype) * std
            layer.bias.copy_(bias if init == "gaussian" else torch.zeros_like(bias))
    return model


def interior_grid(points_per_side: int, dtype: torch.dtype) -> torch.Tensor:
    """Tensor grid of points_per_side² interior points (cell centres of a uniform grid), shape (N, 2)."""
    t = (torch.arange(points_per_side, dtype=dtype) + 0.5) / points_per_side
    x, y = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)


def boundary_points(points_per_edge: int, dtype: torch.dtype) -> torch.Tensor:
    """points_per_edge equispaced points on each of the four edges (corners once), shape (4·points_per_edge, 2)."""
    t = torch.arange(points_per_edge, dtype=dtype) / points_per_edge
    zeros, ones = torch.zeros_like(t), torch.ones_like(t)
    edges = [
        torch.stack([t, zeros], 1),
        torch.stack([ones, t], 1),
        torch.stack([1 - t, ones], 1),
        torch.stack([zeros, 1 - t], 1),
    ]
    return torch.cat(edges, 0)


def scalar_network(forward: Callable[..., torch.Tensor]) -> PointFunction:
    """u(params, x) for one point x of shape (2,), from ``forward(params, batch)`` on batches (N, 2)."""
    return lambda params, x: forward(params, x.unsqueeze(0)).reshape(())


def laplacian(u: PointFunction, params: Params, points: torch.Tensor) -> torch.Tensor:
    """Δu(x) = tr ∇²_x u(params, x) at each of the points (N, 2), via torch.func.hessian and vmap."""
    hess = vmap(hessian(u, argnums=1), in_dims=(None, 0))(params, points)  # (N, 2, 2)
    return hess.diagonal(dim1=-2, dim2=-1).sum(-1)


def tanh_mlp_value_and_laplacian(
    layers: list[tuple[torch.Tensor, torch.Tensor]], points: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """u and Δu of a tanh MLP at points (N, 2) by forward propagation of (h, ∇h, Δh) through the layers.

    Linear layer h ↦ W h + b: ∇h ↦ ∇h Wᵀ, Δh ↦ Δh Wᵀ. Tanh a = tanh(h): ∇a = tanh'(h) ∇h,
    Δa = tanh''(h) |∇h|² + tanh'(h) Δh, with tanh' = 1 − a², tanh'' = −2 a (1 − a²). Same numbers as the
    torch.func Hessian trace, with plain batched tensor operations (much cheaper to differentiate in θ).

    Args:
        layers: [(W, b), ...] of the linear layers, tanh between them, none after the last.
        points: (N, 2).
    """
    n, dim = points.shape
    h = points
    grad = torch.eye(dim, dtype=points.dtype, device=points.device).expand(
        n, dim, dim
    )  # ∂h/∂x, (N, dim, width)
    lap = torch.zeros(n, dim, dtype=points.dtype, device=points.device)
    for index, (weight, bias) in enumerate(layers):
        h, grad, lap = h @ weight.T + bias, grad @ weight.T, lap @ weight.T
        if index < len(layers) - 1:
            a = torch.tanh(h)
            d1 = 1 - a * a
            lap = -2 * a * d1 * (grad * grad).sum(1) + d1 * lap
            grad = d1.unsqueeze(1) * grad
            h = a
    return h.squeeze(-1), lap.squeeze(-1)


def residuals_from(
    value_and_laplacian: Callable[[Params, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    interior: torch.Tensor,
    boundary: torch.Tensor,
) -> Callable[[Params], torch.Tensor]:
    """params ↦ r(θ) = ((Δu + f)(interior)/√N_Ω, u(boundary)/√N_∂), one vector of N_Ω + N_∂ entries.

    Args:
        value_and_laplacian: (params, points) ↦ (u, Δu) at the points.
        interior: (N_Ω, 2) collocation points.
        boundary: (N_∂, 2) boundary points.
    """
    f_interior = source(interior)
    scale_interior = 1.0 / math.sqrt(interior.shape[0])
    scale_boundary = 1.0 / math.sqrt(boundary.shape[0])

    def residual(params: Params) -> torch.Tensor:
        r_interior = (value_and_laplacian(params, interior)[1] + f_interior) * scale_interior
        r_boundary = value_and_laplacian(params, boundary)[0] * scale_boundary
        return torch.cat([r_interior, r_boundary])

    return residual


def torch_func_value_and_laplacian(
    u: PointFunction,
) -> Callable[[Params, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(params, points) ↦ (u, Δu) with Δu from torch.func.hessian (any network u(params, x))."""
    return lambda params, points: (vmap(u, in_dims=(None, 0))(params, points), laplacian(u, params, points))


def residuals(
    u: PointFunction, interior: torch.Tensor, boundary: torch.Tensor
) -> Callable[[Params], torch.Tensor]:
    """The residual vector r(θ) of any network u(params, x), with torch.func input derivatives."""
    return residuals_from(torch_func_value_and_laplacian(u), interior, boundary)


def relative_l2_error(u: PointFunction, params: Params, points: torch.Tensor) -> float:
    """‖u_θ − u*‖₂ / ‖u*‖₂ over the given test points."""
    with torch.no_grad():
        values = vmap(u, in_dims=(None, 0))(params, points)
        exact = exact_solution(points)
        return float(torch.linalg.vector_norm(values - exact) / torch.linalg.vector_norm(exact))
