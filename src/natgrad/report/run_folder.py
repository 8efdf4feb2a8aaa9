"""The on-disk layout of a reproduction run, and every read and write of it.

Layout of a run folder::

    config.json          {"format": "natgrad-run", "version": 1, "experiments": {name: record}}
    environment.json     machine and software of the latest invocation
    claims.json          all experiments' claims, plus counts and the experiments that errored
    report.html          self-contained report
    .natgrad-lock.json   the process writing the folder (only while it runs)
    <name>/results.json  {"name", "record", "device", "threads", "run_seconds", "finished_at", "results"}
    <name>/claims.json   [{"id", "statement", ...}]; written last, so it exists only when claims and
                         figures were both built
    <name>/error.txt     traceback of the stage that failed (only while it fails)
    <name>/*.png         figures rebuilt from results.json

A *record* is ``{"quick": bool, "seed": int, "config": {...}}``: everything that decides an experiment's
results. ``results.json`` embeds the record it was computed with, so whether stored results can be reused
is decided from that file alone. Every file is written atomically.

Writers hold the folder's lock (:mod:`natgrad.report.lock`) for as long as they write, so two commands never
mix their outputs in one folder. A process killed mid-write can leave temporary files (``.<file>.<hex>.tmp``)
and figure staging folders (``.figures-*``); the next writer removes them once it holds the lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from natgrad.experiments import Experiment, config_to_dict
from natgrad.report._atomic import atomic_write_json, atomic_write_text, read_json
from natgrad.report.errors import RunFolderError
from natgrad.report.lock import HOLDER_FILE, folder_lock

RUN_FORMAT = "natgrad-run"
RUN_FORMAT_VERSION = 1
FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg")
FIGURE_STAGING_PREFIX = ".figures-"
_TEMP_FILE = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")  # see natgrad.report._atomic


def _is_leftover(path: Path) -> bool:
    """A temporary file or figure staging folder that a killed writer left behind."""
    if path.is_dir():
        return path.name.startswith(FIGURE_STAGING_PREFIX)
    return bool(_TEMP_FILE.match(path.name))


def _foreign_entries(directory: Path) -> list[Path]:
    """What in ``directory`` was not written by natgrad (its lock holder file and leftovers are)."""
    return [p for p in directory.iterdir() if p.name != HOLDER_FILE and not _is_leftover(p)]


def _check_creatable(path: Path) -> None:
    """Refuse, before anything is created, a path that is a regular file or lies below one."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            raise RunFolderError(
                f"RunFolder.create: cannot create {path}: {parent} is a file, not a directory; "
                "pass a directory path to --out"
            )
    if path.exists() and not path.is_dir():
        raise RunFolderError(
            f"RunFolder.create: {path} exists and is not a directory; pass a directory to --out"
        )


def experiment_record(experiment: Experiment, config: Any, quick: bool, seed: int) -> dict[str, Any]:
    """The record that identifies one experiment's results: ``{"quick", "seed", "config"}``.

    The config goes through a JSON round trip so a freshly built record compares equal to a stored one
    (tuples become lists, and so on).
    """
    record = {"quick": bool(quick), "seed": int(seed), "config": config_to_dict(config)}
    return json.loads(json.dumps(record, default=str))


class RunFolder:
    """A run folder on disk (see the module docstring for its layout)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    # -- opening ---------------------------------------------------------------------------------------
    @classmethod
    @contextlib.contextmanager
    def locked(cls, path: str | os.PathLike[str]) -> Iterator[RunFolder]:
        """Open ``path`` for writing (see :meth:`create`) and hold its lock for the duration of the block.

        Raises:
            RunFolderError: as :meth:`create`.
            FolderLockedError: another process is writing the folder (the message names it).
        """
        folder = cls(path)
        _check_creatable(folder.path)
        # a foreign directory is refused before anything, the lock holder file included, is written into it
        if folder.path.is_dir() and not folder.config_path.exists():
            folder._refuse_foreign()
        try:
            folder.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(
                f"RunFolder.create: cannot create {folder.path}: {exc.strerror or exc}; "
                "pass a writable directory to --out"
            ) from exc
        with folder.lock():
            if folder.config_path.exists():
                folder.read_config()  # validates
            else:
                folder._refuse_foreign()
                atomic_write_json(
                    folder.config_path,
                    {"format": RUN_FORMAT, "version": RUN_FORMAT_VERSION, "experiments": {}},
                )
            folder.remove_leftovers()
            yield folder

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> RunFolder:
        """Open ``path`` as a run folder for writing, creating it when it does not exist.

        Raises:
            RunFolderError: ``path`` is a file or lies below one, cannot be created, or is a non-empty
                directory that is not a run folder (so a mistyped ``--out`` never writes into unrelated
                data).
            FolderLockedError: another process is writing the folder.
        """
        with cls.locked(path) as folder:
            return folder

    def _refuse_foreign(self) -> None:
        foreign = _foreign_entries(self.path)
        if foreign:
            raise RunFolderError(
                f"RunFolder.create: {self.path} is a non-empty directory without a natgrad config.json "
                f"(it holds {foreign[0].name!r}); pass a new or empty directory to --out"
            )

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The folder's exclusive lock (reentrant within a process); see :mod:`natgrad.report.lock`."""
        return folder_lock(self.path)

    def remove_leftovers(self) -> list[Path]:
        """Remove the temporary files and figure staging folders of killed writers; call with the lock held.

        Returns:
            The paths removed.
        """
        directories = [self.path, *(p for p in self.path.iterdir() if p.is_dir() and not _is_leftover(p))]
        removed = []
        for directory in directories:
            for path in directory.iterdir():
                if not _is_leftover(path):
                    continue
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunFolder:
        """Open an existing run folder for reading and rebuilding.

        Raises:
            RunFolderError: ``path`` holds no config.json written by ``natgrad reproduce``.
        """
        folder = cls(path)
        if not folder.path.is_dir():
            raise RunFolderError(f"RunFolder.open: {folder.path} is not a directory")
        folder.read_config()
        folder.read_environment()  # validates
        return folder

    # -- paths -----------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def environment_path(self) -> Path:
        return self.path / "environment.json"

    @property
    def claims_path(self) -> Path:
        return self.path / "claims.json"

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    def experiment_dir(self, name: str) -> Path:
        return self.path / name

    # -- config.json -----------------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        """The parsed config.json, validated to be a natgrad run config."""
        hint = "pass a directory written by `natgrad reproduce --out DIR`"
        if not self.config_path.is_file():
            raise RunFolderError(
                f"RunFolder: {self.path} is not a natgrad run folder (no config.json); {hint}"
            )
        try:
            config = read_json(self.config_path)
        except (OSError, ValueError) as exc:
            raise RunFolderError(f"RunFolder: cannot read {self.config_path}: {exc}; {hint}") from exc
        if not isinstance(config, dict) or config.get("format") != RUN_FORMAT:
            raise RunFolderError(
                f"RunFolder: {self.config_path} is not a natgrad run config "
                f'(expected "format": "{RUN_FORMAT}"); {hint}'
            )
        if not isinstance(config.get("experiments"), dict):
            raise RunFolderError(f'RunFolder: {self.config_path} has no "experiments" mapping; {hint}')
        return config

    def records(self) -> dict[str, dict[str, Any]]:
        """The requested record of every experiment this folder has seen, in first-requested order."""
        return self.read_config()["experiments"]

    def set_record(self, name: str, record: dict[str, Any]) -> None:
        """Store the record an experiment is about to be run with (read-modify-write of config.json)."""
        self.set_records({name: record})

    def set_records(self, records: dict[str, dict[str, Any]]) -> None:
        """Store the requested record of several experiments in one write of config.json."""
        config = self.read_config()
        config["experiments"].update(records)
        atomic_write_json(self.config_path, config)

    def write_environment(self, environment: dict[str, Any]) -> None:
        atomic_write_json(self.environment_path, environment)

    def read_environment(self) -> dict[str, Any]:
        """The stored environment record ({} when there is none).

        Raises:
            RunFolderError: environment.json exists but is not a JSON object.
        """
        if not self.environment_path.is_file():
            return {}
        try:
            environment = read_json(self.environment_path)
        except (OSError, ValueError) as exc:
            raise RunFolderError(
                f"RunFolder: cannot read {self.environment_path} ({exc}); delete it (the next "
                "`natgrad reproduce` writes a new one) or restore it"
            ) from exc
        if not isinstance(environment, dict):
            raise RunFolderError(
                f"RunFolder: {self.environment_path} is not an environment record (expected a JSON "
                f"object, got {type(environment).__name__}); delete it or restore it"
            )
        return environment

    # -- per experiment --------------------------------------------------------------------------------
    def read_results_file(self, name: str) -> dict[str, Any] | None:
        """The stored results envelope of ``name``, or None when it has not finished in this folder."""
        path = self.experiment_dir(name) / "results.json"
        if not path.is_file():
            return None
        try:
            envelope = read_json(path)
        except ValueError as exc:  # only a hand edit can corrupt it: every write is atomic
            raise RunFolderError(
                f"RunFolder: {path} is not valid JSON ({exc}); delete it to recompute {name}"
            ) from exc
        if not isinstance(envelope, dict) or "record" not in envelope or "results" not in envelope:
            raise RunFolderError(f"RunFolder: {path} is not a natgrad results file (no record/results)")
        return envelope

    def write_results(self, name: str, envelope: dict[str, Any]) -> dict[str, Any]:
        """Store a results envelope and return it as read back (what claims and figures must use)."""
        path = atomic_write_json(self.experiment_dir(name) / "results.json", envelope)
        return read_json(path)

    def write_claims(self, name: str, claims: list[dict[str, Any]]) -> None:
        atomic_write_json(self.experiment_dir(name) / "claims.json", claims)

    def read_claims(self, name: str) -> list[dict[str, Any]] | None:
        """The stored claims of ``name``, or None when they were never evaluated (or not to the end).

        Raises:
            RunFolderError: the file exists but is not a JSON list.
        """
        path = self.experiment_dir(name) / "claims.json"
        if not path.is_file():
            return None
        try:
            claims = read_json(path)
        except (OSError, ValueError) as exc:
            raise RunFolderError(
                f"RunFolder: {path} is not valid JSON ({exc}); run `natgrad report {self.path}` to rebuild it"
            ) from exc
        if not isinstance(claims, list):
            raise RunFolderError(
                f"RunFolder: {path} is not a claims list; run `natgrad report {self.path}` to rebuild it"
            )
        return claims

    def discard_claims(self, name: str) -> None:
        """Remove the stored claims of ``name`` (before they are re-derived, so none are ever stale)."""
        (self.experiment_dir(name) / "claims.json").unlink(missing_ok=True)

    def write_error(self, name: str, text: str) -> None:
        atomic_write_text(self.experiment_dir(name) / "error.txt", text)

    def read_error(self, name: str) -> str | None:
        path = self.experiment_dir(name) / "error.txt"
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def clear_error(self, name: str) -> None:
        (self.experiment_dir(name) / "error.txt").unlink(missing_ok=True)

    def figure_paths(self, name: str) -> list[Path]:
        """The figures stored for ``name``, sorted by file name."""
        directory = self.experiment_dir(name)
        if not directory.is_dir():
            return []
        return sorted(
            p
            for p in directory.iterdir()
            if p.suffix.lower() in FIGURE_SUFFIXES and not p.name.startswith(".")
        )

    def replace_figures(self, name: str, build: Callable[[Path], Any]) -> list[Path]:
        """Rebuild the figures of ``name``: ``build(tmp_dir)`` writes them, then they replace the old ones.

        The builder writes into a fresh temporary directory beside the final one; only when it returns are
        the old figures removed and the new files renamed into place, so a failing or interrupted builder
        leaves the previous figures intact.
        """
        directory = self.experiment_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=FIGURE_STAGING_PREFIX, dir=directory))
        try:
            build(staging)
            new = sorted(p for p in staging.iterdir() if p.is_file() and p.suffix.lower() in FIGURE_SUFFIXES)
            for old in self.figure_paths(name):
                old.unlink()
            for path in new:
                os.replace(path, directory / path.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.figure_paths(name)

    def discard(self, name: str) -> None:
        """Remove the stored outputs of ``name`` (results first, so a crash never leaves stale results)."""
        directory = self.experiment_dir(name)
        (directory / "results.json").unlink(missing_ok=True)
        (directory / "claims.json").unlink(missing_ok=True)
        self.clear_error(name)
        for path in self.figure_paths(name):
            path.unlink()
