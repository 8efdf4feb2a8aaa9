"""References (SVM KKT, ℓ1 max-margin, X⁺y), the margin closed form and the dynamics helpers."""

import pytest
import torch

import natgrad as ng
import natgrad.linear as nl


@pytest.fixture(autouse=True)
def _float64_by_default():
    """These tests build their tensors in float64; the default is restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _data(n, d, seed):
    gen = torch.Generator().manual_seed(seed)
    X = nl.gaussian_inputs(n, d, gen)
    return X, nl.teacher_labels(X, torch.randn(d, generator=gen))


@pytest.mark.parametrize(("n", "d", "seed"), [(8, 10, 0), (30, 5, 1), (40, 100, 2)])
def test_svm_satisfies_kkt_and_matches_slsqp(n, d, seed):
    optimize = pytest.importorskip("scipy.optimize")
    X, y = _data(n, d, seed)
    svm = nl.svm_l2(X, y)
    m = y * (X @ svm.w)
    assert float(m.min()) >= 1 - 1e-9  # primal feasibility
    assert bool((svm.alpha >= 0).all())  # dual feasibility
    torch.testing.assert_close(svm.w, (svm.alpha * y) @ X)  # stationarity
    assert float((svm.alpha * (m - 1)).abs().max()) <= 1e-9  # complementary slackness
    torch.testing.assert_close(m[svm.support], torch.ones(len(svm.support)), atol=1e-9, rtol=0)
    Z = (y[:, None] * X).numpy()
    res = optimize.minimize(
        lambda w: 0.5 * w @ w,
        svm.w.numpy() * 1.1,
        jac=lambda w: w,
        method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda w: Z @ w - 1, "jac": lambda w: Z}],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    torch.testing.assert_close(svm.w, torch.as_tensor(res.x), atol=1e-6, rtol=1e-6)


def test_l1_max_margin_is_feasible_and_optimal_against_linprog_dual():
    X, y = _data(20, 30, 3)
    w = nl.l1_max_margin(X, y)
    assert float((y * (X @ w)).min()) >= 1 - 1e-9
    # any feasible w' has ‖w'‖₁ ≥ ‖w‖₁: check against the SVM rescaled to margin 1
    svm = nl.svm_l2(X, y).w
    assert float(w.abs().sum()) <= float(svm.abs().sum()) + 1e-9


def test_normalised_margin_is_maximal_at_the_svm():
    pytest.importorskip("scipy.optimize")
    X, y = _data(8, 10, 0)
    svm = nl.svm_l2(X, y)
    gamma = nl.normalised_margin(X, y, svm.w)
    torch.testing.assert_close(gamma, 1 / svm.w.norm(), atol=1e-12, rtol=0)
    # scale-invariant, batched like a loop, and the literal min_i y_i x_iᵀw / ‖w‖
    W = svm.w + 0.1 * torch.randn(50, 10, generator=torch.Generator().manual_seed(1))
    batched = nl.normalised_margin(X, y, W)
    torch.testing.assert_close(batched, torch.stack([nl.normalised_margin(X, y, 3.0 * w) for w in W]))
    literal = torch.tensor([min(float(y[i] * X[i] @ w) for i in range(8)) / float(w.norm()) for w in W])
    torch.testing.assert_close(batched, literal)
    # every other direction, near or far, has a smaller normalised margin
    far = torch.randn(200, 10, generator=torch.Generator().manual_seed(2))
    assert float(torch.cat([batched, nl.normalised_margin(X, y, far)]).max()) < float(gamma)
    with pytest.raises(ValueError, match=r"^normalised_margin: w = 0 has no direction"):
        nl.normalised_margin(X, y, torch.zeros(10))


def test_min_norm_interpolant():
    X, y = _data(6, 9, 4)
    w = nl.min_norm_interpolant(X, y)
    torch.testing.assert_close(X @ w, y)
    torch.testing.assert_close(w, X.T @ torch.linalg.solve(X @ X.T, y))


def test_svm_rejects_non_separable():
    X = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match=r"^svm_l2: the data are not linearly separable"):
        nl.svm_l2(X, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"^svm_l2: expected X of shape \(n, d\)"):
        nl.svm_l2(X, torch.ones(3))


def test_margin_closed_form_solves_its_ode():
    m0 = torch.tensor([-2.0, 0.0, 0.5, 30.0])
    t = torch.tensor(0.7, requires_grad=True)
    m = nl.training_fisher_margin(m0, t)
    torch.testing.assert_close(nl.training_fisher_margin(m0, 0.0), m0)
    rate = torch.stack([torch.autograd.grad(m[i], t, retain_graph=True)[0] for i in range(4)])
    torch.testing.assert_close(rate, 1 / torch.sigmoid(m.detach()))  # ṁ = 1/σ(m)
    big = nl.training_fisher_margin(torch.tensor(0.0), 1e8)
    assert float(big) == pytest.approx(
        1e8 + float(torch.nn.functional.softplus(torch.tensor(0.0))), rel=1e-15
    )


def test_training_fisher_ngd_margins_follow_closed_form():
    pytest.importorskip("torchdiffeq")
    X, y = _data(4, 6, 5)
    site = nl.training_fisher(X, y)
    model = nl.SignedDiagonal.from_end_to_end(torch.zeros(6), 2, scale=0.7)
    traj = nl.flow(model, site, [0.0, 0.5, 2.0], "ngd", rtol=1e-10, atol=1e-12)
    m = nl.margins(X, y, traj.w)
    torch.testing.assert_close(m, nl.training_fisher_margin(m[0], traj.times[:, None]), rtol=1e-7, atol=1e-8)


def test_discrete_step_is_theta_minus_lr_direction():
    X, y = _data(5, 4, 6)
    site = nl.population_fisher(X, y)
    model = nl.DeepLinear.from_end_to_end(torch.ones(4), 2, generator=torch.Generator().manual_seed(0))
    params = model.params()
    v = nl.direction(model, site, params)
    new = nl.step(model, site, params, 0.1)
    for k in params:
        torch.testing.assert_close(new[k], params[k] - 0.1 * v[k])
    traj = nl.descend(model, site, 0.1, 2, record=[0, 1, 2])
    torch.testing.assert_close(traj.w[1], model.end_to_end(new))
    torch.testing.assert_close(traj.times, torch.tensor([0.0, 0.1, 0.2]))


def test_end_to_end_velocity_is_pushforward():
    X, y = _data(5, 4, 7)
    site = nl.population_fisher(X, y)
    model = nl.SignedDiagonal.from_end_to_end(torch.tensor([0.3, -0.2, 0.0, 1.0]), 3, scale=0.5)
    params = model.params()
    J = ng.jacobian(model.end_to_end, params)
    v = ng.flatten_params(nl.direction(model, site, params))
    torch.testing.assert_close(nl.end_to_end_velocity(model, site), -J @ v)
    # full-rank J: the end-to-end velocity is -G_pop(w)^{-1} ∇L(w), whatever the depth
    w = model().detach()
    grad = torch.func.grad(nl.training_loss(X, y))(w)
    expected = -torch.linalg.solve(X.shape[0] * nl.logistic_population_fisher(w), grad)
    torch.testing.assert_close(nl.end_to_end_velocity(model, site), expected)


def test_flow_and_descend_errors():
    X, y = _data(5, 4, 8)
    site = nl.training_fisher(X, y)
    with pytest.raises(ValueError, match=r"^flow: times must be increasing"):
        nl.flow(nl.DepthOne(4), site, [0.0, 0.0])
    with pytest.raises(ValueError, match=r"^descend: need steps >= 0 and lr > 0"):
        nl.descend(nl.DepthOne(4), site, -1.0, 3)
