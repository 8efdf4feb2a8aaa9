"""Reproduced results, one module per experiment, discovered on demand.

Each public module (name not starting with ``_``) defines ``EXPERIMENT = Experiment(...)`` following
:mod:`natgrad.experiments._base`. Importing this package imports no experiment; :func:`all_experiments`
and :func:`get` do, so a broken experiment module only fails the code that asks for experiments.
"""

from natgrad.experiments._base import Claim, Experiment, Progress, config_to_dict, no_progress
from natgrad.experiments._registry import ExperimentImportError, all_experiments, discover, get

__all__ = [
    "Claim",
    "Experiment",
    "ExperimentImportError",
    "Progress",
    "all_experiments",
    "config_to_dict",
    "discover",
    "get",
    "no_progress",
]
