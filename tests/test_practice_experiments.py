"""The practice experiments: quick settings run end to end, their claims hold, figures are written."""

from __future__ import annotations

import json
import time

import pytest
import torch

from natgrad.experiments import digits_classification, pinn_poisson
from natgrad.experiments._base import config_to_dict, no_progress
from natgrad.experiments._timing import TrainingClock, fixed_threads


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


def test_fixed_threads_sets_and_restores_the_torch_thread_count() -> None:
    before = torch.get_num_threads()
    target = 2 if before != 2 else 1
    with fixed_threads(target) as threads:
        assert threads == target == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match=r"^fixed_threads: threads must be an integer >= 1, got 0"):
        with fixed_threads(0):
            pass


def test_training_clock_charges_only_the_time_between_resume_and_pause() -> None:
    clock = TrainingClock()
    time.sleep(0.05)  # before the first resume: not charged
    clock.resume()
    time.sleep(0.02)
    first = clock.pause()
    time.sleep(0.05)  # paused: not charged
    assert clock.pause() == first  # pausing twice adds nothing
    clock.resume()
    time.sleep(0.02)
    total = clock.pause()
    assert 0.04 <= total < 0.09, total
    assert total - first >= 0.02


def test_pinn_results_are_deterministic_apart_from_timing() -> None:
    """Same seed, same step budgets ⇒ the same errors and losses, whatever the load (times are reported only)."""
    import dataclasses

    quick = pinn_poisson.config(True, 0)
    training = dataclasses.replace(quick.training, steps=(("ngd", 3), ("adam", 100), ("lbfgs", 3)))
    cfg = dataclasses.replace(quick, training=training)
    before = torch.get_num_threads()
    first, second = (pinn_poisson.run(cfg, no_progress) for _ in range(2))
    assert torch.get_num_threads() == before  # the run's thread count is restored
    assert first["torch_threads"] == cfg.training.threads

    def untimed(results):
        methods = {
            name: {
                k: v
                for k, v in history.items()
                if k
                not in ("time", "cpu_time", "training_time_s", "training_cpu_s", "time_to", "cpu_time_to")
            }
            for name, history in results["methods"].items()
        }
        return {**results, "methods": methods}

    assert untimed(first) == untimed(second)
    assert {name: m["steps_taken"] for name, m in first["methods"].items()} == dict(training.steps)
