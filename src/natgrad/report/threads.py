"""The CPU thread policy of an experiment's run: torch's intra-op threads and the native BLAS/OpenMP pools.

Tiny problems run single-threaded: their kernels are too small to gain from more threads, and on a machine
shared with other work every extra thread waits for a core (a two-thread run of a tiny problem on
oversubscribed cores took a hundred times longer than a one-thread run). The count is capped by the CPUs this
process may use, applied to torch (``torch.set_num_threads``) and, through threadpoolctl when it is
installed, to the BLAS and OpenMP libraries numpy and scipy load; the previous settings are restored after.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def thread_policy(threads: int) -> Iterator[dict[str, Any]]:
    """Run the block with ``min(threads, usable_cpus())`` CPU threads; yields the record of what applies.

    The record is ``{"requested", "torch", "native"}``, ``native`` mapping each native thread pool that
    threadpoolctl found (e.g. ``"openblas"``, ``"openmp"``) to its thread count (empty without threadpoolctl).

    Raises:
        ValueError: ``threads`` is not an integer >= 1.
    """
    if not (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1):
        raise ValueError(f"thread_policy: threads must be an integer >= 1, got {threads!r}")
    count = min(threads, usable_cpus())
    import torch

    previous = torch.get_num_threads()
    with contextlib.ExitStack() as stack:
        native: dict[str, int] = {}
        try:
            from threadpoolctl import threadpool_info, threadpool_limits
        except ImportError:
            pass
        else:
            stack.enter_context(threadpool_limits(limits=count))
            native = {pool["internal_api"]: pool["num_threads"] for pool in threadpool_info()}
        torch.set_num_threads(count)
        stack.callback(torch.set_num_threads, previous)
        yield {"requested": threads, "torch": torch.get_num_threads(), "native": native}
