"""natgrad.diagnostics against literal float64 computations (materialised J, torch.linalg.pinv)."""

from __future__ import annotations

import math

import pytest
import torch

import natgrad as ng
from natgrad import diagnostics as dg

F64 = torch.float64
GEN_SEED = 11


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(GEN_SEED)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm((a - b).reshape(-1)) / torch.linalg.norm(b.reshape(-1)))


def _tanh_model():
    """φ(ξ) = C tanh(Wξ + b): d = 7, n = 5, rank 3; a dense SPD metric; a non-quadratic loss."""
    gen = _gen()
    w = torch.randn(3, 7, generator=gen, dtype=F64) / 7**0.5
    b = 0.3 * torch.randn(3, generator=gen, dtype=F64)
    c = torch.randn(5, 3, generator=gen, dtype=F64)
    y = torch.randn(5, generator=gen, dtype=F64)
    a = torch.randn(5, 5, generator=gen, dtype=F64)
    metric = ng.metrics.Dense(a @ a.T / 5 + 0.5 * torch.eye(5, dtype=F64))
    xi = 0.5 * torch.randn(7, generator=gen, dtype=F64)

    def phi(x: torch.Tensor) -> torch.Tensor:
        return c @ torch.tanh(w @ x + b)

    def loss(z: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.cosh(z - y)).sum() + 0.1 * (z**3).sum()

    return phi, xi, loss, metric


def _literal(phi, xi, loss, metric):
    """Literal float64 objects: J (jacfwd), g, ∇z L (autograd), G = Jᵀ g J, G⁺ (pinv)."""
    jac = torch.func.jacfwd(phi)(xi)
    z = phi(xi).detach()
    g = metric.matrix(z)
    zz = z.clone().requires_grad_(True)
    (gz,) = torch.autograd.grad(loss(zz), zz)
    gram = jac.T @ g @ jac
    return jac, g, gz, gram, torch.linalg.pinv(gram, hermitian=True)


def _pair(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([x[0] * x[1], x[0] * x[2]])


def _pair_loss(z: torch.Tensor) -> torch.Tensor:
    return (torch.tensor([1.0, 0.3], dtype=z.dtype) * z).sum() + 0.5 * (z**2).sum()


# --- submersion test -------------------------------------------------------------------------------------


def test_submersion_rank_matches_literal_rank():
    phi, xi, _, _ = _tanh_model()
    rep = dg.submersion_test(phi, xi, model_dim=3)
    jac = torch.func.jacfwd(phi)(xi)
    assert rep.rank == int(torch.linalg.matrix_rank(jac)) == 3
    assert rep.is_submersion and (rep.n_outputs, rep.n_params) == (5, 7)
    s = torch.linalg.svdvals(jac)
    assert max(abs(a - float(b / s[0])) for a, b in zip(rep.singular_values, s, strict=True)) <= 1e-12
    assert not dg.submersion_test(phi, xi, model_dim=4).is_submersion


def test_submersion_at_rank_drop():
    rep = dg.submersion_test(_pair, torch.tensor([0.0, 0.8, -0.6], dtype=F64), model_dim=2)
    assert rep.rank == 1 and not rep.is_submersion


def test_submersion_errors():
    phi, xi, _, _ = _tanh_model()
    with pytest.raises(TypeError, match=r"submersion_test: model_dim must be an int"):
        dg.submersion_test(phi, xi, model_dim=2.0)
    with pytest.raises(ValueError, match=r"submersion_test: model_dim must satisfy 0 <= model_dim <= n = 5"):
        dg.submersion_test(phi, xi, model_dim=6)
    with pytest.raises(ValueError, match=r"submersion_test: rtol must be >= 0"):
        dg.submersion_test(phi, xi, model_dim=3, rtol=-1.0)


# --- pushforward -----------------------------------------------------------------------------------------


def test_pushforward_matches_literal_projection():
    phi, xi, loss, metric = _tanh_model()
    jac, g, gz, _, gram_pinv = _literal(phi, xi, loss, metric)
    rep = dg.pushforward_check(phi, xi, loss, metric)
    literal_push = jac @ gram_pinv @ jac.T @ gz
    u = torch.linalg.solve(g, gz)
    assert _rel(rep.pushforward, literal_push) <= 1e-10
    assert _rel(rep.ambient, u) <= 1e-12
    assert _rel(rep.projection, literal_push) <= 1e-10  # Π u = J G⁺ Jᵀ g u = J G⁺ Jᵀ ∇z L
    assert rep.error_vs_projection <= 1e-10 and rep.rank == 3
    assert math.isclose(rep.outside_image, _rel(literal_push, u), rel_tol=1e-8)
    assert rep.model_gradient is None and rep.error_vs_model_gradient is None


def test_pushforward_rank_drop_error_is_orthogonal_part():
    xi = torch.tensor([0.0, 0.8, -0.6], dtype=F64)
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)
    metric = ng.metrics.Dense(a)
    rep = dg.pushforward_check(_pair, xi, _pair_loss, metric, model_tangent=torch.eye(2, dtype=F64))
    grad_m = torch.linalg.solve(a, torch.tensor([1.0, 0.3], dtype=F64))  # M = R²: grad^M L = g⁻¹∇L(0)
    t = torch.tensor([0.8, -0.6], dtype=F64)  # im J at ξ₁ = 0
    along = t * (t @ a @ grad_m) / (t @ a @ t)  # literal g-projection onto im J
    assert _rel(rep.model_gradient, grad_m) <= 1e-12
    assert _rel(rep.pushforward, along) <= 1e-12
    assert math.isclose(rep.error_vs_model_gradient, _rel(along, grad_m), rel_tol=1e-10)
    assert rep.error_vs_model_gradient >= 1e-2
    assert rep.error_minus_outside <= 1e-12
    assert math.isclose(rep.model_gradient_outside_image, _rel(along, grad_m), rel_tol=1e-10)


def test_model_gradient_on_curved_tangent():
    g = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=F64))
    tangent = torch.tensor([[1.0], [1.0], [0.0]], dtype=F64)
    gz = torch.tensor([1.0, -3.0, 5.0], dtype=F64)
    t = tangent[:, 0]
    # the unique grad^M = α t with g(α t, t) = ∇Lᵀ t
    expected = t * (gz @ t) / (t @ g @ t)
    assert _rel(dg.model_gradient(g, gz, tangent), expected) <= 1e-14


def test_pushforward_float32():
    gen = _gen()
    xi = torch.randn(4, generator=gen)
    q = torch.softmax(torch.randn(4, generator=gen), 0)
    rep = dg.pushforward_check(
        lambda x: torch.softmax(x, 0), xi, lambda p: (q * (q.log() - p.log())).sum(), ng.metrics.FisherRao()
    )
    assert rep.pushforward.dtype == torch.float32
    assert _rel(rep.pushforward, torch.softmax(xi, 0) - q) <= 1e-5


def test_pushforward_errors():
    phi, xi, loss, metric = _tanh_model()
    with pytest.raises(ValueError, match=r"pushforward_check: model_tangent must have n = 5 rows"):
        dg.pushforward_check(phi, xi, loss, metric, model_tangent=torch.eye(3, dtype=F64))
    with pytest.raises(TypeError, match=r"pushforward_check: model_tangent must be a 2-D Tensor"):
        dg.pushforward_check(phi, xi, loss, metric, model_tangent=torch.ones(5, dtype=F64))


# --- projector and generalized inverses ------------------------------------------------------------------


def _ginverse(gram, gram_pinv, u, v):
    eye = torch.eye(gram.shape[0], dtype=F64)
    return gram_pinv + (eye - gram_pinv @ gram) @ u + v @ (eye - gram @ gram_pinv)


def test_projector_matrix_matches_literal_for_each_inverse():
    phi, xi, loss, metric = _tanh_model()
    jac, g, _, gram, gram_pinv = _literal(phi, xi, loss, metric)
    gen = _gen()
    u, v = torch.randn(7, 7, generator=gen, dtype=F64), torch.randn(7, 7, generator=gen, dtype=F64)
    literal = jac @ gram_pinv @ jac.T @ g
    for inverse, ginv in [
        (ng.MoorePenrose(), gram_pinv),
        (ng.GInverse(u, v), _ginverse(gram, gram_pinv, u, v)),
    ]:
        p = dg.projector_matrix(phi, xi, metric, inverse)
        assert _rel(p, jac @ ginv @ jac.T @ g) <= 1e-10
        assert _rel(p, literal) <= 1e-10
    lam = 0.1
    damped = jac @ torch.linalg.solve(gram + lam * torch.eye(7, dtype=F64), jac.T) @ g
    assert _rel(dg.projector_matrix(phi, xi, metric, ng.Damped(lam)), damped) <= 1e-10


def test_projector_check_identities():
    phi, xi, _, metric = _tanh_model()
    rep = dg.projector_check(phi, xi, metric, ng.MinNorm(torch.linspace(0.5, 2.0, 7, dtype=F64)))
    assert max(rep.idempotence, rep.g_symmetry, rep.reproduces_image, rep.vs_reference) <= 1e-10
    assert abs(rep.trace - 3.0) <= 1e-10
    bad = dg.projector_check(phi, xi, metric, ng.Damped(1.0))
    assert bad.idempotence >= 1e-2 and bad.vs_reference >= 1e-2


def test_ginverse_independence_against_literal():
    phi, xi, loss, metric = _tanh_model()
    jac, _, gz, gram, gram_pinv = _literal(phi, xi, loss, metric)
    gen = _gen()
    u, v = torch.randn(7, 7, generator=gen, dtype=F64), torch.randn(7, 7, generator=gen, dtype=F64)
    rep = dg.ginverse_independence(phi, xi, loss, [ng.MoorePenrose(), ng.GInverse(u, v)], metric)
    grad = jac.T @ gz
    v0, v1 = gram_pinv @ grad, _ginverse(gram, gram_pinv, u, v) @ grad
    assert math.isclose(rep.direction_gaps[0], _rel(v1, v0), rel_tol=1e-8)
    assert rep.max_direction_gap >= 1e-2
    assert rep.max_pushforward_gap <= 1e-10 and rep.max_kernel_residual <= 1e-10
    with pytest.raises(ValueError, match=r"ginverse_independence: pass at least 2 inverses"):
        dg.ginverse_independence(phi, xi, loss, [ng.MoorePenrose()], metric)


# --- damping ---------------------------------------------------------------------------------------------


def test_damping_bias_against_literal():
    phi, xi, loss, metric = _tanh_model()
    jac, _, gz, gram, gram_pinv = _literal(phi, xi, loss, metric)
    grad = jac.T @ gz
    lams = [1e-3, 1e-2, 1e-1]
    rep = dg.damping_bias(phi, xi, loss, lams, metric)
    push0 = jac @ gram_pinv @ grad
    for lam, bias, dbias in zip(lams, rep.pushforward_bias, rep.direction_bias, strict=True):
        v_lam = torch.linalg.solve(gram + lam * torch.eye(7, dtype=F64), grad)
        assert math.isclose(bias, _rel(jac @ v_lam, push0), rel_tol=1e-6)
        assert math.isclose(dbias, _rel(v_lam, gram_pinv @ grad), rel_tol=1e-6)
    assert rep.pushforward_bias[0] < rep.pushforward_bias[1] < rep.pushforward_bias[2]


def test_loglog_slope_and_damping_errors():
    assert math.isclose(dg.loglog_slope([1.0, 10.0, 100.0], [3.0, 30.0, 300.0]), 1.0, rel_tol=1e-12)
    assert math.isclose(dg.loglog_slope([1.0, 2.0, 4.0], [1.0, 4.0, 16.0]), 2.0, rel_tol=1e-12)
    assert math.isnan(dg.loglog_slope([1.0], [1.0]))
    phi, xi, loss, metric = _tanh_model()
    with pytest.raises(ValueError, match=r"damping_bias: dampings must be a non-empty list of positive"):
        dg.damping_bias(phi, xi, loss, [0.1, 0.0], metric)


# --- reparametrisation -----------------------------------------------------------------------------------


def _softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, 0)


def _kl(q: torch.Tensor):
    return lambda p: (q * (q.log() - p.log())).sum()


def test_chart_jacobian_and_pullback():
    m = torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=F64)
    eta = torch.tensor([0.3, -1.2], dtype=F64)
    assert torch.equal(dg.chart_jacobian(lambda e: m @ e, eta), m)
    nonlinear = dg.chart_jacobian(lambda e: e + torch.tanh(e), eta)
    assert _rel(nonlinear, torch.diag(2 - torch.tanh(eta) ** 2)) <= 1e-14
    h = torch.tensor([1.0, 4.0], dtype=F64)
    assert _rel(dg.pullback_metric(h, m), m.T @ torch.diag(h) @ m) <= 1e-15
    with pytest.raises(TypeError, match=r"chart_jacobian: eta must be a Tensor"):
        dg.chart_jacobian(lambda e: e, [0.0, 1.0])


def test_kernel_invariance_criterion():
    ones = torch.ones(4, 1, dtype=F64) / 2
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=_gen(), dtype=F64))
    assert dg.kernel_invariance(q, ones) <= 1e-14
    assert dg.kernel_invariance(torch.eye(4, dtype=F64) + 0.7, ones) <= 1e-14
    f = torch.diag(torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=F64))
    fft = f @ f.T
    image = fft @ ones
    literal = float(torch.linalg.norm(image - ones @ (ones.T @ image)) / torch.linalg.matrix_norm(fft, ord=2))
    assert math.isclose(dg.kernel_invariance(f, ones), literal, rel_tol=1e-12)
    assert dg.kernel_invariance(f, torch.zeros(4, 0, dtype=F64)) == 0.0


def test_reparametrisation_check_against_literal():
    gen = _gen()
    eta, q = (
        torch.randn(4, generator=gen, dtype=F64),
        torch.softmax(torch.randn(4, generator=gen, dtype=F64), 0),
    )
    scale = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=F64)

    def f(e: torch.Tensor) -> torch.Tensor:
        return scale * e + 0.5 * torch.tanh(e)

    metric = ng.metrics.FisherRao()
    rep = dg.reparametrisation_check(_softmax, f, eta, _kl(q), metric)
    xi = f(eta)
    jac_f = torch.diag(scale + 0.5 * (1 - torch.tanh(eta) ** 2))
    jac, _, gz, gram, gram_pinv = _literal(_softmax, xi, _kl(q), metric)
    v = gram_pinv @ jac.T @ gz
    jac_psi = jac @ jac_f
    w = torch.linalg.pinv(jac_f.T @ gram @ jac_f, hermitian=True) @ jac_psi.T @ gz
    assert _rel(rep.jacobian_f, jac_f) <= 1e-14
    assert _rel(rep.direct, v) <= 1e-10
    assert _rel(rep.transported, jac_f @ w) <= 1e-10
    assert math.isclose(rep.parameter_gap, _rel(jac_f @ w, v), rel_tol=1e-8)
    assert rep.parameter_gap >= 1e-2 and rep.criterion >= 1e-2
    assert rep.kernel_residual <= 1e-10 and rep.pushforward_gap <= 1e-10 and rep.kernel_dim == 1
    h = torch.linspace(1.0, 2.0, 4, dtype=F64)
    inv = dg.reparametrisation_check(
        _softmax, f, eta, _kl(q), metric, ng.MinNorm(dg.pullback_metric(h, jac_f)), ng.MinNorm(h)
    )
    assert inv.parameter_gap <= 1e-10


def test_reparametrisation_errors():
    with pytest.raises(
        ValueError, match=r"reparametrisation_check: f must map η to a ξ with as many entries"
    ):
        dg.reparametrisation_check(
            _softmax, lambda e: torch.cat([e, e[:1]]), torch.zeros(3, dtype=F64), _kl(torch.full((4,), 0.25))
        )


# --- cutoff ----------------------------------------------------------------------------------------------


def test_cutoff_sensitivity_against_literal():
    xi = torch.tensor([1e-4, 0.8, -0.6], dtype=F64)
    rtols = [1e-14, 1e-6]
    rep = dg.cutoff_sensitivity(_pair, xi, _pair_loss, rtols, method="lstsq")
    jac, _, gz, gram, _ = _literal(_pair, xi, _pair_loss, ng.metrics.Euclidean())
    assert rep.ranks == (2, 1)
    for rtol, err in zip(rtols, rep.pushforward_errors, strict=True):
        push = jac @ torch.linalg.pinv(gram, rtol=rtol, hermitian=True) @ jac.T @ gz
        assert abs(err - _rel(push, gz)) <= 1e-8  # reference: g⁻¹∇L = ∇L (submersion onto R²)
    assert rep.pushforward_errors[0] <= 1e-10 and rep.pushforward_errors[1] >= 1e-2
    s = torch.linalg.svdvals(jac)
    assert math.isclose(rep.singular_values[1], float(s[1] / s[0]), rel_tol=1e-10)
    with pytest.raises(ValueError, match=r"cutoff_sensitivity: rtols must be a non-empty list"):
        dg.cutoff_sensitivity(_pair, xi, _pair_loss, [])
