"""K = AAᵀ from the lower block triangle, and the rank a damped kernel solve leaves to be computed on first read."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import natgrad as ng
from cases import CASES, METRICS
from natgrad._result import known_rank
from natgrad.linalg._gram import row_gram
from natgrad.optim import NGD

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
F64 = torch.float64


def _literal(a: torch.Tensor) -> torch.Tensor:
    wide = a.double().cpu()
    return wide @ wide.T


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("rows", "block_rows"), [(1, 4), (7, 7), (8, 7), (23, 5), (40, 512), (1100, 512)])
def test_row_gram_is_the_literal_product_and_exactly_symmetric(device, dtype, rows, block_rows):
    gen = torch.Generator().manual_seed(rows)
    a = torch.randn(rows, 13, generator=gen, dtype=F64).to(dtype=dtype, device=device)
    kernel = row_gram(a, block_rows)
    assert kernel.dtype == dtype and kernel.device == a.device and kernel.shape == (rows, rows)
    assert torch.equal(kernel, kernel.T)
    ref = _literal(a)
    # each entry is one dot product of 13 terms, as in a @ a.T: the error is that of the dot product
    bound = 13 * torch.finfo(dtype).eps * (a.double().cpu().abs() @ a.double().cpu().abs().T)
    assert bool(((kernel.double().cpu() - ref).abs() <= bound).all())


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 60), cols=st.integers(1, 9), block_rows=st.integers(1, 70), seed=st.integers(0, 2**16)
)
def test_row_gram_matches_the_literal_product_on_any_blocking(rows, cols, block_rows, seed):
    a = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=F64)
    kernel = row_gram(a, block_rows)
    assert torch.equal(kernel, kernel.T)
    torch.testing.assert_close(kernel, _literal(a), rtol=1e-13, atol=1e-13 * float(a.norm()) ** 2)


def test_row_gram_rejects_what_is_not_a_matrix():
    with pytest.raises(ValueError, match=r"row_gram: expected a 2-D matrix, got shape \(3,\)"):
        row_gram(torch.ones(3))
    with pytest.raises(ValueError, match="row_gram: block_rows must be >= 1, got 0"):
        row_gram(torch.ones(3, 2), 0)


def _dual_point():
    """An overparametrised MLP (r < d) under the categorical Fisher metric: ∇z L lies in the range of g, so a
    damped solve is (K + λI)⁻¹c alone and needs no K⁺."""
    case = next(c for c in CASES if c.name == "mlp-overparam")
    phi, params = case.build(F64)
    metric, loss = next(m for m in METRICS if m.name == "categorical").make(phi(params))
    return phi, params, metric, loss


@pytest.mark.parametrize("route", ["dual", "structured"])
def test_a_damped_kernel_solve_computes_the_rank_only_when_it_is_read(route):
    phi, params, metric, loss = _dual_point()
    fac = ng.factorize(phi, params, metric, ng.Damped(1e-3), method=route)
    assert fac.method == route
    result = fac.solve(loss)
    kernel_inverse = fac._factorization().inverse  # type: ignore[attr-defined]
    assert not hasattr(kernel_inverse, "evals")  # the damped solve computed no eigenvalues
    # nor the certificate of full rank: the structured route's a posteriori check of K is proven by the damped
    # solve's own residual, so neither route runs it
    assert known_rank(result) is None and not kernel_inverse.certified
    assert "kernel_solve" not in result.info and result.info["damped_solve"] == "cholesky"
    ref = ng.reference.natural_gradient(phi, params, loss, metric, ng.Damped(1e-3))
    got = ng.flatten_params(result.direction)
    want = ng.flatten_params(ref.direction)
    assert float((got - want).norm() / want.norm()) <= 1e-10
    # the rank, when read, is the Moore–Penrose one of the same point (that of the float64 reference)
    moore_penrose = ng.natural_gradient(phi, params, loss, metric, ng.MoorePenrose(), method="dual")
    reference_rank = ng.reference.natural_gradient(phi, params, loss, metric, ng.MoorePenrose()).rank
    assert result.rank == moore_penrose.rank == reference_rank
    assert reference_rank is not None and 0 < reference_rank < ng.num_params(params)
    assert known_rank(result) == reference_rank


def test_a_deferred_rank_is_its_value_when_copied_pickled_or_replaced():
    phi, params, metric, loss = _dual_point()
    want = ng.natural_gradient(phi, params, loss, metric, ng.MoorePenrose(), method="dual").rank
    for read in (
        lambda r: pickle.loads(pickle.dumps(r)).rank,
        lambda r: copy.deepcopy(r).rank,
        lambda r: copy.copy(r).rank,
        lambda r: __import__("dataclasses").replace(r, status="success").rank,
    ):
        result = ng.natural_gradient(phi, params, loss, metric, ng.Damped(1e-3), method="dual")
        assert known_rank(result) is None
        assert read(result) == want


def test_the_certified_full_rank_is_known_without_an_eigendecomposition():
    """A full-rank K (r ≤ d, generic A): the Moore–Penrose solve's certified Cholesky factor gives the rank r."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(6, 10, generator=gen, dtype=F64), torch.randn(10, generator=gen, dtype=F64)
    result = ng.natural_gradient(lambda p: x @ p, w, lambda z: 0.5 * (z**2).sum(), method="dual")
    assert known_rank(result) == result.rank == 6


def test_ngd_reports_no_rank_for_a_damped_dual_step_and_the_rank_otherwise():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 10, generator=gen, dtype=F64), torch.randn(6, generator=gen, dtype=F64)
    for damping, rank in ((1e-3, None), (0.0, 6)):
        w = torch.nn.Parameter(torch.zeros(10, dtype=F64))
        opt = NGD([("w", w)], damping=damping, method="dual", metric=ng.metrics.Euclidean())
        opt.step(lambda p: x @ p["w"], lambda z: 0.5 * ((z - y) ** 2).sum())
        assert opt.last_step["method"] == "dual" and opt.last_step["rank"] == rank
        # the damped step is (JᵀJ + λI)⁻¹Jᵀr, the float64 literal
        ref = torch.linalg.solve(x.T @ x + damping * torch.eye(10, dtype=F64), x.T @ y) if damping else None
        if ref is not None:
            assert float((w.detach() - ref).norm() / ref.norm()) <= 1e-12


def test_a_damped_solve_says_when_k_plus_lambda_does_not_factorise():
    """λ below the rounding of K: Cholesky of K + λI fails in float64 and eigh (K's negative rounding
    eigenvalues clamped to 0) applies the inverse instead; info says which, and both match the reference."""
    gen = torch.Generator().manual_seed(3)
    # rows 0–3 independent, rows 4–7 exact combinations of them: K = AAᵀ has four zero eigenvalues, which
    # come out of float64 rounding about ±eps·λ_max
    base = (
        torch.randn(4, 30, generator=gen, dtype=F64) * torch.tensor([1e3, 1.0, 1.0, 1.0], dtype=F64)[:, None]
    )
    a = torch.cat([base, torch.randn(4, 4, generator=gen, dtype=F64) @ base])
    kernel = a @ a.T
    lam_max = float(torch.linalg.eigvalsh(kernel).max())
    target = torch.randn(8, generator=gen, dtype=F64)
    found = {}
    for lam in (1e-3 * lam_max, 1e-20 * lam_max):
        x = torch.zeros(30, dtype=F64)
        result = ng.natural_gradient(
            lambda p: a @ p,
            x,
            lambda z: 0.5 * ((z - target) ** 2).sum(),
            inverse=ng.Damped(lam),
            method="dual",
        )
        found[lam] = result.info["damped_solve"]
        if found[lam] == "cholesky":
            ref = ng.reference.natural_gradient(
                lambda p: a @ p, x, lambda z: 0.5 * ((z - target) ** 2).sum(), inverse=ng.Damped(lam)
            )
            want = ng.flatten_params(ref.direction)
        else:  # the clamped eigendecomposition of the same K, written out
            mu, vectors = torch.linalg.eigh(kernel)
            want = a.T @ (vectors @ ((vectors.T @ -target) / (mu.clamp_min(0) + lam)))
        got = ng.flatten_params(result.direction)
        assert float((got - want).norm() / want.norm()) <= 1e-8, (lam, found[lam])
    assert list(found.values()) == ["cholesky", "eigh"], found
