"""One writer per run folder: an OS file lock (``flock``) on the folder, held while a command writes it.

The lock is taken on the directory itself, so checking a folder changes nothing in it; the holder then
writes ``.natgrad-lock.json`` (its PID, host, start time and command line) so that a second process can say
who is using the folder. The operating system releases the lock when the holder exits, however it exits
(SIGKILL included), so a stale holder file never blocks anyone. Within one process the lock is reentrant.
On platforms without ``fcntl`` (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from natgrad.report._atomic import atomic_write_json, read_json
from natgrad.report.errors import FolderLockedError, RunFolderError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

HOLDER_FILE = ".natgrad-lock.json"

# resolved folder -> [directory fd, depth]: reentrancy within this process
_held: dict[Path, list[int]] = {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(folder: Path, patience_s: float = 2.0) -> dict[str, Any] | None:
    """The holder record of a locked folder; waits briefly while the holder has not written it yet."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            record = read_json(folder / HOLDER_FILE)
            if isinstance(record, dict) and _pid_alive(int(record.get("pid", -1))):
                return record
        except (OSError, ValueError, TypeError):
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "another process (its PID could not be read)"
    command = " ".join(str(a) for a in holder.get("argv", []))
    return (
        f"another natgrad process (PID {holder.get('pid')} on {holder.get('host')}, "
        f"started {holder.get('started_at')}: {command})"
    )


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive lock of the existing directory ``folder`` for the duration of the block.

    Raises:
        FolderLockedError: another process holds it; the message names that process (PID, host, command).
    """
    key = Path(folder).resolve()
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    if fcntl is None:
        yield
        return
    fd = os.open(key, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderLockedError(
            f"run folder {folder} is in use by {_describe(_holder(key))}; wait for it to finish, "
            "or use another --out"
        ) from None
    except OSError as exc:  # e.g. a network filesystem without locks
        os.close(fd)
        raise RunFolderError(
            f"run folder {folder} cannot be locked ({exc.strerror or exc}); use a folder on a local disk"
        ) from exc
    _held[key] = [fd, 1]
    try:
        atomic_write_json(
            key / HOLDER_FILE,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                "argv": sys.argv,
            },
        )
        yield
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            (key / HOLDER_FILE).unlink()
        os.close(fd)  # releases the lock
