"""Fisher sites: population closed form vs quadrature and Monte Carlo; NGD directions vs the reference."""

import math

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


def _data(n=5, d=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = nl.gaussian_inputs(n, d, gen)
    return X, nl.teacher_labels(X, torch.randn(d, generator=gen))


@pytest.mark.parametrize("r", [0.0, 0.05, 0.7, 3.0, 25.0, 200.0])
def test_population_coefficients_match_scipy_quad(r):
    integrate = pytest.importorskip("scipy.integrate")

    def sig_prime(u):
        return 0.25 / math.cosh(u / 2) ** 2

    def density(z):
        return math.exp(-z * z / 2) / math.sqrt(2 * math.pi)

    a, b = nl.logistic_population_coefficients(torch.tensor(r))
    # integrate in u = r z (peak width 1) for r > 0
    if r == 0:
        qa = qb = 0.25
    else:
        qa = integrate.quad(lambda u: sig_prime(u) * density(u / r) / r, -80, 80, points=[0], limit=200)[0]
        qb = integrate.quad(
            lambda u: sig_prime(u) * u * u * density(u / r) / r**3, -80, 80, points=[0], limit=200
        )[0]
    assert float(a) == pytest.approx(qa, rel=1e-10)
    assert float(b) == pytest.approx(qb, rel=1e-10)


def test_population_coefficients_large_r_asymptotics():
    r = 1e4
    a, b = nl.logistic_population_coefficients(torch.tensor(r))
    assert float(a) == pytest.approx(1 / (r * math.sqrt(2 * math.pi)), rel=1e-6)
    assert float(b) == pytest.approx(math.pi**2 / (3 * r**3 * math.sqrt(2 * math.pi)), rel=1e-6)


def test_population_fisher_matches_monte_carlo():
    gen = torch.Generator().manual_seed(3)
    w = torch.tensor([0.8, -0.5, 0.3])
    x = torch.randn(400_000, 3, generator=gen)
    s = x @ w
    mc = (x.T * (torch.sigmoid(s) * torch.sigmoid(-s))) @ x / x.shape[0]
    torch.testing.assert_close(nl.logistic_population_fisher(w), mc, atol=2e-3, rtol=0)
    factor = nl.logistic_population_factor(w)
    torch.testing.assert_close(factor @ factor.T, nl.logistic_population_fisher(w))


@pytest.mark.parametrize("loss", ["logistic", "squared"])
@pytest.mark.parametrize("site_name", ["training", "population", "population-sample", "empirical"])
@pytest.mark.parametrize(
    "make",
    [
        lambda w: nl.SignedDiagonal.from_end_to_end(w, 3, scale=0.6),
        lambda w: nl.DeepLinear.from_end_to_end(w, 3, width=4, generator=torch.Generator().manual_seed(0)),
    ],
)
def test_ngd_direction_equals_reference(loss, site_name, make):
    X, y = _data()
    if loss == "squared":
        y = X @ torch.linspace(-1, 1, X.shape[1])
    sample = torch.randn(50, X.shape[1], generator=torch.Generator().manual_seed(9))
    site = {
        "training": lambda: nl.training_fisher(X, y, loss),
        "population": lambda: nl.population_fisher(X, y, loss),
        "population-sample": lambda: nl.population_fisher(X, y, loss, sample=sample),
        "empirical": lambda: nl.empirical_fisher(X, y, loss),
    }[site_name]()
    model = make(0.3 * torch.randn(X.shape[1], generator=torch.Generator().manual_seed(5)))
    params = model.params()
    got = nl.direction(model, site, params, "ngd")
    phi = lambda p: site.readout(model.end_to_end(p))  # noqa: E731
    want = ng.reference.natural_gradient(
        phi, params, site.loss, metric=site.metric, inverse=ng.MoorePenrose()
    )
    torch.testing.assert_close(
        ng.flatten_params(got), ng.flatten_params(want.direction), rtol=1e-8, atol=1e-10
    )
    assert site.true_fisher == (site_name != "empirical")


def test_population_metric_is_n_times_expectation():
    X, y = _data()
    w = torch.tensor([0.3, -1.0, 0.2, 0.0, 0.5, 0.1, -0.4])
    site = nl.population_fisher(X, y)
    torch.testing.assert_close(site.metric.fn(w), X.shape[0] * nl.logistic_population_fisher(w))


def test_gd_direction_is_the_gradient():
    X, y = _data()
    model = nl.SignedDiagonal.from_end_to_end(torch.full((7,), 0.2), 2)
    site = nl.training_fisher(X, y)
    params = model.params()
    got = nl.direction(model, site, params, "gd")
    w = model()
    grad_w = -(X.T @ (y * torch.sigmoid(-y * (X @ w)))).detach()
    torch.testing.assert_close(got["u_plus"], 2 * model.u_plus.detach() * grad_w)
    torch.testing.assert_close(got["u_minus"], -2 * model.u_minus.detach() * grad_w)


def test_errors_name_the_call():
    X, y = _data()
    with pytest.raises(ValueError, match=r"^training_fisher: loss must be one of"):
        nl.training_fisher(X, y, "hinge")
    with pytest.raises(ValueError, match=r"^population_fisher: expected X of shape \(n, d\)"):
        nl.population_fisher(X, y[:-1])
    with pytest.raises(ValueError, match=r"^population_fisher: sample must have shape \(N, 7\)"):
        nl.population_fisher(X, y, sample=torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"^logistic_population_coefficients: r must be >= 0"):
        nl.logistic_population_coefficients(-1.0)
    with pytest.raises(ValueError, match=r"^direction: method must be one of"):
        nl.direction(nl.DepthOne(7), nl.training_fisher(X, y), nl.DepthOne(7).params(), "adam")
