"""Same seed, same results: two runs of an experiment store the same results.json apart from timing fields.

Timing fields are the keys ending in ``_seconds`` or ``_at`` (``natgrad.experiments.is_timing_key``). Every
run goes through the runner, so the stored envelope (record, device, thread policy) is compared too; figures
are not drawn (they are rebuilt from results.json and do not feed back into it).

``make test`` runs a representative subset: the experiments whose quick run costs well under a second of CPU
time, and digits-classification (the one that used to train for a wall-clock budget) with a reduced budget.
``NATGRAD_DETERMINISM_ALL=1`` runs every experiment except the PDE ones at its quick settings (about
35 s of CPU time per run on the reference machine, twice).
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from natgrad.experiments import Experiment, all_experiments, is_timing_key, without_timing
from natgrad.report import RunFolder, reproduce
from natgrad.report._atomic import read_json

CHEAP = (
    "finite-step",
    "independence-model",
    "projector-lemma",
    "pushforward",
    "reparametrisation",
    "singular-points",
    "softmax-kl",
)


def _is_pde(experiment: Experiment) -> bool:
    return "pde" in experiment.tags or experiment.name.startswith("pinn")


def _selected() -> list[str]:
    if os.environ.get("NATGRAD_DETERMINISM_ALL"):
        return [name for name, e in all_experiments().items() if not _is_pde(e)]
    return list(CHEAP)


def _reduced_digits(experiment: Experiment) -> Experiment:
    """digits-classification at 1/8 of its quick budget (16 NGD steps, 160 first-order steps)."""

    def config(quick: bool, seed: int):
        cfg = experiment.config(quick, seed)
        return dataclasses.replace(cfg, budget=cfg.budget // 8, evaluations=4)

    return dataclasses.replace(experiment, config=config)


def _stored_twice(experiment: Experiment, tmp_path) -> tuple[dict, dict]:
    experiment = dataclasses.replace(experiment, figures=lambda results, out_dir: [])  # results only
    stored = []
    for attempt in ("first", "second"):
        folder = RunFolder.create(tmp_path / attempt)
        (outcome,) = reproduce(folder, [experiment], quick=True, seed=3)
        assert outcome.status == "done", outcome.error
        stored.append(read_json(tmp_path / attempt / experiment.name / "results.json"))
    return stored[0], stored[1]


def _assert_same_apart_from_timing(first: dict, second: dict) -> None:
    assert json.dumps(without_timing(first), sort_keys=True) == json.dumps(
        without_timing(second), sort_keys=True
    )


@pytest.mark.parametrize("name", _selected())
def test_same_seed_gives_the_same_results_apart_from_timing(name, tmp_path):
    first, second = _stored_twice(all_experiments()[name], tmp_path)
    _assert_same_apart_from_timing(first, second)
    assert first["threads"]["torch"] == all_experiments()[name].threads  # the thread policy is recorded


def test_digits_compares_at_an_equal_budget_bit_for_bit(tmp_path):
    experiment = _reduced_digits(all_experiments()["digits-classification"])
    first, second = _stored_twice(experiment, tmp_path)
    _assert_same_apart_from_timing(first, second)
    methods = first["results"]["methods"]
    # equal budget: every method spent the same number of gradient evaluations, counted, not timed
    assert {m["spent"][-1] for m in methods.values()} == {first["results"]["budget"]}
    assert methods["ngd"]["steps"] * methods["ngd"]["step_cost"] == first["results"]["budget"]
    # the measured wall-clock times are there, and only under timing keys
    assert all(m["train_seconds"] > 0 for m in methods.values()) and first["run_seconds"] > 0


def test_timing_keys_are_named_by_convention():
    assert is_timing_key("train_seconds") and is_timing_key("finished_at") and is_timing_key("run_seconds")
    assert not is_timing_key("budget") and not is_timing_key("seconds_budget") and not is_timing_key("steps")
    nested = {"a_seconds": 1.0, "b": [{"c_at": "now", "d": 2}], "e": {"f": 3, "g_seconds": 4}}
    assert without_timing(nested) == {"b": [{"d": 2}], "e": {"f": 3}}
