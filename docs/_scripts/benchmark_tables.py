"""Markdown tables from ``benchmarks/results/*.json``, for any benchmark that follows the project's format.

Each results file holds an ``environment`` record and measurements: a list of rows or a mapping of named
cases, each a mapping whose nested mappings are one method's measurement. A measurement is shown by its
cost in gradients (the project's unit: the time of one plain gradient in the same run), else by its median
or seconds, else by why it was skipped. Lists (raw timings) are left out. Run as a script to print the page
section: ``python docs/_scripts/benchmark_tables.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

META = ("benchmark", "description", "settings", "environment", "summary")
ENVIRONMENT_KEYS = (
    "python",
    "torch",
    "numpy",
    "platform",
    "cpu_count",
    "torch_threads",
    "device",
    "date",
    "git_commit",
)


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "NaN"
        return f"{value:.3g}"
    return str(value).replace("|", "\\|")


def _cell(measurement: dict[str, Any]) -> Any:
    for key in ("gradients", "median", "seconds"):
        value = measurement.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if isinstance(value, dict) and "median" in value:
            return value["median"]
    if "skipped" in measurement:
        return "skipped"
    return None


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalars as they are, a nested measurement as one cell, other nested mappings with dotted names."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            cell = _cell(value)
            if cell is not None:
                flat[name] = cell
            else:
                flat.update(flatten(value, f"{name}."))
        elif not isinstance(value, list):
            flat[name] = value
    return flat


def table(rows: list[dict[str, Any]]) -> str:
    """One markdown table over the union of the rows' flattened columns (first-seen order)."""
    flat = [flatten(row) for row in rows]
    columns: list[str] = []
    for row in flat:
        columns += [c for c in row if c not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(_format(row.get(c, "")) if c in row else "" for c in columns) + " |" for row in flat
    ]
    return "\n".join(lines)


def measurement_sets(data: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The (name, rows) groups of one results file: its lists of rows and its single named cases."""
    groups: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in data.items():
        if key in META:
            continue
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            groups.append((key, value))
        elif isinstance(value, dict):
            groups.append((key, [value]))
    return groups


def environment_line(env: dict[str, Any]) -> str:
    return "; ".join(f"{k} {_format(env[k])}" for k in ENVIRONMENT_KEYS if k in env)


def render(results_dir: Path) -> str:
    """The markdown section for every results file, sorted by name."""
    parts: list[str] = []
    for path in sorted(results_dir.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            continue
        parts.append(f"### `{path.name}`\n")
        if data.get("description"):
            parts.append(f"{data['description']}.\n")
        if "environment" in data:
            parts.append(f"*Environment:* {environment_line(data['environment'])}.\n")
        if "settings" in data:
            parts.append(f"*Settings:* `{json.dumps(data['settings'])}`\n")
        if isinstance(data.get("summary"), dict):
            parts.append(
                "*Summary:*\n\n" + table([{"group": k, **v} for k, v in data["summary"].items()]) + "\n"
            )
        for name, rows in measurement_sets(data):
            parts.append(f"**{name}**\n\n{table(rows)}\n")
    return "\n".join(parts)


def crossover_summary(results_dir: Path) -> str:
    """One sentence per side of d = r from ``crossover.json`` (how often auto's pick was the fastest route), and
    the range of structured-krylov's cost over the dense structured route's where both ran."""
    path = results_dir / "crossover.json"
    if not path.exists():
        return "*(no crossover measurement in benchmarks/results/ yet)*"
    data = json.loads(path.read_text(encoding="utf-8"))
    summary = data.get("summary", {})
    lines = []
    for side in ("d<=r", "d>r"):
        numbers = summary.get(side)
        if numbers is None:
            continue
        lines.append(
            f"- {side}: auto's pick was the fastest route at {numbers['auto_is_fastest']} of "
            f"{numbers['points']} points, and never more than {numbers['worst_auto_over_fastest']:.2f}× "
            f"slower than the fastest (fastest routes there: {', '.join(numbers.get('fastest_routes', []))})."
        )
    ratios = [entry["ratio"] for entry in data.get("structured_krylov_over_structured", [])]
    if ratios:
        lines.append(
            f"- structured-krylov against the dense structured route, at the {len(ratios)} points where both ran: "
            f"{min(ratios):.2f}× to {max(ratios):.1f}× its cost."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[2]
    sys.stdout.write(render(root / "benchmarks" / "results"))
