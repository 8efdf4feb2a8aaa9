"""What a run folder says about each experiment, read from disk, and the run-wide claims.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from natgrad.experiments import Experiment
from natgrad.report._atomic import atomic_write_json
from natgrad.report.run_folder import RunFolder


@dataclass
class Outcome:
    """The state of one experiment in a run folder.

    Attributes:
        name: experiment name.
        title: one-line title (from the stored results, else the registry, else the name).
        paper: paper the result belongs to ("" when unknown).
        status: ``"done"`` (results, claims and figures stored), ``"error"`` (a stage failed; see
            ``error``), ``"missing"`` (requested, but no results computed with the requested record, e.g.
            interrupted) or ``"incomplete"`` (results stored, claims or figures not built to the end).
        record: the record ``{"quick", "seed", "config"}`` it was requested with.
        claims: claim dicts as stored in ``<name>/claims.json``.
        figures: stored figure files.
        error: the stored traceback text, or None.
        run_seconds: wall time of ``run`` in seconds, when it finished (reported, never claimed).
    """

    name: str
    title: str
    paper: str = ""
    status: str = "missing"
    record: dict[str, Any] = field(default_factory=dict)
    claims: list[dict[str, Any]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    error: str | None = None
    run_seconds: float | None = None

    @property
    def failed_claims(self) -> list[dict[str, Any]]:
        return [claim for claim in self.claims if not claim.get("holds", False)]

    @property
    def ok(self) -> bool:
        """Finished without error and every claim holds."""
        return self.status == "done" and not self.failed_claims

    @property
    def error_summary(self) -> str | None:
        """The last non-empty line of the stored traceback (the exception), or None."""
        if self.error is None:
            return None
        lines = [line for line in self.error.strip().splitlines() if line.strip()]
        return lines[-1] if lines else "unknown error"


def format_number(value: Any) -> str:
    """A number to 6 significant digits for reading; PASS/FAIL and claims.json use the exact value."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_outcome(folder: RunFolder, name: str, experiment: Experiment | None = None) -> Outcome:
    """Assemble the :class:`Outcome` of ``name`` from the files of ``folder`` (nothing is recomputed)."""
    requested = folder.records().get(name)
    envelope = folder.read_results_file(name)
    if envelope is not None and requested is not None and envelope["record"] != requested:
        envelope = None  # computed with other settings than the ones now requested: not this run's result
    error = folder.read_error(name)
    stored = envelope or {}
    title = stored.get("title") or (experiment.title if experiment else name)
    paper = stored.get("paper") or (experiment.paper if experiment else "")
    claims = folder.read_claims(name) if envelope is not None else None
    if error is not None:
        status = "error"
    elif envelope is None:
        status = "missing"
    elif claims is None:
        status = "incomplete"
    else:
        status = "done"
    return Outcome(
        name=name,
        title=title,
        paper=paper,
        status=status,
        record=stored.get("record") or requested or {},
        claims=claims or [],
        figures=folder.figure_paths(name) if status == "done" else [],
        error=error,
        run_seconds=stored.get("run_seconds"),
    )


def read_outcomes(folder: RunFolder, registry: dict[str, Experiment] | None = None) -> list[Outcome]:
    """The outcome of every experiment the folder has seen, in first-requested order."""
    registry = registry or {}
    return [read_outcome(folder, name, registry.get(name)) for name in folder.records()]


def claims_summary(outcomes: list[Outcome]) -> dict[str, Any]:
    """The run-wide claims.json: every claim tagged with its experiment, counts, and unfinished experiments.

    ``all_hold`` is true only when there is at least one experiment, every experiment finished (claims and
    figures built, no error) and every one of its claims was evaluated and holds. ``missing`` (no results),
    ``incomplete`` (results, but claims or figures not built to the end) and ``errors`` name the others.
    """
    claims = [{"experiment": o.name, **claim} for o in outcomes for claim in o.claims]
    passed = sum(1 for claim in claims if claim.get("holds", False))
    return {
        "all_hold": bool(outcomes) and bool(claims) and all(o.ok and o.claims for o in outcomes),
        "passed": passed,
        "failed": len(claims) - passed,
        "errors": [o.name for o in outcomes if o.status == "error"],
        "missing": [o.name for o in outcomes if o.status == "missing"],
        "incomplete": [o.name for o in outcomes if o.status == "incomplete"],
        "experiments": {o.name: o.status for o in outcomes},
        "claims": claims,
    }


def write_claims_summary(folder: RunFolder, outcomes: list[Outcome]) -> dict[str, Any]:
    """Write the run-wide claims.json and return its content."""
    summary = claims_summary(outcomes)
    atomic_write_json(folder.claims_path, summary)
    return summary
