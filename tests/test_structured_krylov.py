"""The matrix-free structured route against the literal float64 reference, on the shared cases and on
rank-deficient and near-singular kernels; its certificate; the float32 agreement on an ill-conditioned case."""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
from torch import nn

import natgrad as ng
from cases import CASES, METRICS, combos, inverses, relative_error
from natgrad._routes import _structured_krylov
from natgrad.linalg._matrix_free_kernel import KernelSolveError

ROUTE = "structured-krylov"
TOL64 = 1e-9


@functools.cache
def _setup(case_name: str, metric_name: str, inverse_name: str):
    case = next(c for c in CASES if c.name == case_name)
    mcase = next(m for m in METRICS if m.name == metric_name)
    phi, params = case.build(torch.float64)
    metric, loss = mcase.make(phi(params))
    inverse = inverses(ng.num_params(params), torch.float64)[inverse_name]
    return (
        phi,
        params,
        metric,
        loss,
        inverse,
        ng.reference.natural_gradient(phi, params, loss, metric, inverse),
    )


@pytest.fixture(params=["complete", "krylov"])
def preconditioner(request, monkeypatch):
    """'complete': the default first rank (these kernels are small, so the factorisation completes);
    'krylov': rank 2, so the kernel LSQR with the Ritz watch runs (and extends the factorisation if it must)."""
    if request.param == "krylov":
        monkeypatch.setattr(_structured_krylov, "DEFAULT_RANK", 2)
    return request.param


PARAMS = [
    pytest.param(c.name, m.name, i, id=f"{c.name}-{m.name}-{i}")
    for c, m in combos()
    if c.module
    for i in ("moore-penrose", "ginverse", "damped")
]


@pytest.mark.parametrize(("case", "metric", "inverse"), PARAMS)
def test_matches_reference_float64(case, metric, inverse, preconditioner):
    phi, params, metric_obj, loss, inverse_obj, ref = _setup(case, metric, inverse)
    res = ng.natural_gradient(phi, params, loss, metric_obj, inverse_obj, method=ROUTE, tol=1e-12)
    assert res.method == ROUTE
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= TOL64
    assert relative_error(res.pushforward, ref.pushforward) <= TOL64
    cert = res.info["certificate"]
    assert cert["preconditioner_rank"] >= 1 and cert["products"] >= 1
    if cert["residual"] is not None and not cert["complete_factorisation"]:
        assert cert["residual"] <= 1e-12
    if cert["complete_factorisation"] and inverse != "damped":
        assert res.rank == ref.rank


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 4)).double()


def _solve(x: torch.Tensor, labels: torch.Tensor, **kwargs):
    model = _mlp()
    phi, params = ng.from_module(model, x)

    def loss(z):
        return nn.functional.cross_entropy(z, labels, reduction="sum")

    metric = ng.metrics.Categorical()
    ref = ng.reference.natural_gradient(phi, params, loss, metric)
    res = ng.natural_gradient(phi, params, loss, metric, method=ROUTE, **kwargs)
    return res, ref, phi, params


def _range_projection_gap(v: torch.Tensor, phi, params) -> float:
    """‖v − Π v‖/‖v‖ for Π the projector onto range(Aᵀ) = range(Jᵀ) (A = Bᵀ J, B invertible here)."""
    jac = ng.reference.gram(phi, params)["J"]
    projected = torch.linalg.pinv(jac) @ (jac @ v)
    return float((v - projected).norm() / v.norm())


@pytest.mark.parametrize("rank", [2, 256], ids=["krylov-first", "complete-first"])
def test_repeated_examples_give_the_moore_penrose_answer(rank, monkeypatch):
    """Repeated inputs with different labels: K is singular and c has a part outside its range."""
    monkeypatch.setattr(_structured_krylov, "DEFAULT_RANK", rank)
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = torch.cat([x, x])
    labels = torch.randint(0, 4, (24,), generator=torch.Generator().manual_seed(2))
    res, ref, phi, params = _solve(x, labels, tol=1e-12)
    v, v_ref = ng.flatten_params(res.direction), ng.flatten_params(ref.direction)
    assert ref.rank < 24 * 3
    assert relative_error(v, v_ref) <= TOL64
    assert res.rank == ref.rank
    assert _range_projection_gap(v, phi, params) <= 1e-10  # the iterate lies in range(Aᵀ)


@pytest.mark.parametrize("rank", [2, 256], ids=["krylov-first", "complete-first"])
def test_near_duplicate_inputs_give_the_cutoffs_answer(rank, monkeypatch):
    """Inputs repeated up to 1e-9: K has eigenvalues ~1e-18·λ_max, far below the cutoff; the answer must be the
    reference's (same rtol), not a direction blown up along them."""
    monkeypatch.setattr(_structured_krylov, "DEFAULT_RANK", rank)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    x = torch.cat([x, x + 1e-9 * torch.randn(10, 5, generator=gen, dtype=torch.float64)])
    labels = torch.randint(0, 4, (20,), generator=gen)
    res, ref, phi, params = _solve(x, labels, tol=1e-12)
    v, v_ref = ng.flatten_params(res.direction), ng.flatten_params(ref.direction)
    assert ref.rank == 10 * 3  # the cutoff drops every near-duplicate direction
    assert relative_error(v, v_ref) <= 1e-6  # the reference's own sensitivity to 1e-9 perturbations
    assert float(v.norm()) <= 1.01 * float(v_ref.norm())


def test_near_singular_kernel_beyond_the_budget_raises(monkeypatch):
    """When the factorisation cannot complete within the memory budget, the route says so instead of returning
    a direction that resolves eigenvalues below the cutoff."""
    monkeypatch.setattr(_structured_krylov, "DEFAULT_RANK", 2)
    monkeypatch.setattr(_structured_krylov, "max_preconditioner_rank", lambda r, budget, held: 4)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    x = torch.cat([x, x + 1e-9 * torch.randn(10, 5, generator=gen, dtype=torch.float64)])
    labels = torch.randint(0, 4, (20,), generator=gen)
    with pytest.raises(KernelSolveError, match="natural_gradient: .*rank 4.*because of"):
        _solve(x, labels, tol=1e-12)


def test_minnorm_goes_to_krylov_and_plain_callables_are_refused():
    phi, params, metric, loss, inverse, ref = _setup("mlp-overparam", "euclidean", "minnorm-diag")
    res = ng.natural_gradient(phi, params, loss, metric, inverse, method=ROUTE)
    assert res.info["fallback"] == "krylov"
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= TOL64
    with pytest.raises(ValueError, match="plain callable"):
        ng.natural_gradient(lambda p: p * 2, torch.ones(3), lambda z: z.sum(), method=ROUTE)


@functools.cache
def _low_rank_case(dtype: torch.dtype):
    """MLP 32-32-32-10 on inputs of latent dimension 4 plus 1% noise: an ill-conditioned kernel (cond ≈ 7e4).

    d = 2,442 keeps the float64 reference's d × d eigendecomposition at a few seconds (width 64, d = 6,922,
    cost minutes on two loaded cores) while r = 216 < d, so ``auto`` still takes the dense structured route.
    """
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 10))
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(24, 4, generator=gen) @ torch.randn(4, 32, generator=gen) / 2 + 0.01 * torch.randn(
        24, 32, generator=gen
    )
    labels = torch.randint(0, 10, (24,), generator=gen)
    model, x = model.to(dtype), x.to(dtype)
    phi, params = ng.from_module(model, x)

    def loss(z):
        return nn.functional.cross_entropy(z, labels, reduction="sum")

    return phi, params, loss


@functools.cache
def _low_rank_reference():
    """The float64 reference and the retained eigenvalues of G (computed once: the reference's d × d
    pseudo-inverse dominates these tests).

    The nonzero eigenvalues of G = Jᵀ g J are those of g^{1/2} J Jᵀ g^{1/2} (n × n), so they come from the
    reference's J and g without a second d × d eigendecomposition.
    """
    phi64, params64, loss64 = _low_rank_case(torch.float64)
    ref = ng.reference.natural_gradient(phi64, params64, loss64, ng.metrics.Categorical())
    pieces = ng.reference.gram(phi64, params64, ng.metrics.Categorical())
    lam, basis = torch.linalg.eigh(pieces["g"])
    root = basis * lam.clamp_min(0).sqrt()  # g = root rootᵀ
    kernel = root.T @ pieces["J"] @ pieces["J"].T @ root
    evals = torch.linalg.eigvalsh(kernel)[-ref.rank :]
    return ref, evals


@pytest.mark.parametrize("rank", [8, 256], ids=["krylov-first", "complete-first"])
def test_float32_agrees_with_float64_on_an_ill_conditioned_kernel(rank, monkeypatch):
    """float32 model, default cutoff: within 1e-4 of the float64 answer, every direction of K retained."""
    monkeypatch.setattr(_structured_krylov, "DEFAULT_RANK", rank)
    ref, evals = _low_rank_reference()
    assert float(evals[-1] / evals[0]) > 1e3  # ill-conditioned, and the old float32 default would cut it
    assert float(evals[0] / evals[-1]) < 10 * 24 * 9 * torch.finfo(torch.float32).eps
    phi, params, loss = _low_rank_case(torch.float32)
    res = ng.natural_gradient(phi, params, loss, ng.metrics.Categorical(), method=ROUTE, tol=1e-5)
    v = ng.flatten_params(res.direction)
    assert v.dtype == torch.float32
    assert relative_error(v, ng.flatten_params(ref.direction)) <= 1e-4


def test_krylov_route_says_when_it_would_resolve_a_dropped_direction():
    """The plain krylov route watches the same cutoff through LSQR's Ritz values and says so instead of
    reporting a blown-up direction as converged."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    x = torch.cat([x, x + 1e-9 * torch.randn(10, 5, generator=gen, dtype=torch.float64)])
    labels = torch.randint(0, 4, (20,), generator=gen)
    phi, params = ng.from_module(_mlp(), x)

    def loss(z):
        return nn.functional.cross_entropy(z, labels, reduction="sum")

    with pytest.raises(ng.ConvergenceError, match="below the Moore–Penrose cutoff"):
        ng.natural_gradient(phi, params, loss, ng.metrics.Categorical(), method="krylov")
    res = ng.natural_gradient(phi, params, loss, ng.metrics.Categorical(), method="krylov", throw=False)
    assert res.info["near_singular"] and not res.info["converged"]


def test_float32_auto_agrees_with_float64_on_an_ill_conditioned_kernel():
    """``auto`` (the dense structured route here) with the kernel-error cutoff keeps every direction in float32."""
    ref, _ = _low_rank_reference()
    phi, params, loss = _low_rank_case(torch.float32)
    res = ng.natural_gradient(phi, params, loss, ng.metrics.Categorical())
    assert res.method == "structured" and res.rank == ref.rank
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= 1e-4


def test_float32_reaches_tol_past_the_products_rounding_floor(monkeypatch):
    """float32 products cannot certify ‖Ky − c‖ ≤ 1e-6 here (the kernel solve stops at their rounding floor);
    refining v by Aᵀδy against the pushforward still reaches tol without completing the factorisation, and the
    direction is as close to the float64 answer as float32 allows (cond(A)·eps₃₂ ≈ 1e-6)."""
    monkeypatch.setattr(_structured_krylov, "DEFAULT_RANK", 2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(24, 8, generator=gen)
    labels = torch.randint(0, 4, (24,), generator=gen)

    def loss(z):
        return nn.functional.cross_entropy(z, labels, reduction="sum")

    phi64, params64 = ng.from_module(copy.deepcopy(model).double(), x.double())
    ref = ng.reference.natural_gradient(phi64, params64, loss, ng.metrics.Categorical())
    phi, params = ng.from_module(model, x)
    with pytest.warns(RuntimeWarning, match="rounding floor"):
        res = ng.natural_gradient(phi, params, loss, ng.metrics.Categorical(), method=ROUTE, tol=1e-6)
    cert = res.info["certificate"]
    assert cert["residual"] <= 1e-6 and not cert["complete_factorisation"]
    # the measured residual meets tol but float32 cannot resolve it: the result says so
    assert cert["rounding_floor"] > 1e-6 and res.status == "at_rounding_floor"
    assert any(s.get("at_rounding_floor") for s in res.info["kernel_solves"])
    v = ng.flatten_params(res.direction).double()
    assert relative_error(v, ng.flatten_params(ref.direction)) <= 1e-5
    # The certificate's claim, checked in float64: the true residual of the float32 direction is within it.
    z64 = phi64(params64).detach().requires_grad_(True)
    local = ng.metrics.Categorical().at(z64.detach())
    c = local.factor_solve(torch.autograd.grad(loss(z64), z64)[0].reshape(-1))
    av = local.factor_t_matmul(ng.reference.gram(phi64, params64)["J"] @ v)
    true_residual = float((av - c).norm() / c.norm())
    assert true_residual <= max(cert["residual"], cert["rounding_floor"])


def test_a_float64_model_certifies_what_float32_cannot(monkeypatch):
    """The same solve on a float64 model: the rounding floor sits far below tol and the status is success."""
    monkeypatch.setattr(_structured_krylov, "DEFAULT_RANK", 2)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)
    ).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(24, 8, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (24,), generator=gen)

    def loss(z):
        return nn.functional.cross_entropy(z, labels, reduction="sum")

    phi, params = ng.from_module(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = ng.natural_gradient(phi, params, loss, ng.metrics.Categorical(), method=ROUTE, tol=1e-6)
    cert = res.info["certificate"]
    assert res.status == "success" and cert["residual"] <= 1e-6 and cert["rounding_floor"] < 1e-9
    ref = ng.reference.natural_gradient(phi, params, loss, ng.metrics.Categorical())
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= 1e-5
