"""Run experiments into a run folder, resume interrupted runs, rebuild claims and figures from results.

Resume rule: an experiment is skipped when its ``results.json`` exists and the record stored in it
(``{"quick", "seed", "config"}``) equals the requested one. A setting the stored record lacks counts as equal
when the requested value is that config field's default: a field added to a config after the results were
computed, left at its default, changes nothing they depend on. When the stored record differs, nothing is run
and :class:`ConfigConflictError` names the experiments and the differing settings; ``force=True`` instead
recomputes the selected experiments, replacing what was stored. Results are written only after ``run``
returns, so an interruption loses at most the experiment in progress.

Every requested record is written to config.json before anything runs, so an interrupted run's claims.json
names the experiments it never reached. Each ``run`` executes under the experiment's thread policy
(:mod:`natgrad.report.threads`), recorded in ``results.json`` as ``threads``. The folder's lock is held
throughout (:meth:`RunFolder.lock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import random
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from natgrad.experiments import Claim, Experiment, Progress, no_progress
from natgrad.report.device import default_device
from natgrad.report.run_folder import RunFolder, experiment_record
from natgrad.report.summary import Outcome, read_outcome
from natgrad.report.threads import thread_policy


class ConfigConflictError(ValueError):
    """Stored results were computed with other settings than the ones requested."""


class Hooks:
    """What a front end sees of a reproduction. The defaults show nothing."""

    @contextlib.contextmanager
    def progress_scope(self, experiment: Experiment) -> Iterator[Progress]:
        """Context active while ``experiment.run`` executes; yields the ``progress`` callable it gets."""
        yield no_progress

    def started(self, experiment: Experiment, index: int, total: int, reuse: bool) -> None:
        """Called before an experiment is run (``reuse``: its stored results will be used instead)."""

    def finished(self, outcome: Outcome, reused: bool) -> None:
        """Called once an experiment's results, claims and figures are stored (or its error is)."""


@dataclass
class _Planned:
    experiment: Experiment
    config: Any
    record: dict[str, Any]
    reuse: bool
    stored: dict[str, Any] | None = None  # the results envelope to reuse
    config_error: str | None = None


def _differences(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Human-readable ``key: stored -> requested`` lines (config keys flattened one level)."""
    flat_stored = {"quick": stored.get("quick"), "seed": stored.get("seed"), **stored.get("config", {})}
    flat_requested = {"quick": requested["quick"], "seed": requested["seed"], **requested["config"]}
    keys = list(dict.fromkeys([*flat_stored, *flat_requested]))
    return [
        f"{key}: {flat_stored.get(key)!r} -> {flat_requested.get(key)!r}"
        for key in keys
        if flat_stored.get(key) != flat_requested.get(key)
    ]


@dataclass(frozen=True)
class _Nested:
    """The field defaults of a nested config dataclass (see `_field_defaults`)."""

    fields: dict[str, Any]


def _field_defaults(config: Any) -> dict[str, Any]:
    """{field: JSON form of its default} of a config dataclass, nested dataclasses as `_Nested`."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return {}
    defaults: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            defaults[f.name] = _Nested(_field_defaults(value))
        elif f.default is not dataclasses.MISSING:
            defaults[f.name] = json.loads(json.dumps(f.default, default=str))
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = json.loads(json.dumps(f.default_factory(), default=str))
    return defaults


def _with_new_defaults(stored: Any, requested: Any, defaults: dict[str, Any]) -> Any:
    """``stored`` with the keys it lacks taken from ``requested`` where those hold their field's default."""
    if not isinstance(stored, dict) or not isinstance(requested, dict):
        return stored
    filled = dict(stored)
    for key, value in requested.items():
        default = defaults.get(key, dataclasses.MISSING)
        if key not in filled:
            if not isinstance(default, _Nested) and default is not dataclasses.MISSING and default == value:
                filled[key] = value
        elif isinstance(default, _Nested):
            filled[key] = _with_new_defaults(filled[key], value, default.fields)
    return filled


def _upgraded(stored: dict[str, Any], requested: dict[str, Any], config: Any) -> dict[str, Any]:
    """The stored record as it reads with the config fields added since at their defaults."""
    config_part = _with_new_defaults(stored.get("config"), requested["config"], _field_defaults(config))
    return {**stored, "config": config_part}


def plan(
    folder: RunFolder, experiments: list[Experiment], quick: bool, seed: int, force: bool = False
) -> list[_Planned]:
    """Decide, before anything runs, which experiments reuse stored results.

    Raises:
        ConfigConflictError: some stored results were computed with another record and ``force`` is off.
    """
    planned, conflicts = [], []
    for experiment in experiments:
        try:
            config = experiment.config(quick, seed)
            record = experiment_record(experiment, config, quick, seed)
        except Exception:
            # a broken config is that experiment's error; the others still run
            record = {"quick": bool(quick), "seed": int(seed), "config": None}
            planned.append(_Planned(experiment, None, record, False, config_error=traceback.format_exc()))
            continue
        envelope = folder.read_results_file(experiment.name)
        stored = None if envelope is None else _upgraded(envelope["record"], record, config)
        reuse = stored is not None and not force and stored == record
        if stored is not None and not force and not reuse:
            changes = "; ".join(_differences(stored, record))
            conflicts.append(f"  {experiment.name}: {changes}")
        planned.append(_Planned(experiment, config, record, reuse, envelope if reuse else None))
    if conflicts:
        raise ConfigConflictError(
            f"reproduce: {folder.path} holds results computed with other settings:\n"
            + "\n".join(conflicts)
            + "\nUse a new --out directory to keep both, or pass --force to recompute and replace them."
        )
    return planned


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and (when installed) torch's global generators, as a safety net.

    Experiments seed their own generators from their config; this only makes a forgotten one repeatable.
    """
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)  # noqa: NPY002 -- the legacy global generator is what a forgetful experiment would use
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


def _validated_claims(experiment: Experiment, claims: Any) -> list[dict[str, Any]]:
    if not isinstance(claims, list) or not all(isinstance(c, Claim) for c in claims):
        raise TypeError(f"{experiment.name}.claims: expected list[Claim], got {type(claims).__name__}")
    if not claims:
        raise ValueError(f"{experiment.name}.claims: expected at least one Claim, got an empty list")
    ids = [claim.id for claim in claims]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{experiment.name}.claims: claim ids must be unique, repeated: {duplicates}")
    return [claim.to_dict() for claim in claims]


def derive(folder: RunFolder, experiment: Experiment, envelope: dict[str, Any]) -> Outcome:
    """Recompute claims and figures of ``experiment`` from its stored results envelope and store them.

    A failure in either stage is stored as ``<name>/error.txt``; a success clears an earlier error.
    ``claims.json`` is removed first and written last, so an interruption in between leaves the experiment
    ``incomplete`` (never with claims of older results, never "done" without its figures).
    """
    name, results = experiment.name, envelope["results"]
    folder.discard_claims(name)
    failures = []
    try:
        claims = _validated_claims(experiment, experiment.claims(results))
    except Exception:
        claims = []
        failures.append(f"claims failed:\n{traceback.format_exc()}")
    try:
        folder.replace_figures(name, lambda out_dir: experiment.figures(results, out_dir))
    except Exception:
        failures.append(f"figures failed:\n{traceback.format_exc()}")
    if failures:
        folder.write_error(name, "\n".join(failures))
    else:
        folder.clear_error(name)
    folder.write_claims(name, claims)
    return read_outcome(folder, name, experiment)


def _run_one(folder: RunFolder, item: _Planned, seed: int, device: str | None, hooks: Hooks) -> Outcome:
    experiment, name = item.experiment, item.experiment.name
    folder.discard(name)
    if item.config_error is not None:
        folder.write_error(name, f"config failed:\n{item.config_error}")
        return read_outcome(folder, name, experiment)
    seed_everything(seed)
    start = time.perf_counter()
    try:
        with (
            default_device(device),
            thread_policy(experiment.threads) as threads,
            hooks.progress_scope(experiment) as progress,
        ):
            results = experiment.run(item.config, progress)
        if not isinstance(results, dict):
            raise TypeError(f"{name}.run: expected a dict of results, got {type(results).__name__}")
        envelope = {
            "name": name,
            "title": experiment.title,
            "paper": experiment.paper,
            "record": item.record,
            "device": device or "cpu",
            "threads": threads,
            "run_seconds": time.perf_counter() - start,
            "finished_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "results": results,
        }
        stored = folder.write_results(name, envelope)
    except Exception:
        folder.write_error(name, f"run failed:\n{traceback.format_exc()}")
        return read_outcome(folder, name, experiment)
    return derive(folder, experiment, stored)


def reproduce(
    folder: RunFolder,
    experiments: list[Experiment],
    *,
    quick: bool,
    seed: int,
    force: bool = False,
    device: str | None = None,
    hooks: Hooks | None = None,
) -> list[Outcome]:
    """Run ``experiments`` into ``folder``, reusing stored results that match (see the module docstring).

    An experiment whose ``run``, ``claims`` or ``figures`` raises gets its traceback stored and the others
    still run. ``KeyboardInterrupt`` propagates after the experiments finished so far are stored.

    Returns:
        The outcome of each selected experiment, in order.
    """
    hooks = hooks or Hooks()
    with folder.lock():
        folder.remove_leftovers()
        planned = plan(folder, experiments, quick, seed, force)
        folder.set_records({item.experiment.name: item.record for item in planned})
        outcomes = []
        for index, item in enumerate(planned):
            hooks.started(item.experiment, index, len(planned), item.reuse)
            if item.reuse:
                outcome = derive(folder, item.experiment, item.stored)
            else:
                outcome = _run_one(folder, item, seed, device, hooks)
            hooks.finished(outcome, item.reuse)
            outcomes.append(outcome)
    return outcomes


def rebuild(folder: RunFolder, registry: dict[str, Experiment]) -> list[Outcome]:
    """Recompute claims and figures of every finished experiment in ``folder`` from stored results.

    Nothing is rerun. Experiments that never finished keep their stored error; experiments that are no
    longer registered keep their stored claims and figures and are marked as errors.
    """
    with folder.lock():
        folder.remove_leftovers()
        return [
            _rebuild_one(folder, name, record, registry.get(name))
            for name, record in folder.records().items()
        ]


def _rebuild_one(
    folder: RunFolder, name: str, record: dict[str, Any], experiment: Experiment | None
) -> Outcome:
    envelope = folder.read_results_file(name)
    if envelope is not None and envelope["record"] != record:
        envelope = None  # computed with other settings than the requested ones: shown as missing
    if envelope is not None and experiment is not None:
        return derive(folder, experiment, envelope)
    if envelope is not None:
        folder.write_error(
            name,
            f"rebuild: experiment {name!r} is not registered in this version of natgrad; "
            "claims and figures are shown as stored, not recomputed",
        )
    return read_outcome(folder, name, experiment)
