"""Experiment discovery: public modules collected, private skipped, clear errors for broken packages."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import pytest

from natgrad.experiments import Experiment, _registry
from natgrad.experiments._registry import ExperimentImportError, discover

_counter = itertools.count()

_MODULE = """
from natgrad.experiments._base import Experiment

EXPERIMENT = Experiment(
    name={name!r}, title={title!r}, config=lambda q, s: {{}}, run=lambda c, p: {{}},
    claims=lambda r: [], figures=lambda r, d: [], paper="P",
)
"""


def _package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, modules: dict[str, str]) -> str:
    """Write a throwaway package with the given modules and make it importable; returns its name."""
    name = f"fake_experiments_{next(_counter)}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_discover_collects_public_modules_sorted_and_skips_private(tmp_path, monkeypatch):
    package = _package(
        tmp_path,
        monkeypatch,
        {
            "zeta": _MODULE.format(name="zeta-exp", title="Z"),
            "alpha": _MODULE.format(name="alpha-exp", title="A"),
            "_helpers": "raise RuntimeError('private modules must not be imported')",
        },
    )
    found = discover(package)
    assert list(found) == ["alpha-exp", "zeta-exp"]
    assert all(isinstance(e, Experiment) for e in found.values())
    assert found["zeta-exp"].title == "Z"


def test_discover_names_the_module_that_fails_to_import(tmp_path, monkeypatch):
    package = _package(tmp_path, monkeypatch, {"broken": "import not_a_real_module_xyz"})
    with pytest.raises(
        ExperimentImportError, match=rf"'{package}\.broken' failed to import: ModuleNotFoundError"
    ):
        discover(package)


def test_discover_rejects_duplicate_names_naming_both_modules(tmp_path, monkeypatch):
    source = _MODULE.format(name="same", title="T")
    package = _package(tmp_path, monkeypatch, {"one": source, "two": source})
    with pytest.raises(ValueError, match=rf"'same' is defined by both '{package}\.one' and '{package}\.two'"):
        discover(package)


def test_discover_rejects_module_without_experiment(tmp_path, monkeypatch):
    package = _package(tmp_path, monkeypatch, {"helper": "X = 1"})
    with pytest.raises(TypeError, match=r"must define EXPERIMENT = Experiment\(\.\.\.\), got NoneType"):
        discover(package)


def test_discover_rejects_names_unusable_on_the_command_line(tmp_path, monkeypatch):
    package = _package(tmp_path, monkeypatch, {"bad": _MODULE.format(name="Bad Name", title="T")})
    with pytest.raises(ValueError, match=r"'Bad Name' .* must be lowercase letters, digits and dashes"):
        discover(package)


def test_get_unknown_name_lists_valid_names(monkeypatch, tmp_path):
    package = _package(
        tmp_path,
        monkeypatch,
        {"a": _MODULE.format(name="first", title="1"), "b": _MODULE.format(name="second", title="2")},
    )
    monkeypatch.setattr(_registry, "PACKAGE", package)
    assert _registry.get("second").title == "2"
    with pytest.raises(ValueError, match=r"get: unknown experiment 'third'; valid names: first, second"):
        _registry.get("third")


def test_real_registry_is_consistent():
    """Whatever experiments the package holds import cleanly, and keys are their names."""
    experiments = _registry.all_experiments()
    assert all(name == experiment.name for name, experiment in experiments.items())
