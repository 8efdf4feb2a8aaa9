"""Momentum in the dual form: among the solutions of the natural gradient system, the one nearest μ v_prev.

With p = μ v_{k−1} (μ per parameter group) the step direction is

    v_k = p + G⁻ (∇ − G p),

the solution of G v = ∇ closest to p (for Moore–Penrose) or of the damped system (G + λI)(v − p) = ∇ − G p
(for damping λ, the SPRING form). The engine sees the same system through a shifted loss on the outputs:
∇ − G p = Jᵀ(∇_z L − g J p), i.e. the gradient of L̃(z) = L(z) − ⟨w, z⟩ with w = g(z₀) J p held fixed.
For Moore–Penrose, J v_k = J G⁺ ∇: momentum moves parameters only along ker J and never changes the model
step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def shifted_loss(
    loss: Callable[[torch.Tensor], torch.Tensor], shift: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """L̃(z) = L(z) − ⟨shift, z⟩ with ``shift`` = g(z₀) J p detached (so ∇_z L̃ = ∇_z L − g J p)."""
    shift = shift.detach()

    def loss_tilde(z: torch.Tensor) -> torch.Tensor:
        return loss(z) - (shift * z).sum()

    return loss_tilde


def add_prior(
    direction: dict[str, torch.Tensor], prior: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """v = p + G⁻(∇ − G p): the engine returns the second term, this adds p."""
    if prior is None:
        return direction
    return {name: value + prior[name] for name, value in direction.items()}
