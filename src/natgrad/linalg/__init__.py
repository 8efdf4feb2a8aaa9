"""Generalized inverses and matrix-free solvers (torch only)."""

from natgrad.linalg._inverses import Damped, GInverse, Inverse, MinNorm, MoorePenrose, default_rtol
from natgrad.linalg._krylov import KrylovInfo, cg, lsqr
from natgrad.linalg._precision import residual_rtol

__all__ = [
    "Damped",
    "GInverse",
    "Inverse",
    "KrylovInfo",
    "MinNorm",
    "MoorePenrose",
    "cg",
    "default_rtol",
    "lsqr",
    "residual_rtol",
]
