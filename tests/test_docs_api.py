"""Every public name of natgrad has a docstring, so the API reference generated from them is complete.

Public names come from each public module's ``__all__`` (docs/_scripts/public_api.py, which also generates
the reference pages); public methods and properties of public classes count too.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "docs" / "_scripts"


@pytest.fixture(scope="module")
def public_api():
    spec = importlib.util.spec_from_file_location("natgrad_docs_public_api", SCRIPTS / "public_api.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


def test_public_modules_are_found(public_api):
    modules = public_api.public_modules()
    for expected in ("natgrad", "natgrad.metrics", "natgrad.linalg", "natgrad.diagnostics", "natgrad.optim"):
        assert expected in modules
    assert not any(name.split(".")[-1] in public_api.COMMAND_LINE for name in modules)


def test_every_public_symbol_has_a_docstring(public_api):
    missing = public_api.undocumented()
    assert not missing, "public names without a docstring (add one where it is defined):\n  " + "\n  ".join(
        missing
    )


def test_undocumented_names_are_detected(public_api):
    """The check itself sees a missing docstring on a function, a class method and a constant."""

    class Probe:
        """Documented class."""

        def documented(self):
            """Documented."""

        def bare(self):
            pass

    Probe.__module__ = "natgrad.probe"
    assert list(public_api.public_methods(Probe)) == ["documented", "bare"]
    symbol = public_api.Symbol("natgrad", "Probe", Probe)
    assert public_api.docstring(symbol) == "Documented class."

    def bare_function():
        pass

    assert not public_api.docstring(public_api.Symbol("natgrad", "bare_function", bare_function))
    assert public_api.constant_docstring("natgrad.linalg", "no_such_constant") is None
