"""NGD's route for a step: damped steps on large module problems go to the matrix-free structured-krylov route.

The rule fires from r·d·min(r, d) ≥ ``MATRIX_FREE_WORK``; the tests lower the threshold so that small problems
take the matrix-free path, and compare its step with the float64 reference, the dense formula of the same
damped inverse.
"""

from __future__ import annotations

import math

import pytest
import torch

import natgrad as ng
from natgrad._factorize import default_tolerance
from natgrad.optim import NGD, CrossEntropy, NGDStepError, _routing

DT = torch.float64
sklearn_datasets = pytest.importorskip("sklearn.datasets")


def _classifier(dtype: torch.dtype = DT, n: int = 24) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 6), torch.nn.Tanh(), torch.nn.Linear(6, 4)
    ).to(dtype)
    x = torch.randn(n, 5, dtype=dtype)
    y = torch.randint(0, 4, (n,))
    return model, x, y


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.fixture
def matrix_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every damped step on a module problem takes the matrix-free route."""
    monkeypatch.setattr(_routing, "MATRIX_FREE_WORK", 0.0)


def _reference_damped(model, x, loss, damping: float) -> torch.Tensor:
    phi, params = ng.from_module(model, x)
    res = ng.reference.natural_gradient(
        phi, params, loss, metric=ng.metrics.Categorical(), inverse=ng.Damped(damping)
    )
    return ng.flatten_params(res.direction)


@pytest.mark.parametrize("build", ["functional", "from_module"])
@pytest.mark.parametrize("lr", [1.0, 0.4])
def test_matrix_free_damped_step_equals_reference(matrix_free, build: str, lr: float) -> None:
    """The step is lr·(G + λI)⁻¹∇ of the categorical Fisher (r = 72, d = 106) to the Krylov tolerance (1e-12
    in float64), built by `NGD.functional` or by ``ng.from_module``."""
    model, x, y = _classifier()
    loss = CrossEntropy(y, reduction="sum")  # s = 1: λ acts on the Fisher itself
    damping = 0.3
    expected = _flat(model) - lr * _reference_damped(model, x, loss, damping)
    if build == "functional":
        opt = NGD(model.parameters(), lr=lr, damping=damping, safeguard=False)
        f = opt.functional(model)
        opt.step(lambda p: f(p, x), loss)
    else:
        opt = NGD.from_module(model, lr=lr, damping=damping, safeguard=False)
        phi, _ = ng.from_module(model, x)
        opt.step(phi, loss)
    assert opt.last_step["method"] == "structured-krylov"
    assert opt.last_step["certificate"]["residual"] <= 1e-12
    torch.testing.assert_close(_flat(model), expected, rtol=1e-9, atol=1e-11)


def test_uncertified_matrix_free_solve_falls_back_to_the_engine_route(
    matrix_free, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tolerance no solve can certify (1e-30): the step is the engine's dense one, equal to the reference,
    and the certificate says why."""
    monkeypatch.setattr(_routing, "STEP_TOL", {DT: 1e-30})
    model, x, y = _classifier()
    loss = CrossEntropy(y, reduction="sum")
    expected = _flat(model) - _reference_damped(model, x, loss, 0.3)
    opt = NGD(model.parameters(), damping=0.3, safeguard=False)
    f = opt.functional(model)
    opt.step(lambda p: f(p, x), loss)
    assert opt.last_step["method"] != "structured-krylov"
    assert "matrix-free kernel solve" in opt.last_step["certificate"]["uncertified"]
    torch.testing.assert_close(_flat(model), expected, rtol=1e-9, atol=1e-11)


def test_engine_choice_stands_where_the_rule_does_not_apply(matrix_free) -> None:
    """λ = 0 (the generalized inverse), an explicit method, and a forward that changes the module's output
    keep the engine's route."""
    model, x, y = _classifier()
    loss = CrossEntropy(y, reduction="sum")
    cases = [
        ({"safeguard": False}, lambda f: lambda p: f(p, x)),
        ({"damping": 0.3, "safeguard": False, "method": "dual"}, lambda f: lambda p: f(p, x)),
        ({"damping": 0.3, "safeguard": False}, lambda f: lambda p: 2.0 * f(p, x)),
        ({"damping": 0.3, "safeguard": False}, lambda f: lambda p: torch.cat([f(p, x[:12]), f(p, x[12:])])),
    ]
    for settings, make in cases:
        opt = NGD(model.parameters(), **settings)
        opt.step(make(opt.functional(model)), loss)
        assert opt.last_step["method"] != "structured-krylov", settings


def test_rule_prefers_matrix_free_for_large_damped_problems() -> None:
    """Digits at full batch (r = 11,313, d = 3,466) and at 300 examples (r = 2,700) go matrix-free when damped;
    the generalized inverse and the small test problems do not."""
    damped, exact = ng.Damped(1.0), ng.MoorePenrose()
    assert _routing.prefers_matrix_free(11313, 3466, damped)
    assert _routing.prefers_matrix_free(2700, 3466, damped)
    assert not _routing.prefers_matrix_free(11313, 3466, exact)
    assert not _routing.prefers_matrix_free(864, 910, damped)


def _digits(n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = sklearn_datasets.load_digits(return_X_y=True)
    return torch.tensor(x[:n] / 16.0, dtype=dtype), torch.tensor(y[:n])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_defaults_train_full_batch_through_the_matrix_free_route(matrix_free, dtype: torch.dtype) -> None:
    """The ill-conditioned full batch of the training tests (r = 864, d = 910), default NGD: every step runs
    matrix-free, the first one too (it starts at the safeguard's jump level instead of a dense Moore–Penrose
    solve); the loss decreases every step."""
    x, y = _digits(96, dtype)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 12), torch.nn.Tanh(), torch.nn.Linear(12, 10)).to(dtype)
    opt = NGD(model.parameters())
    f = opt.functional(model)
    losses, methods, residuals, started = [], [], [], []
    for _ in range(8):
        losses.append(float(opt.step(lambda p: f(p, x), CrossEntropy(y))))
        methods.append(opt.last_step["method"])
        started.append(opt.last_step["started_damped"])
        if opt.last_step["method"] == "structured-krylov":
            residuals.append(opt.last_step["certificate"]["residual"])
    with torch.no_grad():
        losses.append(float(torch.nn.functional.cross_entropy(model(x), y)))
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert all(b <= a for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] < 0.5 * losses[0]
    assert started == [True] + [False] * 7
    assert methods[0] == "structured-krylov" and "structured-krylov" in methods[1:]
    assert max(residuals) <= _routing.STEP_TOL.get(dtype, default_tolerance(dtype))


def test_uncertified_krylov_solve_raises_a_step_error_and_changes_nothing() -> None:
    """The krylov route stops before resolving a direction the Moore–Penrose cutoff drops (ConvergenceError):
    the optimizer raises NGDStepError and leaves the parameters as they were."""
    x, y = _digits(96, torch.float32)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 12), torch.nn.Tanh(), torch.nn.Linear(12, 10))
    before = _flat(model).clone()
    opt = NGD(model.parameters(), method="krylov", safeguard=False)
    f = opt.functional(model)
    with pytest.raises(NGDStepError, match="ConvergenceError"):
        opt.step(lambda p: f(p, x), CrossEntropy(y))
    assert torch.equal(_flat(model), before)
    assert opt.steps_taken == 0 and math.isfinite(opt.damping)


def test_cross_entropy_gradient_stays_in_the_metric_range_near_a_fit() -> None:
    """Near a fit (p_y ≈ 1 − 1e-6) torch's p_y − 1 leaves float32 rows of ∇z L outside the range of the
    categorical metric (rows summing to zero) by eps/‖∇z L‖ > √eps, so no c with ∇z L = B c exists; the
    loss's −Σ_{j≠y} p_j keeps them inside. Values and gradients agree with torch's cross-entropy."""
    from natgrad._routes._problem import output_factor_coefficients

    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (200,), generator=gen)
    z = torch.randn(200, 10, generator=gen, dtype=DT)
    for reduction in ("mean", "sum"):
        loss = CrossEntropy(y, reduction)
        torch_loss = lambda q, r=reduction: torch.nn.functional.cross_entropy(q, y, reduction=r)  # noqa: E731
        torch.testing.assert_close(loss(z), torch_loss(z), rtol=1e-14, atol=0)
        torch.testing.assert_close(
            torch.func.grad(loss)(z), torch.func.grad(torch_loss)(z), rtol=1e-12, atol=1e-15
        )
    near_fit = (z + 14.0 * torch.nn.functional.one_hot(y, 10)).float()
    local = ng.metrics.Categorical().at(near_fit)
    ours = torch.func.grad(CrossEntropy(y, "sum"))(near_fit)
    theirs = torch.func.grad(lambda q: torch.nn.functional.cross_entropy(q, y, reduction="sum"))(near_fit)
    assert output_factor_coefficients(local, ours.reshape(-1)) is not None
    assert output_factor_coefficients(local, theirs.reshape(-1)) is None
