"""AAᵀ from the blocks on and below the diagonal: about half the products, and exactly symmetric.

A plain ``a @ a.T`` multiplies every pair of rows twice (BLAS has no symmetric product in torch) and its
two triangles may differ in the last bit. Row block i times the rows up to block i gives the lower triangle
with (b + 1)/(2b) of the work for b blocks; the upper triangle is the transpose of what was computed.
"""

from __future__ import annotations

from torch import Tensor

# Row blocks of about this many rows: smaller blocks save more products but run at a lower BLAS rate.
BLOCK_ROWS = 512


def row_gram(a: Tensor, block_rows: int = BLOCK_ROWS) -> Tensor:
    """K = A Aᵀ (r × r) for A (r × d), exactly symmetric."""
    if a.ndim != 2:
        raise ValueError(f"row_gram: expected a 2-D matrix, got shape {tuple(a.shape)}")
    if block_rows < 1:
        raise ValueError(f"row_gram: block_rows must be >= 1, got {block_rows}")
    r = a.shape[0]
    kernel = a.new_empty(r, r)
    for start in range(0, r, block_rows):
        stop = min(start + block_rows, r)
        block = a[start:stop] @ a[:stop].T  # rows start:stop against rows 0:stop
        square = block[:, start:]  # the diagonal block: the same products either way round, so symmetrise
        block[:, start:] = (square + square.T) / 2  # its rounding
        kernel[start:stop, :stop] = block
        kernel[:start, start:stop] = block[:, :start].T
    return kernel
