"""Shared helpers for the benchmarks: a GPU-aware wall-clock timer.

The environment record and the atomic JSON writer come from the library (``natgrad.report``), the same ones
``natgrad reproduce`` uses: every benchmark writes its results with ``collect_environment(device)``
attached, so a number can always be traced back to the interpreter, library versions, thread count, machine
and commit that produced it.
"""

from __future__ import annotations

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
