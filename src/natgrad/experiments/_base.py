"""The contract every reproduced result follows: settings, run, claims, figures."""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

_RELATIONS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class Claim:
    """One checkable statement: ``value <relation> threshold``.

    Args:
        id: short stable identifier, unique within the experiment (e.g. ``"projector-idempotent"``).
        statement: what is claimed, in words a reader of the paper understands.
        value: the measured number.
        relation: one of ``<``, ``<=``, ``>``, ``>=``.
        threshold: the bound the measured value is compared against.
    """

    id: str
    statement: str
    value: float
    relation: str
    threshold: float

    def __post_init__(self) -> None:
        if self.relation not in _RELATIONS:
            raise ValueError(
                f"Claim({self.id!r}): relation must be one of {sorted(_RELATIONS)}, got {self.relation!r}"
            )

    @property
    def holds(self) -> bool:
        value = float(self.value)
        return math.isfinite(value) and _RELATIONS[self.relation](value, float(self.threshold))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "statement": self.statement,
            "value": float(self.value),
            "relation": self.relation,
            "threshold": float(self.threshold),
            "holds": self.holds,
        }


class Progress(Protocol):
    """What an experiment may call to report progress on long work."""

    def __call__(self, iterable: Sequence[Any] | Any, description: str = "", total: int | None = None) -> Any:
        """Wrap an iterable, showing progress while it is consumed."""
        ...


def no_progress(iterable: Any, description: str = "", total: int | None = None) -> Any:
    """A progress reporter that reports nothing (used in tests)."""
    return iterable


@dataclass(frozen=True)
class Experiment:
    """One reproduced result.

    Args:
        name: command-line name (lowercase, dashes), unique across the registry.
        title: one line for listings and the report.
        config: ``config(quick: bool, seed: int) -> frozen dataclass`` with every setting of the run.
        run: ``run(config, progress) -> dict`` of JSON-serialisable results (lists, floats, strings).
        claims: ``claims(results) -> list[Claim]``, computed from the stored results only.
        figures: ``figures(results, out_dir) -> list[Path]``, PNG files rebuilt from the stored results only.
        paper: which paper the result belongs to.
        threads: the CPU threads (torch and BLAS) the runner gives ``run``. The default 1 suits problems whose
            single operations are too small to gain from parallel kernels: on a shared machine extra threads
            only wait for cores. Results must not depend on it beyond rounding.
    """

    name: str
    title: str
    config: Callable[[bool, int], Any]
    run: Callable[[Any, Progress], dict[str, Any]]
    claims: Callable[[dict[str, Any]], list[Claim]]
    figures: Callable[[dict[str, Any], Path], list[Path]]
    paper: str = ""
    tags: tuple[str, ...] = field(default=())
    threads: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.threads, int) and not isinstance(self.threads, bool) and self.threads >= 1):
            raise ValueError(
                f"Experiment({self.name!r}): threads must be an integer >= 1, got {self.threads!r}"
            )


TIMING_SUFFIXES = ("_seconds", "_at")


def is_timing_key(key: str) -> bool:
    """Whether a results key holds a wall-clock measurement or a timestamp (by name: ``*_seconds``, ``*_at``).

    Such values differ between two runs with the same seed; everything else in results must not.
    """
    return key.endswith(TIMING_SUFFIXES)


def without_timing(value: Any) -> Any:
    """``value`` (nested dicts and lists) with every timing key removed (see :func:`is_timing_key`)."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if not is_timing_key(str(k))}
    if isinstance(value, list | tuple):
        return [without_timing(v) for v in value]
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """A frozen config dataclass as a JSON-serialisable dict."""
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(config)
