"""Run folders and the HTML report of ``natgrad reproduce``.

Modules: ``run_folder`` (layout, reads and writes), ``runner`` (run, resume, rebuild), ``summary``
(outcomes and the run-wide claims.json), ``html`` (report.html), ``environment`` (environment.json),
``device`` (the torch default device of a run), ``threads`` (the thread policy of a run), ``lock`` (one
writer per run folder), ``_atomic`` (atomic file writes). The environment record and the atomic JSON writer
are shared with the benchmarks.
"""

from natgrad.report._atomic import atomic_write_json, read_json
from natgrad.report.environment import collect_environment
from natgrad.report.errors import FolderLockedError
from natgrad.report.html import render_report, write_report
from natgrad.report.run_folder import RunFolder, RunFolderError
from natgrad.report.runner import ConfigConflictError, Hooks, rebuild, reproduce
from natgrad.report.summary import Outcome, read_outcomes, write_claims_summary

__all__ = [
    "ConfigConflictError",
    "FolderLockedError",
    "atomic_write_json",
    "collect_environment",
    "read_json",
    "Hooks",
    "Outcome",
    "RunFolder",
    "RunFolderError",
    "read_outcomes",
    "rebuild",
    "render_report",
    "reproduce",
    "write_claims_summary",
    "write_report",
]
