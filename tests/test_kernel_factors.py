"""The seam between emitting per-layer factors and contracting them: products, columns and the diagonal of K.

Every contraction is compared with the literal A Aᵀ from a materialised Jacobian (float64), on the structured
test models (Linear, Conv, Embedding, norms, generic and tied layers) and every kind of output factor.
"""

from __future__ import annotations

import pytest
import torch

from natgrad.models.structured import emit_factors, structured_kernel
from test_structured import CASES, _build, _factors, dense_factor, reference_jacobian


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("name", sorted(CASES))
def test_products_columns_and_diagonal_match_reference(name):
    model, inputs = _build(name)
    output = model(*inputs)
    jac = reference_jacobian(model, inputs)
    gen = torch.Generator().manual_seed(3)
    for label, factor in _factors(output):
        a_ref = dense_factor(factor, jac.shape[0]).T @ jac
        kernel_ref = a_ref @ a_ref.T
        r = kernel_ref.shape[0]
        factors, _ = emit_factors(model, inputs, factor)
        assert factors.rows_count == r
        u = torch.randn(r, 3, generator=gen, dtype=torch.float64)
        assert _relative(factors.matmul(u), kernel_ref @ u) <= 1e-12, (name, label)
        assert _relative(factors.matmul(u[:, 0]), kernel_ref @ u[:, 0]) <= 1e-12, (name, label)
        index = torch.randperm(r, generator=gen)[: min(r, 4)]
        assert _relative(factors.columns(index), kernel_ref[:, index]) <= 1e-12, (name, label)
        assert _relative(factors.diagonal(), kernel_ref.diagonal()) <= 1e-12, (name, label)
        assert _relative(factors.kernel(), kernel_ref) <= 1e-12, (name, label)


def test_wider_contraction_of_float32_factors():
    """Contracting float32 factors in float64 gives the exact Gram matrix of the rounded factors: symmetric,
    and closer to the float64 kernel than the float32 contraction."""
    model, inputs = _build("mlp", torch.float64)
    kernel64, _ = structured_kernel(model, inputs)
    model32, inputs32 = model.float(), tuple(x.float() for x in inputs)
    factors, _ = emit_factors(model32, inputs32)
    wide = factors.kernel(torch.float64)
    assert wide.dtype == torch.float64
    assert torch.equal(wide, wide.T)
    assert _relative(wide, kernel64) <= _relative(factors.kernel().double(), kernel64)
