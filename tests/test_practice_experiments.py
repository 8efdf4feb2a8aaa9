"""The practice experiments: quick settings run end to end, their claims hold, figures are written."""

from __future__ import annotations

import json

import pytest

from natgrad.experiments import digits_classification, pinn_poisson
from natgrad.experiments._base import config_to_dict, no_progress


@pytest.mark.slow
@pytest.mark.parametrize("module", [digits_classification, pinn_poisson], ids=["digits", "pinn"])
def test_quick_run_claims_hold(module, tmp_path) -> None:
    experiment = module.EXPERIMENT
    assert experiment.paper == "practice"
    cfg = experiment.config(True, 0)
    json.dumps(config_to_dict(cfg))
    results = experiment.run(cfg, no_progress)
    results = json.loads(json.dumps(results))  # claims and figures work from the stored JSON
    claims = experiment.claims(results)
    assert claims, "an experiment must make claims"
    failing = [c.to_dict() for c in claims if not c.holds]
    assert not failing, failing
    paths = experiment.figures(results, tmp_path)
    assert paths and all(p.exists() and p.stat().st_size > 0 for p in paths)
