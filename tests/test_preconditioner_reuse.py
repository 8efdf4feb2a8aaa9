"""The structured-krylov preconditioner carried across factorisations (an optimizer's steps): the direction is
the literal float64 reference's whatever preconditioner is reused, a stale one still converges, another batch
rebuilds it, and the certificate's counters say what happened; the pieces it is built from against dense
formulas."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import natgrad as ng
from cases import CASES, METRICS, combos, relative_error
from natgrad._routes import _preconditioner_reuse, _structured_krylov
from natgrad.linalg._pivoted_cholesky import (
    LowRankPreconditioner,
    cholesky_on_pivots,
    pivoted_cholesky,
)
from natgrad.optim import NGD, CrossEntropy, _routing

ROUTE = "structured-krylov"
DT = torch.float64
TOL64 = 1e-9
DAMPING = 0.05


@pytest.fixture(autouse=True)
def partial_preconditioner(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 3 first: these kernels are small, and a complete factorisation would leave nothing to precondition."""
    monkeypatch.setattr(_structured_krylov, "DEFAULT_RANK", 3)


def _move(params: dict[str, torch.Tensor], scale: float, seed: int) -> None:
    """Move the module's own parameters in place (the structured routes read the module itself)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in params.values():
            v.add_(scale * torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device) * (1 + v.abs()))


MODULE_COMBOS = [pytest.param(c.name, m.name, id=f"{c.name}-{m.name}") for c, m in combos() if c.module]


def _case(case_name: str, metric_name: str):
    case = next(c for c in CASES if c.name == case_name)
    mcase = next(m for m in METRICS if m.name == metric_name)
    phi, params = case.build(DT)
    metric, loss = mcase.make(phi(params))
    return phi, params, metric, loss


def _solve(phi, params, metric, loss, inverse, preconditioner=None):
    fac = ng.factorize(phi, params, metric, inverse, ROUTE, tol=1e-12, preconditioner=preconditioner)
    return fac, fac.solve(loss)


@pytest.mark.parametrize(("case", "metric"), MODULE_COMBOS)
def test_reused_preconditioner_gives_the_reference_direction(case: str, metric: str) -> None:
    """P of the kernel at θ preconditions the damped solve at a nearby θ': the direction is the reference's at
    θ' (float64, 1e-9), certified to 1e-12, and the certificate says P was reused; a Moore–Penrose solve on
    the same offer refactorises this K first (its cutoff needs that) and also equals the reference, as does
    a damped solve whose gradient is outside the metric's range (its general form needs K⁺ too)."""
    phi, params, metric_obj, loss = _case(case, metric)
    first, _ = _solve(phi, params, metric_obj, loss, ng.Damped(DAMPING))
    offered = first.preconditioner
    assert offered is not None and offered.greedy_iterations is not None
    _move(params, 1e-3, seed=1)
    for inverse in (ng.Damped(DAMPING), ng.MoorePenrose()):
        fac, res = _solve(phi, params, metric_obj, loss, inverse, preconditioner=offered)
        ref = ng.reference.natural_gradient(phi, params, loss, metric_obj, inverse)
        assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= TOL64
        cert = res.info["certificate"]
        account = cert["preconditioner"]
        if isinstance(inverse, ng.Damped) and res.info["consistent"]:  # v = Aᵀ(K + λI)⁻¹c: damped solves only
            assert cert["residual"] <= 1e-12
            assert account["reused"] and account["builds"] == 0 and account["reuses"] == 1
            assert cert["column_blocks"] == 0  # no column of the new K was needed
            assert fac.preconditioner.reuses == 1
        else:
            assert not account["reused"] and account["builds"] >= 1
            assert "Moore–Penrose" in account["built_because"]


def test_a_stale_preconditioner_converges_to_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """P from quite different parameters (a scale-1 move): used as it is (no iteration cap) the damped solve
    still reaches the reference; with a cap of one iteration it is refactorised on its pivots, and again the
    answer is the reference's."""
    case, metric = MODULE_COMBOS[0].values
    phi, params, metric_obj, loss = _case(case, metric)
    first, _ = _solve(phi, params, metric_obj, loss, ng.Damped(DAMPING))
    _move(params, 1.0, seed=2)
    far = params
    ref = ng.reference.natural_gradient(phi, far, loss, metric_obj, ng.Damped(DAMPING))
    expected = ng.flatten_params(ref.direction)

    monkeypatch.setattr(_preconditioner_reuse, "REBUILD_MIN_ITERATIONS", 10_000)
    _, res = _solve(phi, far, metric_obj, loss, ng.Damped(DAMPING), preconditioner=first.preconditioner)
    assert res.info["certificate"]["preconditioner"]["reused"]
    assert relative_error(ng.flatten_params(res.direction), expected) <= TOL64

    monkeypatch.setattr(_preconditioner_reuse, "REBUILD_MIN_ITERATIONS", 1)
    monkeypatch.setattr(_preconditioner_reuse, "REBUILD_GROWTH", 0.0)
    fac, res = _solve(phi, far, metric_obj, loss, ng.Damped(DAMPING), preconditioner=first.preconditioner)
    account = res.info["certificate"]["preconditioner"]
    assert not account["reused"] and account["builds"] == 1
    assert "did not converge within 1 iterations" in account["built_because"]
    assert relative_error(ng.flatten_params(res.direction), expected) <= TOL64
    assert fac.preconditioner.refresh_first  # the next offer skips the attempt and goes to the pivots
    _, again = _solve(phi, far, metric_obj, loss, ng.Damped(DAMPING), preconditioner=fac.preconditioner)
    assert again.info["certificate"]["preconditioner"]["built_because"].startswith(
        "the earlier factorisation"
    )
    assert relative_error(ng.flatten_params(again.direction), expected) <= TOL64
    # pivots that no longer fit: the rebuild searches them afresh
    stale = dataclasses.replace(first.preconditioner, pivots_stale=True)
    _, greedy = _solve(phi, far, metric_obj, loss, ng.Damped(DAMPING), preconditioner=stale)
    account = greedy.info["certificate"]["preconditioner"]
    assert account["greedy_builds"] == 1 and not account["on_old_pivots"]
    assert relative_error(ng.flatten_params(greedy.direction), expected) <= TOL64


def _mlp_batches() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4)).to(DT)
    return model, torch.randn(20, 5, dtype=DT), torch.randn(20, 5, dtype=DT), torch.randint(0, 4, (20,))


def test_another_batch_rebuilds_the_preconditioner() -> None:
    """A preconditioner is keyed on the batch: other inputs of the same shape, or the same tensor changed in
    place, rebuild it (the certificate says why); equal inputs in a new tensor reuse it."""
    model, x, x_other, y = _mlp_batches()
    loss = CrossEntropy(y, reduction="sum")
    metric = ng.metrics.Categorical()

    def solve(inputs: torch.Tensor, preconditioner=None):
        phi, params = ng.from_module(model, (inputs,))
        return _solve(phi, params, metric, loss, ng.Damped(DAMPING), preconditioner)

    first, _ = solve(x)
    _, other = solve(x_other, first.preconditioner)
    assert other.info["certificate"]["preconditioner"]["built_because"] == "it was built on another batch"
    _, same = solve(x.clone(), first.preconditioner)
    assert same.info["certificate"]["preconditioner"]["reused"]
    x.add_(1.0)  # the very tensor P was built on, changed in place
    _, changed = solve(x, first.preconditioner)
    assert changed.info["certificate"]["preconditioner"]["built_because"] == "it was built on another batch"


def _ngd_direction_check(model: nn.Module, x: torch.Tensor, loss, before: torch.Tensor) -> None:
    phi, params = ng.from_module(model, (x,))
    at = ng.unflatten_like(before, params)
    ref = ng.reference.natural_gradient(phi, at, loss, ng.metrics.Categorical(), ng.Damped(DAMPING))
    step = before - torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert relative_error(step, ng.flatten_params(ref.direction)) <= TOL64


def test_ngd_carries_the_preconditioner_and_rebuilds_on_a_new_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """NGD (matrix-free at any size here) reuses the last step's preconditioner on the same batch, rebuilds it
    on another, every step equal to the reference; ``state_dict`` does not hold it and round-trips, and a
    resumed optimizer builds a new one."""
    monkeypatch.setattr(_routing, "MATRIX_FREE_WORK", 0.0)
    monkeypatch.setattr(_routing, "STEP_TOL", {DT: 1e-12})
    model, x, x_other, y = _mlp_batches()
    loss = CrossEntropy(y, reduction="sum")  # s = 1: λ acts on the Fisher itself
    opt = NGD(model.parameters(), damping=DAMPING, safeguard=False)
    f = opt.functional(model)
    because = []
    for inputs in (x, x, x_other, x_other):
        before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        opt.step(lambda p, inputs=inputs: f(p, inputs), loss)
        assert opt.last_step["method"] == ROUTE
        _ngd_direction_check(model, inputs, loss, before)
        because.append(opt.last_step["certificate"]["preconditioner"])
    # on the same batch the offer is taken (used as it is, or refactorised on its pivots); not on another
    assert because[0]["built_because"] == "no preconditioner was given"
    assert because[2]["built_because"] == "it was built on another batch"
    for same_batch in (because[1], because[3]):
        assert same_batch["reused"] or same_batch["built_because"] not in (
            "it was built on another batch",
            "no preconditioner was given",
        )

    saved = opt.state_dict()
    assert "preconditioner" not in repr(sorted(saved["ngd"]))
    resumed = NGD(model.parameters(), damping=DAMPING, safeguard=False)
    resumed.load_state_dict(saved)
    assert resumed.state_dict()["ngd"] == saved["ngd"]
    f2 = resumed.functional(model)
    resumed.step(lambda p: f2(p, x_other), loss)
    assert (
        resumed.last_step["certificate"]["preconditioner"]["built_because"] == "no preconditioner was given"
    )


def _psd(r: int, rank: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(r, rank, generator=gen, dtype=DT)
    return b @ b.T


def test_cholesky_on_given_pivots_is_the_greedy_factor_on_those_pivots() -> None:
    """On the greedy factorisation's own pivots, `cholesky_on_pivots` gives the same L and residual diagonal
    (to rounding); on pivots that make K[S, S] singular it declines (None)."""
    k = _psd(40, 12, seed=0)
    columns = lambda index: k[:, index]  # noqa: E731
    greedy = pivoted_cholesky(columns, torch.diagonal(k).clone(), 8, 1e-12)
    again = cholesky_on_pivots(columns, torch.diagonal(k).clone(), greedy.pivots, 1e-12)
    assert again is not None and again.pivots == greedy.pivots
    torch.testing.assert_close(again.factor, greedy.factor, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(again.residual_diagonal, greedy.residual_diagonal, rtol=1e-8, atol=1e-9)
    low = _psd(40, 3, seed=1)
    assert cholesky_on_pivots(lambda i: low[:, i], torch.diagonal(low).clone(), [0, 1, 2, 3], 1e-12) is None


def test_low_rank_preconditioner_inverse_without_the_eigenbasis() -> None:
    """P⁻¹x from L and the eigenvectors of LᵀL equals the dense inverse of P = L Lᵀ + (σ + λ) I, and the
    shifted copy shares the eigendecomposition."""
    k = _psd(30, 10, seed=3)
    partial = pivoted_cholesky(lambda i: k[:, i], torch.diagonal(k).clone(), 6, 1e-12)
    pre = LowRankPreconditioner(partial, sigma=0.7)
    shifted = pre.shifted(0.2)
    assert shifted.vectors is pre.vectors and shifted.damping == 0.2 and pre.damping == 0.0
    x = torch.randn(30, dtype=DT, generator=torch.Generator().manual_seed(4))
    lower = partial.factor @ partial.factor.T
    for p, shift in ((pre, 0.7), (shifted, 0.9)):
        dense = lower + shift * torch.eye(30, dtype=DT)
        torch.testing.assert_close(p.solve(x), torch.linalg.solve(dense, x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pre.basis.T @ pre.basis, torch.eye(pre.basis.shape[1], dtype=DT))


def _first_default_step(x: torch.Tensor, loss) -> tuple[dict, torch.Tensor]:
    model = _mlp_batches()[0]
    opt = NGD(model.parameters())  # the defaults: λ = 0, the safeguard
    f = opt.functional(model)
    opt.step(lambda p: f(p, x), loss)
    return opt.last_step, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_first_safeguarded_step_of_a_large_problem_starts_damped(monkeypatch: pytest.MonkeyPatch) -> None:
    """With NGD's defaults, a small problem's first step tries λ = 0 (here rejected) and retries at the
    safeguard's jump λ = q = ∇ᵀG∇/‖∇‖²; when damped steps go matrix-free (a large problem) the first step
    starts at that q without the dense λ = 0 solve: one attempt, the same step, equal to the reference's
    (G + qI)⁻¹∇."""
    model, x, _, y = _mlp_batches()
    loss = CrossEntropy(y, reduction="sum")  # s = 1: λ acts on the Fisher itself
    phi, params = ng.from_module(model, (x,))
    pieces = ng.reference.gram(phi, params, ng.metrics.Categorical())
    grad = pieces["J"].T @ torch.func.grad(loss)(pieces["z"]).reshape(-1)
    q = float(grad @ pieces["G"] @ grad / (grad @ grad))
    ref = ng.reference.natural_gradient(phi, params, loss, ng.metrics.Categorical(), ng.Damped(q))
    expected = torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - ng.flatten_params(
        ref.direction
    )

    small, after_small = _first_default_step(x, loss)
    assert not small["started_damped"] and small["method"] != ROUTE
    assert small["attempts"] == 2 and small["damping"] == pytest.approx(q, rel=1e-9)

    monkeypatch.setattr(_routing, "MATRIX_FREE_WORK", 0.0)
    monkeypatch.setattr(_routing, "STEP_TOL", {DT: 1e-12})
    large, after_large = _first_default_step(x, loss)
    assert large["started_damped"] and large["method"] == ROUTE
    assert large["attempts"] == 1 and large["step_size"] == 1.0
    assert large["damping"] == pytest.approx(q, rel=1e-9)
    assert relative_error(after_large, expected) <= TOL64
    assert relative_error(after_small, expected) <= TOL64
