"""The PDE reproduction experiments: quick settings run end to end on fixed step budgets and their claims hold."""

from __future__ import annotations

import json

import pytest

from natgrad.experiments import pinn_heat, pinn_poisson_5d, pinn_poisson_10k
from natgrad.experiments._base import config_to_dict, no_progress
from natgrad.experiments._pde_training import first_reached


@pytest.mark.slow
@pytest.mark.parametrize(
    "module", [pinn_poisson_10k, pinn_poisson_5d, pinn_heat], ids=["poisson-10k", "poisson-5d", "heat"]
)
def test_quick_pde_run_claims_hold(module, tmp_path) -> None:
    experiment = module.EXPERIMENT
    cfg = experiment.config(True, 0)
    json.dumps(config_to_dict(cfg))
    results = json.loads(json.dumps(experiment.run(cfg, no_progress)))
    claims = experiment.claims(results)
    failing = [c.to_dict() for c in claims if not c.holds]
    assert claims and not failing, failing
    for name, steps in results["steps"].items():
        method = results["methods"][name]
        assert method["steps_taken"] == steps  # the budget is the step count
        assert set(method["time_to"]) == {"0.0001", "1e-05", "1e-06"}
    paths = experiment.figures(results, tmp_path)
    assert paths and all(p.exists() and p.stat().st_size > 0 for p in paths)


def test_first_reached_reads_the_first_evaluation_at_or_below_the_threshold() -> None:
    history = {"time": [0.0, 1.0, 2.5, 4.0], "step": [0, 10, 20, 30], "error": [1.0, 1e-3, 2e-5, 1e-6]}
    assert first_reached(history, 1e-4, "time") == 2.5
    assert first_reached(history, 1e-6, "step") == 30
    assert first_reached(history, 1e-7, "time") is None
