"""Equal wall-clock budgets for optimizer comparisons: a pausable clock and a fixed torch thread count.

Every method of a comparison runs with the same number of torch threads (`fixed_threads`) and is charged only
for its training steps (`TrainingClock`, paused while the test error is evaluated). Wall-clock time is what a
user waits for; it also counts time the process waits for a core, so on a machine shared with other work the
budgets buy fewer steps than on an idle one, for every method alike.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class TrainingClock:
    """Wall-clock training time (``time.perf_counter``), excluding the time spent while paused.

    Usage: ``clock.resume()`` before a training step, ``clock.pause()`` after it (returns the total so far);
    work done between ``pause`` and the next ``resume`` (evaluation, logging) is not charged.
    """

    def __init__(self) -> None:
        self.elapsed = 0.0
        self._start: float | None = None

    def resume(self) -> None:
        """Start charging time (a no-op when already running)."""
        if self._start is None:
            self._start = time.perf_counter()

    def pause(self) -> float:
        """Stop charging time; returns the training time accumulated so far, in seconds."""
        if self._start is not None:
            self.elapsed += time.perf_counter() - self._start
            self._start = None
        return self.elapsed


@contextmanager
def fixed_threads(threads: int) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(threads)``; the previous count is restored afterwards.

    Yields the thread count in force (record it with the results).

    Raises:
        ValueError: ``threads`` is not a positive integer.
    """
    if not (isinstance(threads, int) and threads >= 1):
        raise ValueError(f"fixed_threads: threads must be an integer >= 1, got {threads!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
