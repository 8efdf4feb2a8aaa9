"""Shared helpers for the benchmarks: the environment record, atomic JSON output, and a timer.

Every benchmark writes its results with :func:`environment` attached, so a number can always be traced back
to the interpreter, library versions, thread count, machine and commit that produced it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Where and with what a benchmark ran: versions, platform, CPU count, torch threads, date, git commit."""
    device = torch.device(device)
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable_cpus = os.cpu_count()
    status = _git("status", "--porcelain", "--untracked-files=no")
    record: dict[str, Any] = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "argv": sys.argv[1:],
    }
    if device.type == "cuda":
        record["cuda"] = torch.version.cuda
        record["gpu"] = torch.cuda.get_device_name(device)
    return record


def write_json_atomic(path: Path | str, data: Any) -> Path:
    """Write ``data`` as JSON to ``path`` via a temporary file and ``os.replace``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock times include it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], Any], repeats: int, warmup: int = 1, device: torch.device | str = "cpu"
) -> dict:
    """Wall-clock seconds of ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    Returns {"median", "min", "max", "times"} in seconds; the median is the number to quote.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "times": times}
