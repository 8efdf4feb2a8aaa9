"""Atomic file writes: a reader sees the old file or the complete new one, never a partial file."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any


def _fsync_dir(directory: Path) -> None:
    """Flush a directory entry to disk so a completed rename survives a crash (best effort, POSIX only)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    The bytes go to a temporary file in the same directory, which is flushed, fsynced and then renamed
    over ``path`` with ``os.replace`` (atomic on POSIX and Windows). If anything fails before the rename
    the temporary file is removed and ``path`` is untouched.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # O_EXCL: never reuse a stranger's file; mode 0o666 minus the umask, like an ordinary open()
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # BaseException: a Ctrl-C mid-write must not leave the temporary file behind either.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _to_plain(obj: Any) -> Any:
    """JSON fallback for array-likes: numpy arrays and scalars, torch tensors (anything with ``tolist``)."""
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(
        f"write_json: value of type {type(obj).__name__} is not JSON-serialisable; "
        "store plain lists, floats and strings (convert tensors with .tolist())"
    )


def dumps_json(obj: Any) -> str:
    """Serialise ``obj`` as indented JSON text.

    Non-finite floats are written as ``NaN``/``Infinity`` (Python's JSON dialect) so a diverged value is
    stored as it was measured; numpy arrays/scalars and tensors are converted with ``tolist()``.
    """
    return json.dumps(obj, indent=2, default=_to_plain) + "\n"


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Serialise ``obj`` with :func:`dumps_json` and write it atomically.

    Serialisation happens before any file is touched, so an unserialisable value leaves no file behind.
    """
    return atomic_write_text(path, dumps_json(obj))


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file written by :func:`atomic_write_json`."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
