"""The natgrad command: exit codes, messages, files written, resume and report rebuild."""

from __future__ import annotations

import io
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import natgrad.experiments as experiments_api
from _fake_experiments import make_experiment
from natgrad.cli import app
from natgrad.experiments import _registry
from natgrad.report._atomic import read_json
from natgrad.report.progress import LineProgress, RichProgress

runner = CliRunner()


@pytest.fixture
def calls():
    return Counter()


@pytest.fixture
def register(monkeypatch):
    """Replace the registry by the given fake experiments."""

    def _register(*experiments):
        monkeypatch.setattr(experiments_api, "all_experiments", lambda: {e.name: e for e in experiments})

    return _register


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_list_shows_names_titles_and_papers(register, calls):
    register(make_experiment("alpha", calls, title="Alpha title"), make_experiment("beta", calls))
    result = invoke("list")
    assert result.exit_code == 0
    assert "alpha" in result.output and "Alpha title" in result.output and "Test paper" in result.output
    assert "Fake experiment beta" in result.output


def test_no_registered_experiments_is_a_clear_no_op(register, tmp_path, monkeypatch):
    register()
    monkeypatch.chdir(tmp_path)
    result = invoke("reproduce", "--quick")
    assert result.exit_code == 0
    assert "No experiments are registered yet; nothing to reproduce." in result.output
    assert list(tmp_path.iterdir()) == []
    assert invoke("list").output.strip() == "No experiments are registered yet."


def test_all_claims_hold_exit_zero_and_folder_complete(register, calls, tmp_path):
    register(make_experiment("a", calls), make_experiment("b", calls))
    out = tmp_path / "run"
    result = invoke("reproduce", "--quick", "--out", out, "--seed", 3, "--device", "cpu")
    assert result.exit_code == 0, result.output
    for rel in (
        "config.json",
        "environment.json",
        "claims.json",
        "report.html",
        "a/results.json",
        "b/trace.png",
    ):
        assert (out / rel).is_file(), rel
    summary = read_json(out / "claims.json")
    assert (summary["all_hold"], summary["passed"], summary["failed"]) == (True, 2, 0)
    assert [(c["experiment"], c["id"], c["holds"]) for c in summary["claims"]] == [
        ("a", "value-bound", True),
        ("b", "value-bound", True),
    ]
    assert read_json(out / "config.json")["experiments"]["a"]["seed"] == 3
    assert read_json(out / "environment.json")["device"] == "cpu"
    assert calls == Counter({"a": 1, "b": 1})


def test_failing_claim_exits_one_and_prints_it(register, calls, tmp_path):
    register(make_experiment("good", calls), make_experiment("bad", calls, value=5.0, statement="small"))
    result = invoke("reproduce", "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert "FAIL bad/value-bound: small (value 5.0, required < 2.0)" in result.output
    assert "FAIL good" not in result.output
    assert read_json(tmp_path / "run" / "claims.json")["failed"] == 1


def test_selected_names_only_run_those(register, calls, tmp_path):
    register(make_experiment("a", calls), make_experiment("b", calls))
    result = invoke("reproduce", "b", "b", "--quick", "--out", tmp_path / "run")
    assert result.exit_code == 0
    assert calls == Counter({"b": 1})


def test_unknown_experiment_exits_two_and_lists_valid_names(register, calls, tmp_path):
    register(make_experiment("alpha", calls), make_experiment("beta", calls))
    result = invoke("reproduce", "alpha", "gamma", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "unknown experiment(s) 'gamma'; valid names: alpha, beta" in result.output
    assert not (tmp_path / "run").exists() and not calls


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "gpu"], "--device: expected one of cpu, cuda, cuda:N, got 'gpu'"),
        (["--seed", "-1"], "greater than or equal to 0"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_options_exit_two(register, calls, tmp_path, args, message):
    register(make_experiment("a", calls))
    result = invoke("reproduce", "--out", tmp_path / "run", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert not calls


def test_out_pointing_at_foreign_directory_exits_two(register, calls, tmp_path):
    register(make_experiment("a", calls))
    (tmp_path / "notes.txt").write_text("keep me")
    result = invoke("reproduce", "--out", tmp_path)
    assert result.exit_code == 2 and "non-empty directory without a natgrad config.json" in result.output


def test_raising_experiment_is_recorded_others_run_exit_one(register, calls, tmp_path):
    register(make_experiment("boom", calls, fail_run=True), make_experiment("fine", calls))
    out = tmp_path / "run"
    result = invoke("reproduce", "--out", out)
    assert result.exit_code == 1
    assert "ERROR boom: RuntimeError: boom exploded on purpose" in result.output
    assert "RuntimeError: boom exploded on purpose" in (out / "boom" / "error.txt").read_text()
    assert calls == Counter({"boom": 1, "fine": 1})
    assert read_json(out / "claims.json")["errors"] == ["boom"]


def test_interrupt_then_resume(register, calls, tmp_path):
    register(make_experiment("a", calls), make_experiment("b", calls, interrupt_first=True))
    out = tmp_path / "run"
    result = invoke("reproduce", "--out", out)
    assert result.exit_code == 130
    assert f"Resume: rerun the same command with --out {out}" in result.output
    assert (out / "report.html").is_file()
    result = invoke("reproduce", "--out", out)
    assert result.exit_code == 0, result.output
    assert "(stored results)" in result.output
    assert calls == Counter({"a": 1, "b": 2})


def test_changed_settings_exit_two_then_force(register, calls, tmp_path):
    register(make_experiment("a", calls))
    out = tmp_path / "run"
    assert invoke("reproduce", "--quick", "--out", out).exit_code == 0
    result = invoke("reproduce", "--out", out)
    assert result.exit_code == 2
    assert "a: quick: True -> False" in result.output and "--force" in result.output
    assert invoke("reproduce", "--out", out, "--force").exit_code == 0
    assert calls == Counter({"a": 2})


def test_report_rebuilds_without_recomputing(register, calls, tmp_path):
    register(make_experiment("a", calls))
    out = tmp_path / "run"
    assert invoke("reproduce", "--quick", "--out", out).exit_code == 0
    for rel in ("report.html", "claims.json", "a/claims.json", "a/trace.png"):
        (out / rel).unlink()
    result = invoke("report", out)
    assert result.exit_code == 0, result.output
    assert calls == Counter({"a": 1})
    for rel in ("report.html", "claims.json", "a/claims.json", "a/trace.png"):
        assert (out / rel).is_file(), rel
    assert read_json(out / "a" / "claims.json")[0]["holds"] is True


def test_report_on_non_run_folder_exits_two(register, tmp_path):
    register()
    result = invoke("report", tmp_path)
    assert result.exit_code == 2
    assert "is not a natgrad run folder (no config.json)" in result.output


def test_progress_in_logs_prints_few_lines_for_long_nested_loops():
    buffer = io.StringIO()
    progress = LineProgress(Console(file=buffer, force_terminal=False, width=120))
    total = sum(
        i + j for i in progress(range(200), description="outer") for j in progress(range(50), "inner")
    )
    assert total == sum(i + j for i in range(200) for j in range(50))
    assert buffer.getvalue().splitlines() == [
        "    outer: 200 steps",
        buffer.getvalue().splitlines()[1],
    ]
    assert buffer.getvalue().splitlines()[1].startswith("    outer: done 200/200 in ")


def test_rich_progress_on_a_terminal_consumes_everything_and_clears_its_bars():
    buffer = io.StringIO()
    with RichProgress(Console(file=buffer, force_terminal=True, width=100)) as progress:
        items = [
            (i, j) for i in progress(range(5), "outer") for j in progress(iter(range(3)), "inner", total=3)
        ]
        assert progress._bars.tasks == []
    assert items == [(i, j) for i in range(5) for j in range(3)]


def test_python_dash_m_natgrad_runs_the_cli():
    src = Path(__file__).resolve().parents[1] / "src"
    done = subprocess.run(
        [sys.executable, "-m", "natgrad", "--help"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "PATH": "", "COLUMNS": "120"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "reproduce" in done.stdout and "report" in done.stdout and "list" in done.stdout


def test_broken_experiment_module_exits_one_naming_it(monkeypatch):
    def broken():
        raise _registry.ExperimentImportError(
            "discover: experiment module 'natgrad.experiments.oops' failed to import: SyntaxError: x"
        )

    monkeypatch.setattr(experiments_api, "all_experiments", broken)
    result = invoke("list")
    assert result.exit_code == 1
    assert (
        "cannot load the experiments: discover: experiment module 'natgrad.experiments.oops'" in result.output
    )


def test_hand_corrupted_results_exit_two_with_advice(register, calls, tmp_path):
    register(make_experiment("a", calls))
    out = tmp_path / "run"
    assert invoke("reproduce", "--out", out).exit_code == 0
    (out / "a" / "results.json").write_text("{not json")
    result = invoke("reproduce", "--out", out)
    assert (
        result.exit_code == 2
        and "is not valid JSON" in result.output
        and "delete it to recompute a" in result.output
    )
    assert invoke("report", out).exit_code == 2
