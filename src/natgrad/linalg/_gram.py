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
    if r <= block_rows:
        kernel = a @ a.T
        return (kernel + kernel.T) / 2  # the same products either way round, so only rounding differs
    kernel = a.new_empty(r, r)
    for start in range(0, r, block_rows):
        stop = min(start + block_rows, r)
        block = a[start:stop] @ a[:stop].T  # rows start:stop against rows 0:stop
        kernel[start:stop, :stop] = block
        kernel[:start, start:stop] = block[:, :start].T
    for start in range(0, r, block_rows):
        stop = min(start + block_rows, r)
        square = kernel[start:stop, start:stop]  # a diagonal block: symmetrise its own rounding
        kernel[start:stop, start:stop] = (square + square.T) / 2
    return kernel
