"""Progress reporters handed to ``Experiment.run``: rich bars on a terminal, sparse lines elsewhere."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def _length(iterable: Any, total: int | None) -> int | None:
    if total is not None:
        return total
    try:
        return len(iterable)
    except TypeError:
        return None


class RichProgress:
    """``progress(iterable, description, total)`` drawing one rich bar per loop (nested loops stack).

    Use as a context manager around ``Experiment.run``; the bars disappear when the block ends.
    """

    def __init__(self, console: Console) -> None:
        self._bars = Progress(
            TextColumn("    {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def __call__(
        self, iterable: Iterable[Any], description: str = "", total: int | None = None
    ) -> Iterator[Any]:
        task = self._bars.add_task(description or "working", total=_length(iterable, total))
        try:
            for item in iterable:
                yield item
                self._bars.advance(task)
        finally:
            self._bars.remove_task(task)


class LineProgress:
    """``progress(iterable, description, total)`` for logs (CI, pipes): a few plain lines, no redraws.

    Only outermost loops are reported: a line when one starts, at most one line per ``interval`` seconds
    while it runs (so a long loop still shows signs of life), and one when it ends. Nested loops are silent.
    """

    def __init__(self, console: Console, interval: float = 30.0) -> None:
        self._console = console
        self._interval = interval
        self._depth = 0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __call__(
        self, iterable: Iterable[Any], description: str = "", total: int | None = None
    ) -> Iterator[Any]:
        total = _length(iterable, total)
        outermost = self._depth == 0
        label = description or "working"
        of_total = f"/{total}" if total is not None else ""
        start = last = time.monotonic()
        if outermost:
            self._console.print(f"    {label}: {total if total is not None else '?'} steps", highlight=False)
        self._depth += 1
        done = 0
        try:
            for item in iterable:
                yield item
                done += 1
                now = time.monotonic()
                if outermost and now - last >= self._interval:
                    self._console.print(f"    {label}: {done}{of_total}", highlight=False)
                    last = now
        finally:
            self._depth -= 1
        if outermost:
            elapsed = time.monotonic() - start
            self._console.print(f"    {label}: done {done}{of_total} in {elapsed:.1f} s", highlight=False)


def make_progress(console: Console) -> RichProgress | LineProgress:
    """A rich progress display on an interactive terminal, plain lines otherwise."""
    if console.is_terminal and not console.is_dumb_terminal:
        return RichProgress(console)
    return LineProgress(console)
