"""natgrad: exact natural gradients in overparametrised models.

The natural parameter gradient v = G⁻ ∇ξ(L∘φ) with G = Jᵀ g J, for any parametrisation φ, output metric g and
generalized inverse G⁻, computed by the cheapest exact route and checkable against a float64 reference.
"""

from natgrad import metrics, reference
from natgrad._tree import flatten_params, num_params, unflatten_like
from natgrad.linalg import Damped, GInverse, MinNorm, MoorePenrose, default_rtol
from natgrad.models import from_module, jacobian
from natgrad.natural_gradient import NaturalGradient, choose_route, natural_gradient

__version__ = "0.1.0"

__all__ = [
    "Damped",
    "GInverse",
    "MinNorm",
    "MoorePenrose",
    "NaturalGradient",
    "choose_route",
    "default_rtol",
    "flatten_params",
    "from_module",
    "jacobian",
    "metrics",
    "natural_gradient",
    "num_params",
    "reference",
    "unflatten_like",
]
