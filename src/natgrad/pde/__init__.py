"""Physics-informed networks trained by energy natural gradients: operators, residuals, points, errors.

Example (−Δu = f on the unit square, u = 0 on the boundary)::

    from natgrad import pde
    net = pde.Network(pde.mlp([2, 64, 1], generator=torch.Generator().manual_seed(0)))
    box = [(0.0, 1.0), (0.0, 1.0)]
    problem = pde.Problem(net, [
        pde.interior(pde.grid(30, box), lambda jet, x: jet.laplacian() + f(x)),
        pde.boundary(pde.box_boundary_grid(30, box), lambda jet, x: jet.value),
    ])
    opt = NGD(net.module.named_parameters(), line_search="grid")
    for _ in range(200):
        opt.step(problem)                  # Gauss–Newton on r(θ) = energy natural gradient

The residual map's Jacobian is built point by point through forward-propagated input derivatives
(`Problem.jacobian`); `Problem.linearize` hands it to ``natgrad.natural_gradient``, whose ``auto`` route
picks the d×d (primal) or N×N (dual) system by size.
"""

from ._errors import gauss_legendre, l2_error
from ._network import Jet, Network, mlp
from ._operators import LinearOperator, divergence, gradient, laplacian, time_derivative, value
from ._problem import Condition, Problem, boundary, initial, interior
from ._sampling import (
    Resampler,
    box_boundary_grid,
    grid,
    sobol,
    sobol_boundary,
    uniform,
    uniform_boundary,
)

__all__ = [
    "Condition",
    "Jet",
    "LinearOperator",
    "Network",
    "Problem",
    "Resampler",
    "boundary",
    "box_boundary_grid",
    "divergence",
    "gauss_legendre",
    "gradient",
    "grid",
    "initial",
    "interior",
    "l2_error",
    "laplacian",
    "mlp",
    "sobol",
    "sobol_boundary",
    "time_derivative",
    "uniform",
    "uniform_boundary",
    "value",
]
