"""Discovery of experiments: every public module of ``natgrad.experiments`` defines one ``EXPERIMENT``."""

from __future__ import annotations

import importlib
import pkgutil
import re

from natgrad.experiments._base import Experiment

PACKAGE = "natgrad.experiments"
_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class ExperimentImportError(ImportError):
    """An experiment module could not be imported."""


def discover(package: str = PACKAGE) -> dict[str, Experiment]:
    """Import every module of ``package`` whose name does not start with ``_`` and collect its EXPERIMENT.

    Modules are imported only when this is called, never when the package itself is imported, so an
    experiment module can import ``natgrad.experiments._base`` without a cycle.

    Returns:
        ``{experiment.name: experiment}`` sorted by name.

    Raises:
        ExperimentImportError: a module fails to import (the message names the module).
        TypeError: a module has no ``EXPERIMENT`` or it is not an :class:`Experiment`.
        ValueError: two modules use the same name, or a name is not lowercase letters, digits and dashes.
    """
    root = importlib.import_module(package)
    found: dict[str, Experiment] = {}
    origin: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module_name = f"{package}.{info.name}"
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            hint = (
                "; the experiments need the 'experiments' extra: pip install 'natgrad[experiments]'"
                if isinstance(exc, ModuleNotFoundError)
                else ""
            )
            raise ExperimentImportError(
                f"discover: experiment module {module_name!r} failed to import: "
                f"{type(exc).__name__}: {exc}{hint}"
            ) from exc
        experiment = getattr(module, "EXPERIMENT", None)
        if not isinstance(experiment, Experiment):
            raise TypeError(
                f"discover: module {module_name!r} must define EXPERIMENT = Experiment(...), got "
                f"{type(experiment).__name__}; helper modules belong in names starting with '_'"
            )
        if not _NAME_PATTERN.match(experiment.name):
            raise ValueError(
                f"discover: experiment name {experiment.name!r} in {module_name!r} must be lowercase "
                "letters, digits and dashes (it is a command-line argument and a folder name)"
            )
        if experiment.name in found:
            raise ValueError(
                f"discover: experiment name {experiment.name!r} is defined by both "
                f"{origin[experiment.name]!r} and {module_name!r}; names must be unique"
            )
        found[experiment.name] = experiment
        origin[experiment.name] = module_name
    return dict(sorted(found.items()))


def all_experiments() -> dict[str, Experiment]:
    """Every registered experiment, ``{name: Experiment}`` sorted by name."""
    return discover(PACKAGE)


def get(name: str) -> Experiment:
    """The experiment called ``name``.

    Raises:
        ValueError: no experiment has that name; the message lists the valid names.
    """
    experiments = all_experiments()
    if name not in experiments:
        valid = ", ".join(experiments) or "(none registered yet)"
        raise ValueError(f"get: unknown experiment {name!r}; valid names: {valid}")
    return experiments[name]
