"""Nonlinear networks: zero read-out MLPs, the core lemma J v = g⁻¹∇u L with full row rank J, the discrete
law u − y = (1 − η)^k (u₀ − y), and the experiment's claims on its quick run."""

import pytest
import torch

import natgrad as ng
from natgrad.experiments import nonlinear_networks
from natgrad.experiments._base import no_progress
from natgrad.experiments._tanh_mlp import output_loss, output_metric, tanh_mlp, train


def _data(n=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    targets = torch.tanh(inputs @ torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64))
    return inputs, targets


def test_tanh_mlp_zero_readout_and_errors():
    inputs, _ = _data()
    net = tanh_mlp([7, 5], 3, hidden_gain=2.0, bias_std=1.0, seed=0)
    assert torch.equal(net(inputs), torch.zeros(6, 1, dtype=torch.float64))
    assert sum(p.numel() for p in net.parameters()) == (3 * 7 + 7) + (7 * 5 + 5) + (5 + 1)
    with pytest.raises(
        ValueError, match=r"tanh_mlp: widths must be a non-empty list of positive ints, got \[\]"
    ):
        tanh_mlp([], 3, hidden_gain=1.0, bias_std=1.0, seed=0)
    with pytest.raises(ValueError, match="output_loss: kind must be one of"):
        output_loss("hinge", torch.zeros(3))


@pytest.mark.parametrize("kind", ["squared", "logistic"])
@pytest.mark.parametrize("widths", [[8], [4, 4]])
def test_engine_direction_matches_reference_on_mlp(kind, widths):
    inputs, targets = _data()
    y = targets if kind == "squared" else torch.sign(targets)
    net = tanh_mlp(widths, 3, hidden_gain=2.0, bias_std=1.0, seed=1)
    with torch.no_grad():  # a nonzero read-out so that every layer is involved
        net[-1].weight.normal_(generator=torch.Generator().manual_seed(3))
    phi, params = ng.from_module(net, inputs)
    loss, metric = output_loss(kind, y), output_metric(kind)
    result = ng.natural_gradient(phi, params, loss, metric=metric)
    reference = ng.reference.natural_gradient(phi, params, loss, metric=metric)
    for name in params:
        torch.testing.assert_close(result.direction[name], reference.direction[name], atol=1e-8, rtol=1e-8)
    assert result.rank == 6  # full row rank on the 6 training inputs
    # core lemma: J v = g⁻¹∇u L (squared: u − y; logistic: −y/σ(y u))
    u = result.output.reshape(-1)
    expected = u - y if kind == "squared" else -y / torch.sigmoid(y * u)
    torch.testing.assert_close(result.pushforward.reshape(-1), expected, atol=1e-10, rtol=1e-10)


def test_ngd_outputs_follow_geometric_law():
    """u_k − y = (1 − η)^k (u₀ − y): exact at the first step (zero read-out), O(η) over a run."""
    inputs, targets = _data(n=8)
    eta, steps = 0.01, 50
    net = tanh_mlp([30], 3, hidden_gain=2.0, bias_std=1.0, seed=2)
    _, record = train(net, inputs, targets, "squared", natural=True, lr=eta, steps=steps)
    outputs = torch.tensor(record["outputs"], dtype=torch.float64)
    law = targets + (1 - eta) ** torch.arange(steps + 1, dtype=torch.float64)[:, None] * (
        outputs[0] - targets
    )
    assert (outputs[1] - law[1]).abs().max().item() < 1e-12  # only the read-out moves, and u is linear in it
    assert (outputs - law).abs().max().item() < 1e-3
    assert min(record["ranks"]) == 8
    _, coarse = train(net, inputs, targets, "squared", natural=True, lr=5 * eta, steps=steps // 5)
    coarse_outputs = torch.tensor(coarse["outputs"], dtype=torch.float64)
    # the discretisation error shrinks with η (first order): coarse error at t = 0.5 exceeds the fine one
    assert (coarse_outputs[-1] - law[-1]).abs().max() > (outputs[-1] - law[-1]).abs().max()


def test_quick_run_claims_hold():
    cfg = nonlinear_networks.config(quick=True, seed=0)
    results = nonlinear_networks.run(cfg, no_progress)
    claims = nonlinear_networks.claims(results)
    failed = [c.to_dict() for c in claims if not c.holds]
    assert not failed, failed
    closed = nonlinear_networks.closed_forms(results)
    assert closed["squared"] < 1e-3 and closed["logistic"] < 5e-2
