"""The ``natgrad`` command: list experiments, reproduce them into a run folder, rebuild a report.

Exit codes: 0 every selected experiment finished and all its claims hold; 1 a claim fails or an
experiment raised; 2 bad usage (unknown experiment, bad option, unusable --out, a run folder in use by another
process, a corrupt run folder file, conflicting stored settings); 130 interrupted by SIGINT or SIGTERM (rerun
the same command to resume).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

import natgrad.experiments as experiments_api
from natgrad.experiments import Experiment, Progress
from natgrad.report import (
    ConfigConflictError,
    Hooks,
    Outcome,
    RunFolder,
    RunFolderError,
    read_outcomes,
    rebuild,
    reproduce,
    write_claims_summary,
    write_report,
)
from natgrad.report.device import VALID_DEVICES, validate_device
from natgrad.report.environment import collect_environment
from natgrad.report.progress import make_progress
from natgrad.report.summary import format_number

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_SEED = 2**32 - 1  # experiments derive further seeds as seed + k; this keeps them in every RNG's range

app = typer.Typer(
    name="natgrad",
    help="Exact natural gradients: reproduce the papers' results and build a report.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _console() -> Console:
    # built per call so output goes to the current stdout (tests swap it)
    return Console(highlight=False, soft_wrap=True)


def _fail(console: Console, message: str, code: int) -> typer.Exit:
    console.print(Text(message, style="bold red"))
    return typer.Exit(code)


def _registry_or_exit(console: Console) -> dict[str, Experiment]:
    try:
        return experiments_api.all_experiments()
    except (ImportError, TypeError, ValueError) as exc:
        raise _fail(console, f"natgrad: cannot load the experiments: {exc}", EXIT_FAILED) from exc


def _select(console: Console, registry: dict[str, Experiment], names: list[str]) -> list[Experiment]:
    unknown = [name for name in names if name not in registry]
    if unknown:
        valid = ", ".join(registry) or "(none registered yet)"
        raise _fail(
            console,
            f"natgrad reproduce: unknown experiment(s) {', '.join(map(repr, unknown))}; valid names: {valid}",
            EXIT_USAGE,
        )
    return [registry[name] for name in dict.fromkeys(names or registry)]


class _ConsoleHooks(Hooks):
    """Prints one line per experiment and shows progress while it runs."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @contextlib.contextmanager
    def progress_scope(self, experiment: Experiment) -> Iterator[Progress]:
        with make_progress(self.console) as progress:
            yield progress

    def started(self, experiment: Experiment, index: int, total: int, reuse: bool) -> None:
        line = Text(f"[{index + 1}/{total}] ", style="bold")
        line.append(f"{experiment.name}: {experiment.title}")
        if reuse:
            line.append(" (stored results)", style="dim")
        self.console.print(line)

    def finished(self, outcome: Outcome, reused: bool) -> None:
        if outcome.status != "done":
            self.console.print(Text(f"    error: {outcome.error_summary}", style="red"))
            return
        held = len(outcome.claims) - len(outcome.failed_claims)
        took = "" if reused or outcome.run_seconds is None else f" in {outcome.run_seconds:.1f} s"
        style = "green" if outcome.ok else "red"
        self.console.print(Text(f"    done{took}: {held}/{len(outcome.claims)} claims hold", style=style))


def _claims_table(outcomes: list[Outcome]) -> Table:
    table = Table(title="Claims", title_justify="left")
    for column in ("experiment", "claim", "value", "relation", "threshold", "result"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        for claim in outcome.claims:
            holds = bool(claim.get("holds"))
            table.add_row(
                Text(outcome.name),
                Text(str(claim.get("id"))),
                Text(format_number(claim.get("value"))),
                Text(str(claim.get("relation"))),
                Text(format_number(claim.get("threshold"))),
                Text("PASS", style="bold green") if holds else Text("FAIL", style="bold red"),
            )
        if outcome.status != "done":
            table.add_row(
                Text(outcome.name),
                Text("-"),
                Text(""),
                Text(""),
                Text(""),
                Text(outcome.status.upper(), style="bold red"),
            )
    return table


def _finish(console: Console, folder: RunFolder, registry: dict[str, Experiment], selected: list[str]) -> int:
    """Write claims.json and report.html for the whole folder; print the selected experiments' claims."""
    everything = read_outcomes(folder, registry)
    write_claims_summary(folder, everything)
    report = write_report(folder, everything)
    outcomes = [o for o in everything if o.name in selected]
    console.print(_claims_table(outcomes))
    failing = [(o, claim) for o in outcomes for claim in o.failed_claims]
    broken = [o for o in outcomes if o.status != "done"]
    for outcome, claim in failing:
        console.print(
            Text(
                f"FAIL {outcome.name}/{claim.get('id')}: {claim.get('statement')} "
                f"(value {claim.get('value')!r}, "
                f"required {claim.get('relation')} {claim.get('threshold')!r})",
                style="red",
            )
        )
    for outcome in broken:
        console.print(Text(_unfinished_line(folder, outcome), style="red"))
    console.print(Text(f"report: {report}"))
    return EXIT_FAILED if failing or broken else EXIT_OK


def _unfinished_line(folder: RunFolder, outcome: Outcome) -> str:
    """Why an experiment did not finish, naming only files that exist."""
    if outcome.status == "error":
        where = folder.experiment_dir(outcome.name) / "error.txt"
        traceback_at = f" (traceback: {where})" if where.is_file() else ""
        return f"ERROR {outcome.name}: {outcome.error_summary}{traceback_at}"
    if outcome.status == "incomplete":
        return (
            f"INCOMPLETE {outcome.name}: results are stored but claims and figures were not built to the end; "
            "rerun the same command to finish them"
        )
    return f"MISSING {outcome.name}: no results yet (not run to the end); rerun the same command to run it"


class _StopSignals:
    """SIGINT and SIGTERM during a command: raise ``KeyboardInterrupt`` while armed, only note them after.

    Armed while experiments run, so Ctrl-C or a scheduler's SIGTERM stops the work in progress; disarmed
    for the final summary, so a signal can never cut claims.json or report.html short or skip them. A signal
    that arrives once everything has finished does not turn a complete run into an interrupted one.
    """

    def __init__(self) -> None:
        self.armed = True
        self.received: str | None = None

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signal.Signals(signum).name
        if self.armed:
            raise KeyboardInterrupt(self.received)

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopSignals]:
        try:
            previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: signals cannot be handled here
            yield self
            return
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@app.command("list")
def list_command() -> None:
    """List the registered experiments."""
    console = _console()
    registry = _registry_or_exit(console)
    if not registry:
        console.print("No experiments are registered yet.")
        return
    table = Table(title="Experiments", title_justify="left")
    for column in ("name", "title", "paper"):
        table.add_column(column, overflow="fold")
    for experiment in registry.values():
        table.add_row(Text(experiment.name), Text(experiment.title), Text(experiment.paper))
    console.print(table)


@app.command("reproduce")
def reproduce_command(
    names: Annotated[
        list[str] | None, typer.Argument(help="Experiments to run (default: all; see `natgrad list`).")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Small settings that finish in minutes.")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run folder (default: runs/<timestamp>). Reuse it to resume.")
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            "--seed", min=0, max=MAX_SEED, help=f"Seed handed to every experiment (0 to {MAX_SEED})."
        ),
    ] = 0,
    device: Annotated[
        str | None, typer.Option("--device", help=f"Torch default device: {VALID_DEVICES}.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Recompute the selected experiments even if results are stored.")
    ] = False,
) -> None:
    """Run experiments, store results, claims and figures in a run folder, and write report.html.

    Rerunning with the same --out skips experiments whose stored results have the same settings; if the
    stored settings differ the command stops, unless --force is given (then they are recomputed). One process
    at a time writes a run folder: a second one on the same --out exits 2 naming the first.
    """
    console = _console()
    registry = _registry_or_exit(console)
    if not registry and not names:
        console.print("No experiments are registered yet; nothing to reproduce.")
        return
    selected = _select(console, registry, names or [])
    if device is not None:
        try:
            device = validate_device(device)
        except ValueError as exc:
            raise _fail(console, f"natgrad reproduce: {exc}", EXIT_USAGE) from exc
    out = out or Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    names_selected = [e.name for e in selected]
    stop = _StopSignals()
    try:
        with stop.installed(), RunFolder.locked(out) as folder:
            try:
                folder.write_environment(collect_environment(device))
                console.print(
                    Text(
                        f"run folder: {folder.path}  (quick={quick}, seed={seed}, device={device or 'default'})"
                    )
                )
                hooks = _ConsoleHooks(console)
                reproduce(folder, selected, quick=quick, seed=seed, force=force, device=device, hooks=hooks)
                stop.armed = False
            except KeyboardInterrupt:
                stop.armed = False
                stop.received = stop.received or "KeyboardInterrupt"
            code = _finish(console, folder, registry, names_selected)
            cut_short = stop.received is not None and not _all_finished(folder, registry, names_selected)
    except RunFolderError as exc:
        raise _fail(console, f"natgrad reproduce: {exc}", EXIT_USAGE) from exc
    except ConfigConflictError as exc:
        raise _fail(console, str(exc), EXIT_USAGE) from exc
    except KeyboardInterrupt:  # before the folder was ready: nothing was run
        raise _fail(console, f"interrupted before any experiment ran ({out})", EXIT_INTERRUPTED) from None
    if cut_short:
        raise _fail(
            console,
            f"interrupted ({stop.received}); finished experiments are stored in {folder.path}. "
            f"Resume: rerun the same command with --out {folder.path}",
            EXIT_INTERRUPTED,
        )
    raise typer.Exit(code)


def _all_finished(folder: RunFolder, registry: dict[str, Experiment], names: list[str]) -> bool:
    outcomes = read_outcomes(folder, registry)
    return all(o.status in ("done", "error") for o in outcomes if o.name in names)


@app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `natgrad reproduce`.")],
) -> None:
    """Rebuild claims, figures and report.html of a run folder from its stored results (no rerun)."""
    console = _console()
    registry = _registry_or_exit(console)
    stop = _StopSignals()
    try:
        folder = RunFolder.open(run_dir)
        with stop.installed(), folder.lock():
            try:
                outcomes = rebuild(folder, registry)
                stop.armed = False
            except KeyboardInterrupt:
                stop.armed = False
                stop.received = stop.received or "KeyboardInterrupt"
                outcomes = read_outcomes(folder, registry)
            code = _finish(console, folder, registry, [o.name for o in outcomes])
            cut_short = stop.received is not None and not _all_finished(
                folder, registry, [o.name for o in outcomes]
            )
    except RunFolderError as exc:
        raise _fail(console, f"natgrad report: {exc}", EXIT_USAGE) from exc
    except KeyboardInterrupt:  # before the folder was opened
        raise _fail(console, "interrupted; nothing was rebuilt", EXIT_INTERRUPTED) from None
    if cut_short:
        raise _fail(
            console, f"interrupted; rerun `natgrad report {run_dir}` to rebuild the rest", EXIT_INTERRUPTED
        )
    raise typer.Exit(code)


def main() -> None:
    """Run the command (the console script enters through ``natgrad.__main__.main``, which checks the extra)."""
    app()
