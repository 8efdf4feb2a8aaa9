"""Run folders, atomic writes, the HTML report, environment and device records."""

from __future__ import annotations

import base64
import json
import os
import platform
import sys
from collections import Counter

import numpy as np
import pytest
import torch

import natgrad
from _fake_experiments import make_experiment, tiny_png
from natgrad.report import RunFolder, RunFolderError, read_outcomes, render_report
from natgrad.report._atomic import atomic_write_json, atomic_write_text, dumps_json, read_json
from natgrad.report.device import default_device, validate_device
from natgrad.report.environment import collect_environment
from natgrad.report.runner import reproduce


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# -- atomic writes -----------------------------------------------------------------------------------------
def test_atomic_write_failing_rename_keeps_old_file_and_leaves_no_partial(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    atomic_write_json(target, {"old": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(target, {"new": 2})
    assert read_json(target) == {"old": 1}
    assert _leftovers(tmp_path) == []


def test_atomic_write_interrupted_mid_write_leaves_no_partial(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    atomic_write_text(target, "complete old text")

    def interrupted_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new text that never lands" * 1000)
    assert target.read_text() == "complete old text"
    assert _leftovers(tmp_path) == []


def test_unserialisable_results_write_no_file(tmp_path):
    target = tmp_path / "results.json"
    with pytest.raises(TypeError, match=r"write_json: value of type object is not JSON-serialisable"):
        atomic_write_json(target, {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_json_converts_arrays_and_keeps_non_finite_values():
    text = dumps_json(
        {"a": np.arange(3.0), "t": torch.tensor([1.5]), "nan": float("nan"), "inf": float("inf")}
    )
    back = json.loads(text)
    assert back["a"] == [0.0, 1.0, 2.0] and back["t"] == [1.5]
    assert np.isnan(back["nan"]) and back["inf"] == float("inf")


# -- run folder --------------------------------------------------------------------------------------------
def test_create_refuses_non_empty_foreign_directory(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(RunFolderError, match=r"non-empty directory without a natgrad config.json"):
        RunFolder.create(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_open_refuses_directories_that_are_not_run_folders(tmp_path):
    with pytest.raises(RunFolderError, match=r"is not a natgrad run folder \(no config.json\)"):
        RunFolder.open(tmp_path)
    (tmp_path / "config.json").write_text('{"something": "else"}')
    with pytest.raises(
        RunFolderError, match=r'is not a natgrad run config \(expected "format": "natgrad-run"\)'
    ):
        RunFolder.open(tmp_path)
    with pytest.raises(RunFolderError, match=r"is not a directory"):
        RunFolder.open(tmp_path / "missing")


def test_failing_figure_builder_keeps_previous_figures(tmp_path):
    folder = RunFolder.create(tmp_path / "run")
    folder.replace_figures("exp", lambda d: (d / "a.png").write_bytes(tiny_png(1)))

    def broken(out_dir):
        (out_dir / "a.png").write_bytes(b"half")
        raise RuntimeError("plot failed")

    with pytest.raises(RuntimeError):
        folder.replace_figures("exp", broken)
    assert [p.name for p in folder.figure_paths("exp")] == ["a.png"]
    assert folder.figure_paths("exp")[0].read_bytes() == tiny_png(1)
    assert _leftovers(folder.experiment_dir("exp")) == []


def test_stored_files_match_claims_and_results(tmp_path):
    calls = Counter()
    passing = make_experiment("pass-exp", calls, value=1.0, threshold=2.0)
    failing = make_experiment("fail-exp", calls, value=3.0, threshold=2.0, statement="too big")
    folder = RunFolder.create(tmp_path / "run")
    reproduce(folder, [passing, failing], quick=True, seed=7)

    stored = folder.read_results_file("pass-exp")
    assert stored["record"] == {
        "quick": True,
        "seed": 7,
        "config": {"quick": True, "seed": 7, "steps": 3, "sizes": [1, 2]},
    }
    assert stored["results"] == {"value": 1.0, "trace": [0.0, 1.0, 2.0], "seed": 7, "sizes": [1, 2]}
    assert folder.records()["fail-exp"] == stored["record"]
    assert read_json(folder.experiment_dir("fail-exp") / "claims.json") == [
        {
            "id": "value-bound",
            "statement": "too big",
            "value": 3.0,
            "relation": "<",
            "threshold": 2.0,
            "holds": False,
        }
    ]
    assert (folder.experiment_dir("pass-exp") / "trace.png").read_bytes() == tiny_png(1)


# -- HTML report -------------------------------------------------------------------------------------------
def test_report_has_claim_table_embedded_figures_and_escapes_text(tmp_path):
    calls = Counter()
    nasty = make_experiment(
        "nasty",
        calls,
        value=3.0,
        statement="<script>alert('x')</script> & more",
        title="Title with <b>tags</b>",
    )
    fine = make_experiment("fine", calls)
    folder = RunFolder.create(tmp_path / "run")
    folder.write_environment({"python": "3.x <evil>"})
    reproduce(folder, [nasty, fine], quick=True, seed=0)
    html = render_report(read_outcomes(folder), folder.read_environment(), "run")

    assert "<script>" not in html and "<b>tags</b>" not in html and "<evil>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in html
    assert "Title with &lt;b&gt;tags&lt;/b&gt;" in html
    for name, shade in (("nasty", 3), ("fine", 1)):
        data = base64.b64encode(tiny_png(shade)).decode()
        assert f'src="data:image/png;base64,{data}"' in html
        assert f'<a href="#{name}">{name}</a></td><td>value-bound</td>' in html
    assert html.count('<td class="fail">FAIL</td>') == 2  # summary table + the experiment's own table
    assert html.count('<td class="pass">PASS</td>') == 2
    assert "http://" not in html and "https://" not in html and "<link" not in html


# -- environment and device --------------------------------------------------------------------------------
def test_environment_record_matches_this_interpreter():
    env = collect_environment("cpu")
    assert env["python"] == platform.python_version() == sys.version.split()[0]
    assert env["torch"] == torch.__version__ and env["numpy"] == np.__version__
    assert env["natgrad"] == getattr(natgrad, "__version__", "unknown")
    assert env["cpu_count"] == os.cpu_count() and env["device"] == "cpu"
    assert env["default_dtype"] == str(torch.get_default_dtype()).removeprefix("torch.")
    json.dumps(env)  # serialisable


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:-1", "", "cpu0"])
def test_validate_device_rejects_malformed(bad):
    with pytest.raises(ValueError, match=r"--device: expected one of cpu, cuda, cuda:N, got"):
        validate_device(bad)


def test_validate_device_accepts_cpu_and_checks_cuda_availability():
    assert validate_device(" CPU ") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"'cuda:0' requested but CUDA is not available here"):
            validate_device("cuda:0")
    else:
        with pytest.raises(ValueError, match=r"'cuda:99' requested but only \d+ CUDA device"):
            validate_device("cuda:99")


def test_default_device_is_restored():
    before = torch.get_default_device()
    with default_device("cpu"):
        assert torch.empty(1).device.type == "cpu"
    assert torch.get_default_device() == before
