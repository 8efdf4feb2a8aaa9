"""Small fake experiments for the framework tests (never registered in the package)."""

from __future__ import annotations

import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from natgrad.experiments._base import Claim, Experiment


def tiny_png(shade: int = 128) -> bytes:
    """A valid 1x1 greyscale PNG (built by hand so the tests need no plotting library)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(bytes([0, shade]))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@dataclass(frozen=True)
class FakeConfig:
    quick: bool
    seed: int
    steps: int
    sizes: tuple[int, ...] = (1, 2)


def make_experiment(
    name: str,
    calls: Counter,
    *,
    value: float = 1.0,
    threshold: float = 2.0,
    statement: str = "the value stays below the threshold",
    title: str | None = None,
    interrupt_first: bool = False,
    fail_run: bool = False,
    step_seconds: float = 0.0,
    figure_seconds: float = 0.0,
) -> Experiment:
    """A fake experiment whose single claim is ``value < threshold``; ``calls[name]`` counts runs.

    ``interrupt_first``: the first run raises KeyboardInterrupt (a Ctrl-C); ``fail_run``: every run raises.
    ``step_seconds``: sleep per run step; ``figure_seconds``: with it, a second figure is written after that
    sleep (so a kill can land while figures are half built).
    """

    def config(quick: bool, seed: int) -> FakeConfig:
        return FakeConfig(quick=quick, seed=seed, steps=3 if quick else 5)

    def run(cfg: FakeConfig, progress: Any) -> dict[str, Any]:
        calls[name] += 1
        if interrupt_first and calls[name] == 1:
            raise KeyboardInterrupt
        if fail_run:
            raise RuntimeError(f"{name} exploded on purpose")
        trace = []
        for i in progress(range(cfg.steps), description=f"{name} steps"):
            time.sleep(step_seconds)
            trace.append(float(i))
        return {"value": value, "trace": trace, "seed": cfg.seed, "sizes": cfg.sizes}

    def claims(results: dict[str, Any]) -> list[Claim]:
        return [Claim("value-bound", statement, results["value"], "<", threshold)]

    def figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
        path = out_dir / "trace.png"
        path.write_bytes(tiny_png(int(results["value"]) % 256))
        if not figure_seconds:
            return [path]
        time.sleep(figure_seconds)
        second = out_dir / "trace-again.png"
        second.write_bytes(tiny_png(255 - int(results["value"]) % 256))
        return [path, second]

    return Experiment(
        name=name,
        title=title or f"Fake experiment {name}",
        config=config,
        run=run,
        claims=claims,
        figures=figures,
        paper="Test paper",
    )
