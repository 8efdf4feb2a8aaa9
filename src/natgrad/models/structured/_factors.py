"""Output-side metric factors for the structured kernel.

A factor B (n × r) describes the output metric g = B Bᵀ on the flattened outputs z ∈ R^n, n = N·C. The
structured route works with the per-example block form: example i owns the rows i·C … i·C + C − 1 of z and
the block B_i (C × k), so B = blockdiag(B_1, …, B_N) and r = N·k, column (i, j) having index i·k + j.
A dense n × r factor is also accepted; it is applied to the identity kernel as Bᵀ K_I B.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from natgrad.metrics import categorical_factor_blocks, categorical_scores, monte_carlo_blocks

Factor = torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


@dataclass(frozen=True)
class BlockFactor:
    """A per-example block factor.

    Attributes:
        blocks: tensor (N, C, k); ``blocks[i]`` is B_i, so g_i = B_i B_iᵀ on example i's C outputs.
            ``None`` stands for the identity (k = C) without storing it.
        num_examples: N.
        num_outputs: C, the outputs per example.
        width: k, the columns per example.
    """

    blocks: torch.Tensor | None
    num_examples: int
    num_outputs: int
    width: int

    def cotangents(self, start: int, stop: int, like: torch.Tensor) -> torch.Tensor:
        """Columns ``start … stop − 1`` of every block, as cotangents of shape (stop − start, N, C)."""
        if self.blocks is not None:
            return self.blocks[:, :, start:stop].permute(2, 0, 1)
        eye = torch.eye(self.num_outputs, dtype=like.dtype, device=like.device)[start:stop]
        return eye[:, None, :].expand(stop - start, self.num_examples, self.num_outputs)

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        """B y for y of length N·k, returned as (N, C)."""
        y = y.reshape(self.num_examples, self.width)
        if self.blocks is None:
            return y
        return torch.einsum("nck,nk->nc", self.blocks, y)


def normalise_factor(
    factor: Factor, output: torch.Tensor, call: str
) -> tuple[BlockFactor, torch.Tensor | None]:
    """Turn the user's factor into a block factor, plus a dense factor still to apply (or None).

    Args:
        factor: None (identity), a tensor (N, C, k) of per-example blocks, a dense tensor (n, r), or a
            callable taking the detached output (N, …) and returning one of these.
        output: the model output, shape (N, …).
        call: the public function name, for error messages.

    Returns:
        ``(block, dense)``: the kernel is built with ``block``; when ``dense`` is not None the caller applies
        it afterwards as denseᵀ K denseᵀ (``block`` is then the identity).
    """
    if output.dim() == 0:
        raise ValueError(f"{call}: the model output must have a leading batch axis (N, ...), got a scalar")
    num_examples = output.shape[0]
    num_outputs = output[0].numel() if num_examples > 0 else 0
    identity = BlockFactor(None, num_examples, num_outputs, num_outputs)
    if callable(factor) and not isinstance(factor, torch.Tensor):
        factor = factor(output.detach())
    if factor is None:
        return identity, None
    if not isinstance(factor, torch.Tensor):
        raise TypeError(
            f"{call}: output_factor must be None, a tensor (N, C, k) or (n, r), or a callable returning one, "
            f"got {type(factor).__name__}"
        )
    factor = factor.to(dtype=output.dtype, device=output.device)
    if factor.dim() == 3:
        if factor.shape[:2] != (num_examples, num_outputs):
            raise ValueError(
                f"{call}: a block output_factor must have shape (N, C, k) = "
                f"({num_examples}, {num_outputs}, k) for an output of shape {tuple(output.shape)}, "
                f"got {tuple(factor.shape)}"
            )
        return BlockFactor(factor, num_examples, num_outputs, factor.shape[2]), None
    if factor.dim() == 2:
        n = num_examples * num_outputs
        if factor.shape[0] != n:
            raise ValueError(
                f"{call}: a dense output_factor must have shape (n, r) with n = N·C = {n}, "
                f"got {tuple(factor.shape)}"
            )
        return identity, factor
    raise ValueError(
        f"{call}: output_factor must have 3 axes (N, C, k) or 2 axes (n, r), got shape {tuple(factor.shape)}"
    )


def categorical_fisher_factor(logits: torch.Tensor, reduced: bool = True) -> torch.Tensor:
    """Exact factor of the categorical Fisher diag(p) − p pᵀ, p = softmax(logits), per example.

    With ``reduced=False`` the block is B_i = diag(√p) − p √pᵀ (C × C), whose columns are linearly
    dependent (B_i √p = 0), so the kernel is singular. With ``reduced=True`` (default) the block is the
    engine's own factor of ``natgrad.metrics.Categorical`` (:func:`natgrad.metrics.categorical_factor_blocks`),
    diag(√p) Q (C × (C−1)) with Q an orthonormal basis of √p⊥; B_i B_iᵀ is the same matrix and the kernel is
    nonsingular whenever Bᵀ J has full row rank.

    Args:
        logits: (N, C) logits, C ≥ 2.
        reduced: drop the redundant column.

    Returns:
        (N, C, C − 1) if reduced else (N, C, C).
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(
            "categorical_fisher_factor: expects logits of shape (N, C) with C >= 2, "
            f"got {tuple(logits.shape)}"
        )
    if not reduced:
        p = torch.softmax(logits, dim=1)
        sqrt_p = p.sqrt()
        return torch.diag_embed(sqrt_p) - p[:, :, None] * sqrt_p[:, None, :]
    return categorical_factor_blocks(logits)


def categorical_mc_factor(
    logits: torch.Tensor, samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Monte-Carlo factor of the categorical Fisher with ``samples`` sampled outputs per example.

    Column m of block i is (e_{y_m} − p_i)/√k with y_m ~ Categorical(p_i) drawn independently, so
    E[B_i B_iᵀ] = E[(e_y − p)(e_y − p)ᵀ] = diag(p_i) − p_i p_iᵀ: an unbiased estimate of the Fisher,
    not the Fisher itself. The kernel has N·k rows instead of N·C.

    Args:
        logits: (N, C) logits.
        samples: k ≥ 1.
        generator: torch random generator for reproducible draws.

    Returns:
        (N, C, k).
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"categorical_mc_factor: expects logits of shape (N, C) with C >= 2, got {tuple(logits.shape)}"
        )
    if samples < 1:
        raise ValueError(f"categorical_mc_factor: samples must be >= 1, got {samples}")
    return monte_carlo_blocks(-categorical_scores(logits, samples, generator))  # columns (e_y − p)/√k
