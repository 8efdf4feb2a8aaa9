"""Bridge from the engine's metrics to the structured route: the Moore–Penrose natural gradient of a module.

``factor_for`` turns an engine metric into the kernel's factor; ``structured_natural_gradient`` is a shortcut to
``natural_gradient(..., method="structured")`` from a module and its inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from natgrad.metrics import LocalMetric, Metric
from natgrad.metrics._base import DiagonalLocal
from natgrad.metrics._categorical import _CategoricalLocal


def factor_for(local: LocalMetric, output: Tensor) -> Tensor:
    """The factor of an engine metric in the structured route's form.

    Per-example blocks (N, C, C) for the categorical Fisher over (N, C) logits and for diagonal metrics
    (Euclidean, Gaussian, Bernoulli, Fisher–Rao); otherwise the dense (n, r) factor B.
    """
    n_ex, per = output.shape[0], output[0].numel()
    if isinstance(local, _CategoricalLocal) and output.dim() == 2:
        return local._blocks()
    if isinstance(local, DiagonalLocal):
        return torch.diag_embed(local.root.reshape(n_ex, per))
    return local.factor()


def structured_natural_gradient(
    module: nn.Module,
    inputs: Any,
    loss: Callable[[Tensor], Tensor],
    metric: Metric,
    rtol: float | None = None,
    chunk_size: int | None = None,
) -> tuple[dict[str, Tensor], int]:
    """Moore–Penrose v = G⁺∇ through the structured kernel K = A Aᵀ: ``natural_gradient(method="structured")``.

    v = Aᵀ K⁺ c when ∇z L = B c, else v = Aᵀ K⁺² A∇, with the engine's cutoff λ > rtol·λ_max on K's
    eigenvalues. Kept as a shortcut from (module, inputs); ``chunk_size`` is accepted for compatibility and
    does not change the result.

    Returns:
        (direction as a dict of parameter tensors, numerical rank).
    """
    from natgrad.linalg import MoorePenrose
    from natgrad.models import from_module
    from natgrad.natural_gradient import natural_gradient

    del chunk_size
    phi, params = from_module(module, inputs)
    res = natural_gradient(phi, params, loss, metric, MoorePenrose(rtol), method="structured")
    return res.direction, int(res.rank)
