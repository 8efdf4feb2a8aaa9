"""natgrad: exact natural gradients in overparametrised models.

The natural parameter gradient v = G⁻ ∇ξ(L∘φ) with G = Jᵀ g J, for any parametrisation φ, output metric g and
generalized inverse G⁻, computed by the cheapest exact route and checkable against a float64 reference.
"""

from importlib import metadata as _metadata

from natgrad import exceptions, metrics, reference
from natgrad._allocator import keep_freed_memory
from natgrad._factorize import GramFactorization, factorize
from natgrad._result import SolveInfo
from natgrad._tree import Parametrisation, flatten_params, num_params, unflatten_like
from natgrad.exceptions import (
    ConvergenceError,
    FactorizationError,
    InvalidInputError,
    InvalidTypeError,
    MemoryBudgetError,
    NatgradError,
    StructuredUnsupported,
)
from natgrad.linalg import Damped, GInverse, MinNorm, MoorePenrose, default_rtol
from natgrad.models import from_module, jacobian
from natgrad.natural_gradient import NaturalGradient, choose_route, natural_gradient

try:  # the version is written once, in pyproject.toml; the installed metadata carries it here
    __version__ = _metadata.version("natgrad")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "keep_freed_memory",
    "ConvergenceError",
    "Damped",
    "FactorizationError",
    "GInverse",
    "GramFactorization",
    "InvalidInputError",
    "InvalidTypeError",
    "MemoryBudgetError",
    "MinNorm",
    "MoorePenrose",
    "NatgradError",
    "NaturalGradient",
    "Parametrisation",
    "SolveInfo",
    "StructuredUnsupported",
    "choose_route",
    "default_rtol",
    "exceptions",
    "factorize",
    "flatten_params",
    "from_module",
    "jacobian",
    "metrics",
    "natural_gradient",
    "num_params",
    "reference",
    "unflatten_like",
]
