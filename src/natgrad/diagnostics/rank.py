"""Submersion test: is the numerical rank of J = Dφ(ξ) equal to the model dimension?"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from natgrad.diagnostics._dense import dense_jacobian, singular_value_cutoff


@dataclass(frozen=True)
class SubmersionReport:
    """Outcome of :func:`submersion_test`.

    Attributes:
        rank: numerical rank of J, #{σ_i > rtol·σ_max}.
        model_dim: the dimension of the model M given by the caller.
        is_submersion: ``rank == model_dim`` (then J·G⁻·∇ is grad^M L for every loss).
        singular_values: σ_1 ≥ σ_2 ≥ … of J, relative to σ_1.
        rtol: the cutoff used.
        n_params: d, the number of parameters.
        n_outputs: n, the number of flattened outputs.
    """

    rank: int
    model_dim: int
    is_submersion: bool
    singular_values: tuple[float, ...]
    rtol: float
    n_params: int
    n_outputs: int


def submersion_test(
    phi: Callable[[Any], torch.Tensor], params: Any, model_dim: int, rtol: float | None = None
) -> SubmersionReport:
    """Compare the numerical rank of J = Dφ(ξ) with dim M.

    φ is a submersion onto M at ξ iff rank J = dim M; only then does the pushforward of the natural
    parameter gradient equal the natural gradient on the model for every loss.

    Args:
        phi: parametrisation, params ↦ model point.
        params: ξ, a Tensor or dict of Tensors.
        model_dim: dim M, 0 ≤ dim M ≤ n.
        rtol: relative cutoff on singular values of J; default max(n, d)·eps.

    Returns:
        A :class:`SubmersionReport`.
    """
    if isinstance(model_dim, bool) or not isinstance(model_dim, int):
        raise TypeError(f"submersion_test: model_dim must be an int, got {type(model_dim).__name__}")
    jac = dense_jacobian(phi, params)
    n, d = jac.shape
    if not 0 <= model_dim <= n:
        raise ValueError(
            f"submersion_test: model_dim must satisfy 0 <= model_dim <= n = {n} (the number of outputs), "
            f"got {model_dim}"
        )
    if rtol is not None and not rtol >= 0:
        raise ValueError(f"submersion_test: rtol must be >= 0, got {rtol}")
    cut = singular_value_cutoff(jac) if rtol is None else float(rtol)
    s = torch.linalg.svdvals(jac)
    top = float(s.max()) if s.numel() else 0.0
    rank = int((s > cut * top).sum()) if top > 0 else 0
    rel = tuple(float(x) / top for x in s) if top > 0 else tuple(0.0 for _ in s)
    return SubmersionReport(
        rank=rank,
        model_dim=model_dim,
        is_submersion=rank == model_dim,
        singular_values=rel,
        rtol=cut,
        n_params=d,
        n_outputs=n,
    )
