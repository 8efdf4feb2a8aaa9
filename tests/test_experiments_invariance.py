"""The invariance-paper experiments: quick runs hold every claim; building blocks against closed forms."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch

import natgrad as ng
from natgrad.experiments import Claim, no_progress

MODULES = [
    "projector_lemma",
    "pushforward",
    "softmax_kl",
    "independence_model",
    "reparametrisation",
    "flows_two_charts",
    "finite_step",
    "singular_points",
]
F64 = torch.float64


@pytest.mark.parametrize("module_name", MODULES)
def test_quick_run_holds_every_claim(module_name, tmp_path):
    module = importlib.import_module(f"natgrad.experiments.{module_name}")
    exp = module.EXPERIMENT
    assert exp.paper == "invariance"
    cfg = exp.config(True, 0)
    results = exp.run(cfg, no_progress)
    results = json.loads(json.dumps(results))  # claims and figures must work from stored JSON
    claims = exp.claims(results)
    assert claims and all(isinstance(c, Claim) for c in claims)
    assert len({c.id for c in claims}) == len(claims)
    failed = [(c.id, c.value, c.relation, c.threshold) for c in claims if not c.holds]
    assert not failed, failed
    paths = exp.figures(results, tmp_path)
    assert paths and all(p.exists() and p.suffix == ".png" and p.stat().st_size > 0 for p in paths)


def test_configs_are_frozen_and_seeded():
    for name in MODULES:
        exp = importlib.import_module(f"natgrad.experiments.{name}").EXPERIMENT
        cfg = exp.config(True, 7)
        assert cfg.seed == 7
        with pytest.raises(AttributeError):
            cfg.seed = 1


def test_kl_loss_gradient_and_softmax_closed_form():
    from natgrad.experiments._invariance_common import kl_loss, softmax

    q = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    p = torch.tensor([0.5, 0.25, 0.25], dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(kl_loss(q)(p), p)
    assert torch.allclose(grad, -q / p.detach(), rtol=1e-15, atol=0)
    xi = torch.tensor([0.3, -1.0, 2.0], dtype=F64)
    res = ng.reference.natural_gradient(softmax, xi, kl_loss(q), ng.metrics.FisherRao())
    assert float(torch.linalg.norm(res.pushforward - (softmax(xi) - q))) <= 1e-12


def test_independence_closed_form_is_fisher_projection():
    """(a − a_q)⊗b + a⊗(b − b_q) equals the literal Fisher–Rao projection of −q onto T M."""
    from natgrad.experiments.independence_model import _tangent, closed_form, independence

    params = {"alpha": torch.tensor([0.4, -0.2], dtype=F64), "beta": torch.tensor([1.0, 0.1], dtype=F64)}
    q = torch.tensor([0.4, 0.1, 0.15, 0.35], dtype=F64)
    p = independence(params)
    t = _tangent(p)
    g = torch.diag(1 / p)
    ambient = torch.linalg.solve(g, -q / p)  # g⁻¹∇p KL(q‖p) = −q
    proj = t @ torch.linalg.solve(t.T @ g @ t, t.T @ g @ ambient)
    assert float(torch.linalg.norm(proj - closed_form(p, q))) <= 1e-14
    jac = ng.jacobian(independence, params)
    assert int(torch.linalg.matrix_rank(jac)) == 2
    assert float(torch.linalg.norm(jac - t @ torch.linalg.lstsq(t, jac).solution)) <= 1e-14  # im J = T M


def test_charts_are_diffeomorphisms_with_the_stated_kernel_behaviour():
    from natgrad.diagnostics import chart_jacobian, kernel_invariance
    from natgrad.experiments._invariance_common import generator
    from natgrad.experiments.flows_two_charts import chart
    from natgrad.experiments.reparametrisation import INVARIANT, charts

    eta = torch.tensor([0.3, -1.1, 0.7, 2.0], dtype=F64)
    ones = torch.ones(4, 1, dtype=F64) / 2
    assert bool((torch.diagonal(chart_jacobian(chart, eta)) > 0).all())
    for name, f in charts(generator(0)).items():
        jac_f = chart_jacobian(f, eta)
        assert abs(float(torch.linalg.det(jac_f))) > 1e-3, name
        crit = kernel_invariance(jac_f, ones)
        assert (crit <= 1e-12) == (name in INVARIANT), (name, crit)


def test_singular_point_closed_forms():
    from natgrad.experiments.singular_points import C2, _projection

    c = torch.tensor(C2, dtype=F64)
    t = torch.tensor([2.0, 1.0], dtype=F64)
    proj = _projection(t, c)
    assert math.isclose(float((c - proj) @ t), 0.0, abs_tol=1e-15)
    assert torch.equal(_projection(torch.zeros(2, dtype=F64), c), torch.zeros(2, dtype=F64))
