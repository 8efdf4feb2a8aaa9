"""The fault suite: kills at random points, two processes on one folder, and bad input on the command line.

Kills and concurrent runs use real processes (``tests/_fault_driver.py``: the natgrad command with three slow
fake experiments); the kill points come from a fixed seed, so every run of the suite tries the same ones.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

import natgrad.experiments as experiments_api
from _fake_experiments import make_experiment
from _fault_driver import fake_experiments
from natgrad.cli import MAX_SEED, app
from natgrad.report._atomic import read_json

DRIVER = Path(__file__).resolve().parent / "_fault_driver.py"
runner = CliRunner()
LEFTOVER_MARKS = (".tmp", ".figures-", ".natgrad-lock")
STEP_SECONDS = 0.04  # per fake step and figure: a whole reproduction takes about 0.6 s after start-up


def _start(out: Path, *extra: str, step_seconds: float = STEP_SECONDS) -> subprocess.Popen:
    env = {**os.environ, "FAKE_STEP_SECONDS": str(step_seconds), "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, str(DRIVER), "reproduce", "--quick", "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _wait_until_running(process: subprocess.Popen) -> list[str]:
    """Read output until the command holds the folder (its first line); returns the lines read."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("run folder:"):
            return lines
    return lines  # exited before (e.g. refused)


def _finish(process: subprocess.Popen, lines: list[str] | None = None) -> tuple[int, str]:
    rest, _ = process.communicate(timeout=120)
    return process.returncode, "".join(lines or []) + rest


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if any(mark in p.name for mark in LEFTOVER_MARKS)]


def _finished_at(folder: Path) -> dict[str, str]:
    return {p.parent.name: read_json(p)["finished_at"] for p in folder.glob("*/results.json")}


def _reference_claims(tmp_path: Path, monkeypatch) -> dict:
    """claims.json of an uninterrupted run of the driver's experiments (in this process: no start-up cost)."""
    registry = fake_experiments(step_seconds=0.0)
    monkeypatch.setattr(experiments_api, "all_experiments", lambda: registry)
    out = tmp_path / "reference"
    result = runner.invoke(app, ["reproduce", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return read_json(out / "claims.json")


def test_random_kills_then_resume_give_the_same_claims_and_no_leftovers(tmp_path, monkeypatch):
    reference = _reference_claims(tmp_path, monkeypatch)
    assert reference["all_hold"] and len(reference["claims"]) == 3
    out = tmp_path / "run"
    kill_points = random.Random(17)
    finished_before: dict[str, str] = {}
    for sig in (signal.SIGKILL, signal.SIGINT, signal.SIGKILL, signal.SIGTERM):
        process = _start(out)
        lines = _wait_until_running(process)
        time.sleep(kill_points.uniform(0.0, 0.7))
        try:
            process.send_signal(sig)
        except ProcessLookupError:
            pass
        code, output = _finish(process, lines)
        # work finished before this kill was not redone by this process
        now = _finished_at(out)
        assert {name: now[name] for name in finished_before} == finished_before, output
        finished_before = now
        if sig == signal.SIGKILL:
            continue
        # a signal that lands after the final summary was written ends the process by the signal itself
        assert code in (0, 130, -sig), output
        summary = read_json(out / "claims.json")
        statuses = summary["experiments"]
        unfinished = summary["missing"] + summary["incomplete"]
        assert set(statuses) == {"alpha", "beta", "gamma"}
        assert unfinished == [
            name for name, status in statuses.items() if status in ("missing", "incomplete")
        ]
        assert summary["all_hold"] == (not unfinished), summary
        if code == 130:
            assert unfinished and not summary["all_hold"], summary
        assert "All 0 claims hold" not in (out / "report.html").read_text(encoding="utf-8")
        for word in output.split():  # every file the messages name exists
            if word.startswith(str(tmp_path)):
                assert Path(word.rstrip(").,")).exists(), (word, output)
    code, output = _finish(_start(out))
    assert code == 0, output
    summary = read_json(out / "claims.json")
    assert summary["claims"] == reference["claims"] and summary["all_hold"]
    assert summary["missing"] == summary["incomplete"] == summary["errors"] == []
    assert _leftovers(out) == []


def test_second_process_on_a_folder_in_use_exits_two_naming_the_first(tmp_path):
    out = tmp_path / "run"
    # holds the folder for about 2 min (it is interrupted once the second has run): under load the second
    # process can take more than 10 s just to start
    first = _start(out, "--seed", "1", step_seconds=10.0)
    lines = _wait_until_running(first)
    code, output = _finish(_start(out, "--seed", "2"))
    assert code == 2, output
    assert f"is in use by another natgrad process (PID {first.pid}" in " ".join(output.split())
    first.send_signal(signal.SIGINT)
    first_code, first_output = _finish(first, lines)
    assert first_code == 130, first_output
    # nothing of the second run landed: every record and result has the first one's seed
    assert {r["seed"] for r in read_json(out / "config.json")["experiments"].values()} == {1}
    assert {read_json(p)["record"]["seed"] for p in out.glob("*/results.json")} <= {1}
    assert _leftovers(out) == []


def test_two_processes_started_together_on_a_fresh_folder_never_mix(tmp_path):
    out = tmp_path / "fresh"
    processes = [_start(out, "--seed", str(seed), step_seconds=0.1) for seed in (1, 2)]
    results = [_finish(p) for p in processes]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(output for code, output in results if code == 2)
    assert "non-empty directory" not in loser
    assert "is in use by another natgrad process (PID" in loser or "computed with other settings" in loser
    seeds = {r["seed"] for r in read_json(out / "config.json")["experiments"].values()}
    assert len(seeds) == 1 and {read_json(p)["record"]["seed"] for p in out.glob("*/results.json")} == seeds


# -- bad input on the command line: clear message, exit 2, nothing changed ---------------------------------


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A tmp folder holding a finished run folder ``run`` and a regular file ``file.txt``."""
    calls: Counter = Counter()
    experiment = make_experiment("a", calls)
    monkeypatch.setattr(experiments_api, "all_experiments", lambda: {"a": experiment})
    assert runner.invoke(app, ["reproduce", "--quick", "--out", str(tmp_path / "run")]).exit_code == 0
    (tmp_path / "file.txt").write_text("keep me")
    return tmp_path


def _corrupt_environment(root: Path) -> list[str]:
    (root / "run" / "environment.json").write_text("{ not json")
    return ["report", str(root / "run")]


def _environment_not_an_object(root: Path) -> list[str]:
    (root / "run" / "environment.json").write_text("[1, 2]")
    return ["report", str(root / "run")]


def _corrupt_config(root: Path) -> list[str]:
    (root / "run" / "config.json").write_text('{"format": "something else"}')
    return ["report", str(root / "run")]


BAD_INPUT = [
    (
        lambda root: ["reproduce", "--out", str(root / "file.txt" / "run")],
        "file.txt is a file, not a directory",
    ),
    (lambda root: ["reproduce", "--out", str(root / "file.txt")], "file.txt exists and is not a directory"),
    (
        lambda root: ["reproduce", "--out", str(root / "new"), "--seed", str(2**64)],
        f"Invalid value for '--seed': Input should be less than or equal to {MAX_SEED}",
    ),
    (
        lambda root: ["reproduce", "--out", str(root / "new"), "--seed", str(MAX_SEED + 1)],
        f"Invalid value for '--seed': Input should be less than or equal to {MAX_SEED}",
    ),
    (
        lambda root: ["reproduce", "--out", str(root / "new"), "--seed", "-1"],
        "Invalid value for '--seed': Input should be greater than or equal to 0",
    ),
    (lambda root: ["reproduce", "--out", str(root / "new"), "--device", "gpu"], "--device: expected one of"),
    (lambda root: ["report", str(root / "file.txt")], "file.txt is not a directory"),
    (lambda root: ["report", str(root)], "is not a natgrad run folder (no config.json)"),
    (_corrupt_environment, "environment.json (Expecting property name"),
    (_environment_not_an_object, "is not an environment record (expected a JSON object, got list)"),
    (_corrupt_config, 'is not a natgrad run config (expected "format": "natgrad-run")'),
]


BAD_INPUT_IDS = [
    "out-below-a-file",
    "out-is-a-file",
    "seed-2**64",
    "seed-2**32",
    "seed-negative",
    "device-unknown",
    "report-on-a-file",
    "report-on-a-foreign-folder",
    "report-corrupt-environment",
    "report-environment-not-an-object",
    "report-corrupt-config",
]


@pytest.mark.parametrize(("make_args", "message"), BAD_INPUT, ids=BAD_INPUT_IDS)
def test_bad_input_exits_two_with_a_clear_message_and_changes_nothing(workspace, make_args, message):
    args = make_args(workspace)
    before = _snapshot(workspace)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert _snapshot(workspace) == before
    assert not (workspace / "new").exists()


def test_the_largest_seed_is_accepted(workspace):
    result = runner.invoke(app, ["reproduce", "--out", str(workspace / "big"), "--seed", str(MAX_SEED)])
    assert result.exit_code == 0, result.output
    assert read_json(workspace / "big" / "a" / "results.json")["record"]["seed"] == MAX_SEED


def test_base_install_without_the_cli_extra_names_the_extra_to_install():
    blocked = "import sys; sys.modules['typer'] = None; sys.argv = ['natgrad', '--help']"
    done = subprocess.run(
        [sys.executable, "-c", f"{blocked}; from natgrad.__main__ import main; main()"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'natgrad[experiments]'" in done.stderr and "missing module: typer" in done.stderr
    assert "Traceback" not in done.stderr


# -- what a killed writer leaves behind, and interrupts between results and claims --------------------------
def _leave_leftovers(folder: Path, in_experiment: bool) -> list[Path]:
    """What a writer killed at various points leaves (before config.json: only top-level temporaries)."""
    left = [folder / ".config.json.0123456789ab.tmp", folder / ".natgrad-lock.json.0a1b2c3d4e5f.tmp"]
    if in_experiment:
        staging = folder / "a" / ".figures-k1ll3d"
        staging.mkdir(parents=True)
        (staging / "half.png").write_bytes(b"\x89PNG")
        left += [staging, folder / "a" / ".results.json.ba9876543210.tmp"]
    for temp in left:
        if not temp.exists():
            temp.write_text("{ half")
    (folder / ".natgrad-lock.json").write_text('{"pid": 999999999}')  # its holder died
    return left


def test_the_next_writer_removes_what_a_killed_one_left(tmp_path, monkeypatch):
    calls: Counter = Counter()
    monkeypatch.setattr(experiments_api, "all_experiments", lambda: {"a": make_experiment("a", calls)})
    fresh = tmp_path / "fresh"  # killed before it wrote config.json: not mistaken for a foreign folder
    fresh.mkdir()
    left = _leave_leftovers(fresh, in_experiment=False)
    result = runner.invoke(app, ["reproduce", "--out", str(fresh)])
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in left) and _leftovers(fresh) == []
    left = _leave_leftovers(fresh, in_experiment=True)  # and in a folder with results
    assert runner.invoke(app, ["report", str(fresh)]).exit_code == 0
    assert not any(p.exists() for p in left) and _leftovers(fresh) == []
    assert calls == Counter({"a": 1})


def test_interrupt_while_figures_are_built_leaves_the_experiment_incomplete_until_resumed(
    tmp_path, monkeypatch
):
    calls: Counter = Counter()
    plain = make_experiment("a", calls)
    interrupted = Counter()

    def figures(results, out_dir):
        interrupted["figures"] += 1
        if interrupted["figures"] == 1:
            (out_dir / "first.png").write_bytes(b"\x89PNG")
            raise KeyboardInterrupt
        return plain.figures(results, out_dir)

    experiment = dataclasses.replace(plain, figures=figures)
    monkeypatch.setattr(
        experiments_api, "all_experiments", lambda: {"a": experiment, "b": make_experiment("b", calls)}
    )
    out = tmp_path / "run"
    result = runner.invoke(app, ["reproduce", "--out", str(out)])
    assert result.exit_code == 130, result.output
    summary = read_json(out / "claims.json")
    assert summary["experiments"] == {"a": "incomplete", "b": "missing"} and not summary["all_hold"]
    assert summary["claims"] == [] and not (out / "a" / "claims.json").exists()
    assert (
        "INCOMPLETE a:" in result.output
        and "MISSING b:" in result.output
        and "error.txt" not in result.output
    )
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Incomplete: results are stored" in html and "All 0 claims hold" not in html
    assert _leftovers(out) == []
    result = runner.invoke(app, ["reproduce", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert calls == Counter({"a": 1, "b": 1})  # a's results were reused, only its figures rebuilt
    assert read_json(out / "claims.json")["all_hold"]


def test_an_experiment_without_claims_is_an_error_not_a_pass(tmp_path, monkeypatch):
    calls: Counter = Counter()
    experiment = dataclasses.replace(make_experiment("a", calls), claims=lambda results: [])
    monkeypatch.setattr(experiments_api, "all_experiments", lambda: {"a": experiment})
    result = runner.invoke(app, ["reproduce", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "expected at least one Claim, got an empty list" in result.output
    assert read_json(tmp_path / "run" / "claims.json")["all_hold"] is False
