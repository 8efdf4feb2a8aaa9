"""Natural gradient flows ξ̇ = −G⁻∇ (torchdiffeq, optional) and discrete natural gradient steps."""

from natgrad.flows.discrete import natural_gradient_descent
from natgrad.flows.ode import gradient_flow, natural_gradient_flow
from natgrad.flows.trajectory import ParametrisationComparison, Trajectory, compare_parametrisations

__all__ = [
    "ParametrisationComparison",
    "Trajectory",
    "compare_parametrisations",
    "gradient_flow",
    "natural_gradient_descent",
    "natural_gradient_flow",
]
