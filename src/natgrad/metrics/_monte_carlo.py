"""Monte-Carlo Fisher factors: g ≈ (1/k) Σ_j s_j s_jᵀ per example from k sampled score vectors s_j."""

from __future__ import annotations

import torch
from torch import Tensor


def monte_carlo_blocks(scores: Tensor) -> Tensor:
    """Per-example factor blocks of the Monte-Carlo Fisher from k score draws.

    Args:
        scores: (k, N, ...) score vectors s_ji = ∇z(−log p(y_j | z_i)), y_j ~ p(· | z_i), k draws per example.

    Returns:
        (N, C, k) with C the outputs per example: column j of block i is s_ji/√k, so
        B_i B_iᵀ = (1/k) Σ_j s_ji s_jiᵀ, whose expectation is the Fisher g_i.
    """
    k, n_examples = scores.shape[0], scores.shape[1]
    return scores.reshape(k, n_examples, -1).permute(1, 2, 0) / k**0.5


def categorical_scores(logits: Tensor, samples: int, generator: torch.Generator | None = None) -> Tensor:
    """k = ``samples`` score vectors p − e_y per row of (N, C) logits, y ~ Categorical(softmax(logits)).

    Returns (k, N, C). Draws are ``torch.multinomial(p, k, replacement=True, generator=generator)``.
    """
    p = torch.softmax(logits.detach(), dim=-1)
    labels = torch.multinomial(p, samples, replacement=True, generator=generator)  # (N, k)
    onehot = torch.nn.functional.one_hot(labels, p.shape[-1]).to(p.dtype)  # (N, k, C)
    return (p.unsqueeze(1) - onehot).transpose(0, 1)
