"""Structured route: exact output-side kernels of networks assembled layer by layer, never forming J."""

from ._contract import KernelFactors, SharedLinearFactor
from ._estimate import factor_bytes
from ._factors import BlockFactor, categorical_fisher_factor, categorical_mc_factor, normalise_factor
from ._kernel import StructuredContext, emit_factors, structured_kernel, structured_vjp
from ._modules import structure_of

__all__ = [
    "BlockFactor",
    "KernelFactors",
    "SharedLinearFactor",
    "StructuredContext",
    "categorical_fisher_factor",
    "categorical_mc_factor",
    "emit_factors",
    "factor_bytes",
    "normalise_factor",
    "structure_of",
    "structured_kernel",
    "structured_vjp",
]
