"""Per-layer pieces of the structured kernel K = A Aᵀ, A = Bᵀ J, assembled without forming J.

Kernel columns are indexed a = (i, j): example i, factor column j, a = i·k + j. For each module call the
signal s_a is the backpropagated cotangent at the call's output, non-zero only on example i (examples are
assumed independent through the network). Two shapes of contribution occur:

* shared linear: the parameter block W (O × P) enters as y_t = W x_t at positions t = 1…T (Linear over
  extra axes, Conv patches, Embedding as one-hot rows), so the Jacobian row of a is G_a = Σ_t s_{a,t} x_{i,t}ᵀ
  and K_ab = Σ_{t,t'} (s_{a,t}·s_{b,t'}) (x_{i,t}·x_{i',t'}). For T = 1 this is (S Sᵀ) ⊙ (X Xᵀ) expanded
  over the factor columns; for large T the rows G_a are formed in chunks and K = G Gᵀ, whichever costs less.
  A bias is the extra input coordinate 1.
* direct rows: the Jacobian rows of a few parameters are cheap to form (affine normalisation parameters) or
  are obtained by batched vector-Jacobian products (the generic fallback); K += G Gᵀ.
"""

from __future__ import annotations

import torch


def _example_slices(num_examples: int, examples_per_chunk: int | None) -> list[slice]:
    step = num_examples if not examples_per_chunk else max(1, examples_per_chunk)
    return [slice(i, min(i + step, num_examples)) for i in range(0, num_examples, step)]


def shared_linear_cost(num_examples: int, width: int, positions: int, inputs: int, outputs: int) -> dict:
    """Multiply-add counts of the two contraction orders for a shared linear block (r = N·k)."""
    r = num_examples * width
    pair = positions**2 * (r * r * outputs + num_examples**2 * inputs)
    rows = r * positions * outputs * inputs + r * r * outputs * inputs
    return {"pair": pair, "rows": rows}


def add_shared_linear(
    kernel: torch.Tensor,
    x: torch.Tensor,
    s: torch.Tensor,
    examples_per_chunk: int | None = None,
) -> str:
    """Add the contribution of one shared linear block to ``kernel`` in place.

    Args:
        kernel: (r, r) accumulator, r = N·k.
        x: layer inputs (N, T, P) (with a trailing 1 when there is a bias).
        s: signals (N, k, T, O).
        examples_per_chunk: examples per chunk when Jacobian rows are formed.

    Returns:
        The contraction used: ``"pair"`` or ``"rows"``.
    """
    num_examples, width, positions, outputs = s.shape
    inputs = x.shape[2]
    cost = shared_linear_cost(num_examples, width, positions, inputs, outputs)
    if positions == 1 or cost["pair"] <= cost["rows"]:
        _add_pair(kernel, x, s)
        return "pair"
    _add_rows_blockwise(kernel, x, s, examples_per_chunk)
    return "rows"


def _add_pair(kernel: torch.Tensor, x: torch.Tensor, s: torch.Tensor) -> None:
    """K += Σ_{t,t'} (S_t S_t'ᵀ) ⊙ (X_t X_t'ᵀ ⊗ 1 1ᵀ)."""
    num_examples, width, positions, outputs = s.shape
    flat = s.reshape(num_examples * width, positions, outputs)
    blocks = kernel.view(num_examples, width, num_examples, width)  # K[(i, a), (j, b)]
    for t in range(positions):
        for u in range(positions):
            gram_x = x[:, t] @ x[:, u].T  # (N, N), broadcast over the factor columns a, b
            signal = (flat[:, t] @ flat[:, u].T).view(num_examples, width, num_examples, width)
            blocks.add_(signal * gram_x[:, None, :, None])


def jacobian_rows(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Jacobian rows G_a = Σ_t s_{a,t} x_{i,t}ᵀ, flattened to (n_chunk·k, O·P)."""
    rows = torch.einsum("nkto,ntp->nkop", s, x)
    return rows.reshape(rows.shape[0] * rows.shape[1], -1)


def _add_rows_blockwise(
    kernel: torch.Tensor, x: torch.Tensor, s: torch.Tensor, examples_per_chunk: int | None
) -> None:
    """K += G Gᵀ with G formed chunk by chunk (rows of later chunks recomputed to bound memory)."""
    width = s.shape[1]
    slices = _example_slices(s.shape[0], examples_per_chunk)
    for a, sa in enumerate(slices):
        rows_a = jacobian_rows(x[sa], s[sa])
        ra = slice(sa.start * width, sa.stop * width)
        kernel[ra, ra] += rows_a @ rows_a.T
        for sb in slices[:a]:
            rb = slice(sb.start * width, sb.stop * width)
            block = rows_a @ jacobian_rows(x[sb], s[sb]).T
            kernel[ra, rb] += block
            kernel[rb, ra] += block.T


def add_rows(kernel: torch.Tensor, rows: torch.Tensor) -> None:
    """K += G Gᵀ for Jacobian rows G (r, p)."""
    kernel.add_(rows @ rows.T)
