"""Structured route: exact output-side kernels of networks assembled layer by layer, never forming J."""

from ._chunked import ChunkedAssembly
from ._contract import KernelFactors, SharedLinearFactor, cross_kernel
from ._estimate import ChunkPlan, chunk_bytes, factor_bytes, plan_chunks
from ._factors import BlockFactor, categorical_fisher_factor, categorical_mc_factor, normalise_factor
from ._kernel import StructuredContext, emit_factors, structured_kernel, structured_vjp
from ._modules import structure_of

__all__ = [
    "BlockFactor",
    "ChunkPlan",
    "ChunkedAssembly",
    "KernelFactors",
    "SharedLinearFactor",
    "StructuredContext",
    "categorical_fisher_factor",
    "categorical_mc_factor",
    "chunk_bytes",
    "cross_kernel",
    "emit_factors",
    "factor_bytes",
    "normalise_factor",
    "plan_chunks",
    "structure_of",
    "structured_kernel",
    "structured_vjp",
]
