"""Bridge from the engine's metrics to the structured route: the Moore–Penrose natural gradient of a module.

``structured_natural_gradient`` is the body the engine's ``method="structured"`` route needs: it takes the
module and inputs (the structured route reads layer inputs, so a bare ``phi`` callable is not enough).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from natgrad.metrics import LocalMetric, Metric
from natgrad.metrics._base import DiagonalLocal
from natgrad.metrics._categorical import _CategoricalLocal

from ._kernel import structured_kernel


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
    """Moore–Penrose v = A⁺ c, A = Bᵀ J, ∇z L = B c, through the structured kernel K = A Aᵀ.

    With K = U diag(λ) Uᵀ restricted to λ > rtol·λ_max: v = Aᵀ U diag(1/λ) Uᵀ c, one VJP.
    Requires ∇z L in the range of g (the usual losses); raises otherwise.

    Returns:
        (direction as a dict of parameter tensors, numerical rank).
    """
    call = "structured_natural_gradient"
    with torch.enable_grad():
        z = module(*(inputs if isinstance(inputs, tuple) else (inputs,))).detach().requires_grad_(True)
        value = loss(z)
        (output_grad,) = torch.autograd.grad(value, z)
    local = metric.at(z.detach(), call=call)
    output_grad = output_grad.reshape(-1)
    c = local.factor_solve(output_grad)
    mismatch = torch.linalg.vector_norm(local.factor_matmul(c) - output_grad)
    if mismatch > torch.finfo(z.dtype).eps ** 0.5 * torch.linalg.vector_norm(output_grad):
        raise ValueError(
            f"{call}: ∇z L is not in the range of the metric g; use natural_gradient with method='dual'"
        )
    kernel, context = structured_kernel(module, inputs, factor_for(local, z.detach()), chunk_size)
    evals, evecs = torch.linalg.eigh(kernel)
    if rtol is None:
        rtol = (
            max(kernel.shape[0], sum(p.numel() for p in context.params.values())) * torch.finfo(z.dtype).eps
        )
    keep = (evals > rtol * evals.max()) & (evals > 0)
    u = evecs[:, keep]
    y = u @ ((u.T @ c) / evals[keep])
    return context.vjp(y), int(keep.sum())
