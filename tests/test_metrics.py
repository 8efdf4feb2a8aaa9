"""Every metric's factor B against closed forms of g = B Bᵀ: products, dense factor, solve and norm."""

from __future__ import annotations

import pytest
import torch

import natgrad as ng

TOL = 1e-12


def _categorical_blocks(z: torch.Tensor) -> torch.Tensor:
    """diag(p) − ppᵀ per row, the diagonal as p_i Σ_{j≠i} p_j (p_i − p_i² cancels when p_i ≈ 1)."""
    blocks = []
    for q in torch.softmax(z, dim=-1).reshape(-1, z.shape[-1]):
        block = -torch.outer(q, q)
        others = (q * (1 - torch.eye(len(q), dtype=q.dtype))).sum(dim=1)  # Σ_{j≠i} p_j without cancellation
        block.diagonal().copy_(q * others)
        blocks.append(block)
    return torch.block_diag(*blocks)


def _cases():
    torch.manual_seed(0)
    z = torch.randn(4, 5, dtype=torch.float64)
    probs = torch.softmax(torch.randn(6, dtype=torch.float64), 0)
    dense = torch.randn(20, 20, dtype=torch.float64)
    factor = torch.randn(20, 7, dtype=torch.float64)
    return [
        ("euclidean", ng.metrics.Euclidean(), z, torch.eye(20, dtype=torch.float64)),
        ("gaussian", ng.metrics.Gaussian(0.25), z, 4.0 * torch.eye(20, dtype=torch.float64)),
        (
            "bernoulli",
            ng.metrics.Bernoulli(),
            z,
            torch.diag((torch.sigmoid(z) * torch.sigmoid(-z)).reshape(-1)),
        ),
        ("categorical", ng.metrics.Categorical(), z, _categorical_blocks(z)),
        ("categorical-saturated", ng.metrics.Categorical(), 60.0 * z, _categorical_blocks(60.0 * z)),
        ("fisher-rao", ng.metrics.FisherRao(), probs, torch.diag(1.0 / probs)),
        ("dense", ng.metrics.Dense(dense @ dense.T), z, dense @ dense.T),
        ("factor", ng.metrics.Factor(factor), z, factor @ factor.T),
    ]


CASES = _cases()
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize(("name", "metric", "z", "g"), CASES, ids=IDS)
def test_factor_reproduces_the_metric(name, metric, z, g):
    local = metric.at(z)
    b = local.factor()
    assert b.shape == (z.numel(), local.r)
    scale = b.abs().max() ** 2  # rounding of B Bᵀ (diag(p) − ppᵀ cancels to far below it when p saturates)
    assert torch.allclose(b @ b.T, g, atol=TOL * scale, rtol=0)
    assert torch.allclose(local.matrix(), g, atol=TOL * scale, rtol=0)
    assert torch.allclose(metric.matrix(z), g, atol=TOL * scale, rtol=0)


@pytest.mark.parametrize(("name", "metric", "z", "g"), CASES, ids=IDS)
def test_products_match_the_dense_factor(name, metric, z, g):
    local = metric.at(z)
    b = local.factor()
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(local.r, 3, generator=gen, dtype=torch.float64)
    u = torch.randn(local.n, 3, generator=gen, dtype=torch.float64)
    assert torch.allclose(local.factor_matmul(w), b @ w, atol=1e-12, rtol=0)
    assert torch.allclose(local.factor_t_matmul(u), b.T @ u, atol=1e-12, rtol=0)
    assert torch.allclose(local.factor_matmul(w[:, 0]), b @ w[:, 0], atol=1e-12, rtol=0)
    assert torch.allclose(local.factor_t_matmul(u[:, 0]), b.T @ u[:, 0], atol=1e-12, rtol=0)


@pytest.mark.parametrize(("name", "metric", "z", "g"), CASES, ids=IDS)
def test_factor_solve_solves_on_the_range(name, metric, z, g):
    local = metric.at(z)
    b = local.factor()
    u = b @ torch.randn(local.r, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    c = local.factor_solve(u)
    assert torch.allclose(local.factor_matmul(c), u, atol=1e-9 * u.abs().max(), rtol=0)
    assert torch.isclose(local.factor_norm(), torch.linalg.matrix_norm(b, ord=2), rtol=1e-10)


def test_categorical_factor_has_one_column_fewer_per_row_and_full_column_rank():
    z = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    local = ng.metrics.Categorical().at(z)
    assert (local.n, local.r) == (12, 9)
    assert int(torch.linalg.matrix_rank(local.factor())) == 9


def test_categorical_cross_entropy_gradient_is_in_the_range():
    """∇z CE = p − e_y has zero row sums: B c reproduces it exactly (the factored routes' consistent case)."""
    z = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 2, 1, 1, 0])
    grad = torch.softmax(z, 1) - torch.nn.functional.one_hot(y, 3).to(z.dtype)
    local = ng.metrics.Categorical().at(z)
    c = local.factor_solve(grad.reshape(-1))
    assert torch.allclose(local.factor_matmul(c), grad.reshape(-1), atol=1e-14, rtol=0)
