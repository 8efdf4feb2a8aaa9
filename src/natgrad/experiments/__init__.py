"""Reproduced results, one module per experiment, discovered on demand.

Each public module (name not starting with ``_``) defines ``EXPERIMENT = Experiment(...)`` following
:mod:`natgrad.experiments._base`. Importing this package imports no experiment; :func:`all_experiments`
and :func:`get` do, so a broken experiment module only fails the code that asks for experiments.

This package namespace is the experiments' public API: the command line, the report and the benchmarks use
these names only, never the private modules behind them.
"""

from natgrad.experiments._base import (
    TIMING_SUFFIXES,
    Claim,
    Experiment,
    Progress,
    config_to_dict,
    is_timing_key,
    no_progress,
    without_timing,
)
from natgrad.experiments._figures import pyplot, save_figure
from natgrad.experiments._registry import ExperimentImportError, all_experiments, discover, get

__all__ = [
    "TIMING_SUFFIXES",
    "Claim",
    "Experiment",
    "ExperimentImportError",
    "Progress",
    "all_experiments",
    "config_to_dict",
    "discover",
    "get",
    "is_timing_key",
    "no_progress",
    "pyplot",
    "save_figure",
    "without_timing",
]
