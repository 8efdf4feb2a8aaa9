"""Running, resuming and rebuilding: counted calls show what was (not) recomputed."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from _fake_experiments import make_experiment
from natgrad.experiments._base import Claim
from natgrad.report import ConfigConflictError, RunFolder, read_outcomes, rebuild, reproduce
from natgrad.report._atomic import read_json


def test_interrupted_run_resumes_without_redoing_finished_experiments(tmp_path):
    calls = Counter()
    experiments = [
        make_experiment("a", calls),
        make_experiment("b", calls, interrupt_first=True),
        make_experiment("c", calls),
    ]
    folder = RunFolder.create(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        reproduce(folder, experiments, quick=True, seed=1)
    assert calls == Counter({"a": 1, "b": 1})
    assert folder.read_results_file("a") is not None
    assert folder.read_results_file("b") is None and folder.read_results_file("c") is None
    # every requested experiment is listed, those never reached included
    assert [o.status for o in read_outcomes(folder)] == ["done", "missing", "missing"]

    outcomes = reproduce(RunFolder.create(tmp_path / "run"), experiments, quick=True, seed=1)
    assert calls == Counter({"a": 1, "b": 2, "c": 1})
    assert [o.ok for o in outcomes] == [True, True, True]

    reproduce(RunFolder.create(tmp_path / "run"), experiments, quick=True, seed=1)
    assert calls == Counter({"a": 1, "b": 2, "c": 1})


def test_changed_settings_are_refused_before_anything_runs_unless_forced(tmp_path):
    calls = Counter()
    experiments = [make_experiment("a", calls), make_experiment("b", calls)]
    folder = RunFolder.create(tmp_path / "run")
    reproduce(folder, experiments[:1], quick=True, seed=1)
    with pytest.raises(
        ConfigConflictError, match=r"(?s)a: quick: True -> False; seed: 1 -> 2; steps: 3 -> 5.*--force"
    ):
        reproduce(folder, experiments, quick=False, seed=2)
    assert calls == Counter({"a": 1})
    assert folder.read_results_file("a")["record"]["quick"] is True

    reproduce(folder, experiments, quick=False, seed=2, force=True)
    assert calls == Counter({"a": 2, "b": 1})
    assert folder.read_results_file("a")["record"]["seed"] == 2


def test_failing_experiment_is_recorded_and_others_continue(tmp_path):
    calls = Counter()
    experiments = [make_experiment("boom", calls, fail_run=True), make_experiment("after", calls)]
    folder = RunFolder.create(tmp_path / "run")
    outcomes = reproduce(folder, experiments, quick=True, seed=0)
    assert [o.status for o in outcomes] == ["error", "done"]
    error = folder.read_error("boom")
    assert "Traceback" in error and "RuntimeError: boom exploded on purpose" in error
    assert outcomes[0].error_summary == "RuntimeError: boom exploded on purpose"
    assert folder.read_results_file("boom") is None

    # a failed experiment has no results, so a rerun retries it (and still fails), the other is reused
    reproduce(folder, experiments, quick=True, seed=0)
    assert calls == Counter({"boom": 2, "after": 1})


def test_rebuild_recomputes_claims_and_figures_from_stored_results_only(tmp_path):
    calls = Counter()
    experiment = make_experiment("a", calls, value=1.0, threshold=2.0)
    folder = RunFolder.create(tmp_path / "run")
    reproduce(folder, [experiment], quick=True, seed=0)
    (folder.experiment_dir("a") / "trace.png").unlink()

    seen = []

    def stricter(results):
        seen.append(results)
        return [Claim("value-bound", "tighter", results["value"], "<", 0.5)]

    outcomes = rebuild(folder, {"a": dataclasses.replace(experiment, claims=stricter)})
    assert calls == Counter({"a": 1})  # run not called again
    assert seen == [read_json(folder.experiment_dir("a") / "results.json")["results"]]
    assert outcomes[0].failed_claims == [
        {
            "id": "value-bound",
            "statement": "tighter",
            "value": 1.0,
            "relation": "<",
            "threshold": 0.5,
            "holds": False,
        }
    ]
    assert read_json(folder.experiment_dir("a") / "claims.json") == outcomes[0].claims
    assert [p.name for p in folder.figure_paths("a")] == ["trace.png"]


def test_broken_claims_are_an_error_and_leave_no_stale_claims(tmp_path):
    calls = Counter()
    experiment = make_experiment("a", calls)
    folder = RunFolder.create(tmp_path / "run")
    reproduce(folder, [experiment], quick=True, seed=0)

    def broken(results):
        return [Claim("x", "s", 1.0, "<", 2.0), Claim("x", "s", 1.0, "<", 2.0)]

    [outcome] = rebuild(folder, {"a": dataclasses.replace(experiment, claims=broken)})
    assert outcome.status == "error" and outcome.claims == []
    assert "claim ids must be unique, repeated: ['x']" in outcome.error
    [outcome] = rebuild(folder, {"a": experiment})  # fixed code clears the error
    assert outcome.ok and folder.read_error("a") is None


def test_rebuild_of_unregistered_experiment_keeps_stored_claims_and_flags_it(tmp_path):
    calls = Counter()
    folder = RunFolder.create(tmp_path / "run")
    reproduce(folder, [make_experiment("gone", calls)], quick=True, seed=0)
    [outcome] = rebuild(folder, {})
    assert outcome.status == "error" and "not registered" in outcome.error
    assert [c["id"] for c in outcome.claims] == ["value-bound"]


def test_broken_config_is_that_experiments_error_only(tmp_path):
    calls = Counter()

    def bad_config(quick, seed):
        raise ValueError("config: steps must be positive")

    broken = dataclasses.replace(make_experiment("broken", calls), config=bad_config)
    folder = RunFolder.create(tmp_path / "run")
    outcomes = reproduce(folder, [broken, make_experiment("fine", calls)], quick=True, seed=0)
    assert [o.status for o in outcomes] == ["error", "done"]
    assert outcomes[0].error_summary == "ValueError: config: steps must be positive"
    assert outcomes[0].error.startswith("config failed:")
    assert calls == Counter({"fine": 1})


def test_results_from_before_a_new_config_field_at_its_default_are_reused(tmp_path):
    """A stored record without a field the config gained since, requested at its default, is the same record."""
    calls = Counter()
    experiment = make_experiment("a", calls)
    folder = RunFolder.create(tmp_path / "run")
    reproduce(folder, [experiment], quick=True, seed=1)
    path = folder.experiment_dir("a") / "results.json"
    envelope = read_json(path)
    del envelope["record"]["config"]["sizes"]  # as if computed before FakeConfig had `sizes` (default (1, 2))
    folder.write_results("a", envelope)
    reproduce(folder, [experiment], quick=True, seed=1)
    assert calls == Counter({"a": 1})

    del envelope["record"]["config"]["steps"]  # a field without a default: the results may depend on it
    folder.write_results("a", envelope)
    with pytest.raises(ConfigConflictError, match=r"steps: None -> 3"):
        reproduce(folder, [experiment], quick=True, seed=1)
    assert calls == Counter({"a": 1})


def test_only_new_nested_fields_at_their_defaults_are_filled_in():
    from natgrad.report.runner import _upgraded

    @dataclasses.dataclass(frozen=True)
    class Inner:
        a: int
        added: bool = False

    @dataclasses.dataclass(frozen=True)
    class Outer:
        inner: Inner
        also_added: tuple[int, ...] = (1, 2)

    old = {"quick": True, "seed": 0, "config": {"inner": {"a": 1}}}

    def record(config):
        return {"quick": True, "seed": 0, "config": json_round_trip(dataclasses.asdict(config))}

    same = Outer(Inner(1))
    assert _upgraded(old, record(same), same) == record(same)
    for changed in (Outer(Inner(1, added=True)), Outer(Inner(1), also_added=(3,)), Outer(Inner(2))):
        assert _upgraded(old, record(changed), changed) != record(changed)


def json_round_trip(value):
    import json

    return json.loads(json.dumps(value))
