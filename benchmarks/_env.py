"""Shared helpers for the benchmarks: a GPU-aware wall-clock timer and the peak-memory probe.

The environment record and the atomic JSON writer come from the library (``natgrad.report``), the same ones
``natgrad reproduce`` uses: every benchmark writes its results with ``collect_environment(device)``
attached, so a number can always be traced back to the interpreter, library versions, thread count, machine
and commit that produced it.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "src") not in sys.path:
    sys.path.append(str(REPO / "src"))  # an uninstalled checkout: the library's helpers below

from natgrad.report import atomic_write_json, collect_environment  # noqa: E402

# The older names, for benchmarks written before the helpers moved into the library: the same functions.
environment = collect_environment
write_json_atomic = atomic_write_json


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


def cpu_time_call(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict:
    """CPU seconds of ``fn()`` (``time.process_time``: user + system time of this process, all its threads).

    On a shared machine wall-clock time measures the neighbours; the CPU time of a process pinned to one
    thread (``torch.set_num_threads(1)``) does not. Returns {"median", "min", "max", "times"} in seconds.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "times": times}


def peak_memory(fn: Callable[[], object]) -> tuple[object, float]:
    """Run ``fn`` and return (result, peak resident-set growth in MiB)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        return out, (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        base = _status_kib("VmRSS")
    except OSError:  # not Linux: no resident-set peak to read
        return fn(), float("nan")
    out = fn()
    return out, (_status_kib("VmHWM") - base) / 1024


def reexec_with_fixed_mmap_threshold() -> None:
    """Restart once with glibc's mmap threshold fixed at 128 KiB (Linux only).

    By default glibc raises the threshold after large frees, so later large tensors come from memory the
    process already holds and the resident-set peak misses them; with it fixed every large tensor is a fresh
    mapping, returned on free, and the peak growth of each step is its own.
    """
    if sys.platform != "linux" or os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "0"}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(key)
