"""Exact natural gradients of a batch sharded over processes, on ``torch.distributed``.

Each rank holds the same parameters and its own shard of the batch; :func:`natural_gradient` returns on every
rank the natural gradient of the whole batch, equal to rounding to ``natgrad.natural_gradient`` on the
concatenated batch in one process. Two strategies: "kernel" (rank 0 gathers the rows of A = BᵀJ and solves
densely) and "matrix-free" (conjugate gradients with one all-reduce of d numbers per operator product).
:class:`NGD` is ``natgrad.optim.NGD`` with those directions; :func:`shutdown` ends a run cleanly.
"""

from natgrad.distributed._comm import DistributedError
from natgrad.distributed._engine import DistributedNaturalGradient, natural_gradient
from natgrad.distributed._matrix_free import Certificate
from natgrad.distributed._optim import NGD, DistributedFactorize
from natgrad.distributed._shutdown import shutdown

__all__ = [
    "Certificate",
    "DistributedError",
    "DistributedFactorize",
    "DistributedNaturalGradient",
    "NGD",
    "natural_gradient",
    "shutdown",
]
