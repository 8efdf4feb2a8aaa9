"""Low-rank matrix completion problems: a rank-r target, a set of observed entries, and error metrics.

The setting follows Arora et al. (2019): W* = U Vᵀ with Gaussian U, V (n × r), rescaled so that
‖W*‖_F = n (entries of unit mean square), and Ω a uniformly random set of entries drawn without replacement.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CompletionProblem:
    """A matrix completion instance.

    Attributes:
        target: W*, shape (n, n).
        mask: boolean (n, n), True on the observed entries Ω.
    """

    target: torch.Tensor
    mask: torch.Tensor

    @property
    def size(self) -> int:
        """n, the side length of the square target."""
        return self.target.shape[0]

    @property
    def num_observed(self) -> int:
        """|Ω|."""
        return int(self.mask.sum())

    @property
    def observed_index(self) -> torch.Tensor:
        """Flat indices (into ``target.flatten()``) of Ω, in increasing order."""
        return torch.nonzero(self.mask.flatten(), as_tuple=False).flatten()

    def observed_loss(self, end_to_end: torch.Tensor) -> torch.Tensor:
        """L(E) = ½ Σ_{(i,j)∈Ω} (E_ij − W*_ij)², the training loss on the full matrix E."""
        residual = torch.where(self.mask, end_to_end - self.target, torch.zeros_like(end_to_end))
        return 0.5 * (residual**2).sum()

    def observed_residual(self, end_to_end: torch.Tensor) -> torch.Tensor:
        """P_Ω(E − W*): the residual on observed entries, zero elsewhere (= ∇_E L)."""
        return torch.where(self.mask, end_to_end - self.target, torch.zeros_like(end_to_end))


def make_completion_problem(
    size: int,
    rank: int,
    num_observed: int,
    *,
    seed: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> CompletionProblem:
    """Draw W* = c·U Vᵀ (U, V ∈ R^{n×r} standard Gaussian, c so that ‖W*‖_F = n) and Ω of size m.

    Args:
        size: n, the side of the square matrix.
        rank: r, the rank of W* (1 <= r <= n).
        num_observed: m = |Ω|, 1 <= m <= n², drawn uniformly without replacement.
        seed: seed of the torch generator used for U, V and Ω.
        dtype: floating dtype of the target.
        device: device of the returned tensors.

    Returns:
        The problem, with ``target`` and ``mask`` on ``device``.
    """
    if size < 1 or not 1 <= rank <= size:
        raise ValueError(
            f"make_completion_problem: expected size >= 1 and 1 <= rank <= size, got size={size}, rank={rank}"
        )
    if not 1 <= num_observed <= size * size:
        raise ValueError(
            f"make_completion_problem: num_observed must lie in [1, size²] = [1, {size * size}], "
            f"got {num_observed}"
        )
    generator = torch.Generator().manual_seed(seed)
    left = torch.randn(size, rank, generator=generator, dtype=torch.float64)
    right = torch.randn(size, rank, generator=generator, dtype=torch.float64)
    target = left @ right.T
    target = target * (size / torch.linalg.matrix_norm(target))
    flat_mask = torch.zeros(size * size, dtype=torch.bool)
    flat_mask[torch.randperm(size * size, generator=generator)[:num_observed]] = True
    return CompletionProblem(
        target=target.to(dtype=dtype, device=device), mask=flat_mask.reshape(size, size).to(device)
    )


def completion_errors(end_to_end: torch.Tensor, problem: CompletionProblem) -> dict[str, float]:
    """Mean squared errors of E against W*.

    Returns:
        ``train_mse`` = mean over Ω of (E − W*)², ``test_mse`` = the same mean over the unobserved entries Ωᶜ
        (NaN when Ω is everything), ``all_mse`` = the mean over all n² entries, and ``unobserved_variance`` =
        mean over Ωᶜ of W*² (the test error of predicting 0).
    """
    if end_to_end.shape != problem.target.shape:
        raise ValueError(
            f"completion_errors: expected E of shape {tuple(problem.target.shape)}, "
            f"got {tuple(end_to_end.shape)}"
        )
    squared = (end_to_end.detach() - problem.target) ** 2
    unobserved = ~problem.mask
    nan = float("nan")
    return {
        "train_mse": float(squared[problem.mask].mean()),
        "test_mse": float(squared[unobserved].mean()) if unobserved.any() else nan,
        "all_mse": float(squared.mean()),
        "unobserved_variance": float((problem.target[unobserved] ** 2).mean()) if unobserved.any() else nan,
    }
