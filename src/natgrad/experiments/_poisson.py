"""The PDE problems of the reproduction experiments, written with the public `natgrad.pde` API.

* Poisson on the unit square, −Δu = f, u = 0 on ∂Ω, u*(x, y) = sin(πx) sin(πy), f = 2π² u*;
* Poisson on the unit cube of R⁵, −Δu = f, u = u* on ∂Ω, u*(x) = Σᵢ cos(πxᵢ), f = π² u*;
* heat on (x, t) ∈ (0, 1)², u_t = κ u_xx with κ = 1/4, u(0, t) = u(1, t) = 0, u(x, 0) = sin(πx),
  u* = exp(−κπ² t) sin(πx).

Each builder returns the `pde.Problem` (network from a seeded generator, collocation points) and the
relative L2 error against u* by Gauss–Legendre quadrature; the 5-D problem's points also come as a sampler,
for fresh points during training.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from natgrad import pde

DT = torch.float64
HEAT_KAPPA = 0.25


def _network(input_dim: int, widths: tuple[int, ...], seed: int) -> pde.Network:
    generator = torch.Generator().manual_seed(seed)
    return pde.Network(pde.mlp([input_dim, *widths, 1], generator=generator))


def _error(reference: Callable[[torch.Tensor], torch.Tensor], box, points_per_dim: int):
    points, weights = pde.gauss_legendre(points_per_dim, box)
    return lambda problem: pde.l2_error(problem.network, problem.network.params(), reference, points, weights)


def sin_product(points: torch.Tensor) -> torch.Tensor:
    """u*(x, y) = sin(πx) sin(πy)."""
    return torch.sin(math.pi * points[:, 0]) * torch.sin(math.pi * points[:, 1])


def poisson_2d(widths: tuple[int, ...], interior_per_side: int, boundary_per_edge: int, seed: int):
    """(make_problem, error_of) for the 2-D Poisson problem on a grid of interior and boundary points."""
    box = [(0.0, 1.0), (0.0, 1.0)]
    interior = pde.grid(interior_per_side, box)
    edge = pde.box_boundary_grid(boundary_per_edge, box)

    def make() -> pde.Problem:
        return pde.Problem(
            _network(2, widths, seed),
            [
                pde.interior(interior, lambda jet, x: jet.laplacian() + 2 * math.pi**2 * sin_product(x)),
                pde.boundary(edge, lambda jet, x: jet.value),
            ],
        )

    return make, _error(sin_product, box, 40)


def cos_sum(points: torch.Tensor) -> torch.Tensor:
    """u*(x) = Σᵢ cos(πxᵢ)."""
    return torch.cos(math.pi * points).sum(1)


CUBE_5D = [(0.0, 1.0)] * 5


def poisson_5d_points(interior: int, boundary: int):
    """generator -> {"interior": (interior, 5) uniform in (0, 1)⁵, "boundary": (boundary, 5) uniform on ∂}."""

    def draw(generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {
            "interior": pde.uniform(interior, CUBE_5D, generator),
            "boundary": pde.uniform_boundary(boundary, CUBE_5D, generator),
        }

    return draw


def poisson_5d_seed(seed: int) -> int:
    """The seed of the generator the 5-D collocation points come from (fixed, or the first draw)."""
    return seed + 1000


def poisson_5d(widths: tuple[int, ...], interior: int, boundary: int, seed: int):
    """(make_problem, error_of) for the 5-D Poisson problem on the first draw of `poisson_5d_points`."""
    points = poisson_5d_points(interior, boundary)(torch.Generator().manual_seed(poisson_5d_seed(seed)))

    def make() -> pde.Problem:
        return pde.Problem(
            _network(5, widths, seed),
            [
                pde.interior(points["interior"], lambda jet, x: jet.laplacian() + math.pi**2 * cos_sum(x)),
                pde.boundary(points["boundary"], lambda jet, x: jet.value - cos_sum(x)),
            ],
        )

    return make, _error(cos_sum, CUBE_5D, 6)


def heat_solution(points: torch.Tensor) -> torch.Tensor:
    """u*(x, t) = exp(−κπ²t) sin(πx)."""
    return torch.exp(-HEAT_KAPPA * math.pi**2 * points[:, 1]) * torch.sin(math.pi * points[:, 0])


def heat_1d(widths: tuple[int, ...], interior_per_side: int, edge_points: int, seed: int):
    """(make_problem, error_of) for the 1-D heat equation; points are (x, t), time is coordinate 1."""
    box = [(0.0, 1.0), (0.0, 1.0)]
    interior = pde.grid(interior_per_side, box)
    t = (torch.arange(edge_points, dtype=DT) + 0.5) / edge_points
    initial = torch.stack([t, torch.zeros_like(t)], 1)
    lateral = torch.cat([torch.stack([torch.zeros_like(t), t], 1), torch.stack([torch.ones_like(t), t], 1)])
    heat = pde.LinearOperator(laplacian=-HEAT_KAPPA, laplacian_dims=(0,), advection=(0.0, 1.0))

    def make() -> pde.Problem:
        return pde.Problem(
            _network(2, widths, seed),
            [
                pde.interior(interior, lambda jet, x: heat(jet), laplacian_dims=(0,)),
                pde.initial(initial, lambda jet, x: jet.value - torch.sin(math.pi * x[:, 0])),
                pde.boundary(lateral, lambda jet, x: jet.value),
            ],
        )

    return make, _error(heat_solution, box, 40)
