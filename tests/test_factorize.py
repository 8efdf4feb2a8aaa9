"""The reusable factorisation: ng.factorize(...).solve(loss) is the one-shot call, on every route and inverse."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import natgrad as ng
from cases import CASES, INVERSE_NAMES, METRICS, ROUTES, inverses, relative_error

F64 = torch.float64
# A module case and a plain callable, each with a metric whose ∇z L lies in the range of g (c-forms) and one
# where it does not (general forms), so that every branch of every inverse runs.
POINTS = [("mlp-overparam", "categorical"), ("cnn", "dense-singular"), ("polynomial", "gaussian")]


def _point(case_name: str, metric_name: str):
    case = next(c for c in CASES if c.name == case_name)
    phi, params = case.build(F64)
    metric, loss = next(m for m in METRICS if m.name == metric_name).make(phi(params))
    return case, phi, params, metric, loss


def _same(a: ng.NaturalGradient, b: ng.NaturalGradient) -> None:
    """Bitwise the same result: both run the same operations in the same order."""
    assert torch.equal(ng.flatten_params(a.direction), ng.flatten_params(b.direction))
    assert torch.equal(a.pushforward, b.pushforward)
    assert torch.equal(ng.flatten_params(a.gradient), ng.flatten_params(b.gradient))
    assert (a.rank, a.method, a.status, a.info) == (b.rank, b.method, b.status, b.info)


PARAMS = [
    pytest.param(c, m, i, r, id=f"{c}-{m}-{i}-{r}")
    for c, m in POINTS
    for i in INVERSE_NAMES
    for r in [*ROUTES, "structured", "auto"]
    if not (r == "structured" and c == "polynomial")
]


@pytest.mark.parametrize(("case_name", "metric_name", "inverse_name", "route"), PARAMS)
def test_factorize_solve_is_the_one_shot_call(case_name, metric_name, inverse_name, route):
    _, phi, params, metric, loss = _point(case_name, metric_name)
    inverse = inverses(ng.num_params(params), F64)[inverse_name]
    one_shot = ng.natural_gradient(phi, params, loss, metric, inverse, method=route)
    fac = ng.factorize(phi, params, metric, inverse, method=route)
    res = fac.solve(loss)
    _same(res, one_shot)
    assert torch.equal(res.loss, one_shot.loss)
    assert fac.method == res.method and fac.rank == res.rank
    # An output gradient gives the same answer (no loss value unless one is passed).
    grad_z = torch.func.grad(lambda z: loss(z).reshape(()))(fac.output)
    by_gradient = fac.solve_output_gradient(grad_z)
    _same(by_gradient, one_shot)
    assert by_gradient.loss is None


@pytest.mark.parametrize("route", [*ROUTES, "structured"])
def test_one_factorisation_serves_many_losses_and_dampings(route):
    """Momentum and line search: new output gradients and new dampings at the same point, one factorisation."""
    _, phi, params, metric, loss = _point("mlp-overparam", "categorical")
    fac = ng.factorize(phi, params, metric, method=route)
    for k in range(3):
        target = torch.linspace(-1.0, 1.0, fac.output.numel(), dtype=F64).reshape(fac.output.shape) * (k + 1)

        def other(z, target=target):
            return ((z - target) ** 2).sum() + loss(z)

        ref = ng.reference.natural_gradient(phi, params, other, metric)
        res = fac.solve(other)
        assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= 1e-9
        _same(res, ng.natural_gradient(phi, params, other, metric, method=route))
    for lam in (1e-2, 1.0):
        damped = fac.solve(loss, inverse=ng.Damped(lam))
        ref = ng.reference.natural_gradient(phi, params, loss, metric, ng.Damped(lam))
        assert relative_error(ng.flatten_params(damped.direction), ng.flatten_params(ref.direction)) <= 1e-9
        _same(damped, ng.natural_gradient(phi, params, loss, metric, ng.Damped(lam), method=route))


def test_an_inverse_the_factorisation_cannot_serve_is_refused():
    _, phi, params, metric, loss = _point("polynomial", "gaussian")
    d = ng.num_params(params)
    fac = ng.factorize(phi, params, metric, method="dual")
    with pytest.raises(ng.InvalidInputError, match=r"factorize: the inverse's cutoff rtol=1e-06 differs"):
        fac.solve(loss, inverse=ng.MoorePenrose(rtol=1e-6))
    with pytest.raises(
        ValueError, match=r"factorize: this factorisation was made for MoorePenrose, got MinNorm"
    ):
        fac.solve(loss, inverse=ng.MinNorm(torch.ones(d, dtype=F64)))
    with pytest.raises(
        TypeError, match=r"factorize: inverse must be MoorePenrose, GInverse, MinNorm or Damped"
    ):
        fac.solve(loss, inverse="pinv")
    with pytest.raises(ValueError, match=r"factorize: output_grad must have the shape of phi\(params\)"):
        fac.solve_output_gradient(torch.ones(fac.output.numel() + 1, dtype=F64))
    with pytest.raises(TypeError, match=r"factorize: output_grad must be torch.float64"):
        fac.solve_output_gradient(torch.ones(fac.output.shape, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"factorize: output_grad contains 1 non-finite"):
        bad = torch.zeros(fac.output.numel(), dtype=F64)
        bad[0] = float("nan")
        fac.solve_output_gradient(bad)


def test_unconverged_krylov_raises_unless_asked_for_the_status():
    _, phi, params, metric, loss = _point("mlp-overparam", "categorical")
    with pytest.raises(
        ng.ConvergenceError, match=r"natural_gradient: krylov route stopped after 2 iterations"
    ):
        ng.natural_gradient(phi, params, loss, metric, method="krylov", max_iter=2)
    res = ng.natural_gradient(phi, params, loss, metric, method="krylov", max_iter=2, throw=False)
    assert res.status == "max_iter_reached" and res.info["converged"] is False
    try:
        ng.natural_gradient(phi, params, loss, metric, method="krylov", max_iter=2)
    except RuntimeError as error:  # the old warning's category, now an error
        assert error.result.status == "max_iter_reached"
    converged = ng.natural_gradient(phi, params, loss, metric, method="krylov")
    assert converged.status == "success" and converged.info["converged"] is True


def test_error_classes_keep_their_builtin_bases():
    _, phi, params, metric, loss = _point("polynomial", "gaussian")
    with pytest.raises(ng.MemoryBudgetError) as budget:
        ng.natural_gradient(phi, params, loss, metric, method="primal", memory_budget=8)
    assert isinstance(budget.value, MemoryError) and isinstance(budget.value, ng.NatgradError)
    with pytest.raises(ng.StructuredUnsupported) as structured:
        ng.natural_gradient(phi, params, loss, metric, method="structured")
    assert isinstance(structured.value, ValueError) and structured.value.reason.startswith("phi is a plain")
    with pytest.raises(ng.InvalidInputError) as bad:
        ng.natural_gradient(phi, params, loss, metric, method="svd")
    assert isinstance(bad.value, ValueError)


def test_result_is_frozen():
    _, phi, params, metric, loss = _point("polynomial", "gaussian")
    res = ng.natural_gradient(phi, params, loss, metric)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.rank = 0


@dataclasses.dataclass(frozen=True)
class _GramSvdRoute:
    """A route added in one class plus one registry entry: the SVD of G itself (d × d)."""

    name: str = "gram-svd"
    bounded: bool = True

    def memory(self, r, d, itemsize):
        return itemsize * (r * d + 4 * d * d)

    def auto_rank(self, r, d):
        return None

    def refuses(self, record, params):
        return None

    def supports(self, problem):
        return None

    def delegate(self, problem):
        return self

    def factorize(self, problem):
        from natgrad._routes._factorization import SpectralFactorization

        a = problem.a_dense()
        _, s, vh = torch.linalg.svd(a.T @ a)
        return SpectralFactorization(s, vh.T, problem.rtol)


def test_a_new_route_is_one_class_and_one_registry_entry(monkeypatch):
    from natgrad._routes import _registry

    monkeypatch.setattr(_registry, "ROUTES", (*_registry.ROUTES, _GramSvdRoute()))
    _, phi, params, metric, loss = _point("cnn", "dense-singular")
    for name, inverse in inverses(ng.num_params(params), F64).items():
        res = ng.natural_gradient(phi, params, loss, metric, inverse, method="gram-svd")
        ref = ng.reference.natural_gradient(phi, params, loss, metric, inverse)
        assert res.method == "gram-svd" and res.rank == ref.rank, name
        assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= 1e-9
    with pytest.raises(ValueError, match=r"'structured', 'gram-svd', got 'svd'"):
        ng.natural_gradient(phi, params, loss, metric, method="svd")
    with pytest.raises(MemoryError, match=r"method='gram-svd' needs about .*; use method='krylov'"):
        ng.natural_gradient(phi, params, loss, metric, method="gram-svd", memory_budget=64)


def test_refuses_says_which_inverses_reuse_the_factorisation():
    _, phi, params, metric, _ = _point("polynomial", "gaussian")
    d = ng.num_params(params)
    h = ng.MinNorm(torch.ones(d, dtype=F64))
    fac = ng.factorize(phi, params, metric, method="primal")
    assert fac.refuses(ng.Damped(3.0)) is None and fac.refuses(ng.GInverse(torch.eye(d, dtype=F64))) is None
    assert "differs from the factorisation's" in fac.refuses(ng.MoorePenrose(rtol=1e-3))
    assert "MinNorm changes the factored matrix" in fac.refuses(h)
    assert ng.factorize(phi, params, metric, h, method="primal").refuses(h) is None
