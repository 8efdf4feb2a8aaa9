"""The claim table of a `natgrad reproduce` run folder, as markdown for the reproduction page.

Usage: ``python docs/_scripts/claims_table.py RUN_DIR > docs/_snippets/quick_claims.md`` (``make docs-check``
does this after its quick reproduction). Reads ``claims.json``, ``environment.json`` and each experiment's
``results.json`` (title, paper, elapsed time).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(run: Path, command: str) -> str:
    claims = json.loads((run / "claims.json").read_text(encoding="utf-8"))
    env = json.loads((run / "environment.json").read_text(encoding="utf-8"))
    commit = str(env.get("git_commit", "?"))
    commit = f"`{commit[:12]}`" + (" with uncommitted changes" if commit.endswith("+dirty") else "")
    lines = [
        f"Produced by `{command}` at commit {commit} on {env.get('recorded_at', env.get('time', '?'))}: "
        f"Python {env.get('python')}, torch {env.get('torch')}, {env.get('cpu_count')} CPUs "
        f"({env.get('torch_threads')} torch threads), device {env.get('device')}. "
        f"**{claims['passed']} claims hold, {claims['failed']} fail**"
        + (f", errors in: {', '.join(claims['errors'])}" if claims.get("errors") else "")
        + ".",
        "",
    ]
    names = list(dict.fromkeys(claim["experiment"] for claim in claims["claims"]))
    for name in names:
        results = run / name / "results.json"
        info = json.loads(results.read_text(encoding="utf-8")) if results.exists() else {}
        seconds = info.get(
            "run_seconds", info.get("elapsed_s")
        )  # the run record's key (older runs: elapsed_s)
        elapsed = "" if seconds is None else f", {seconds:.1f} s"
        lines += [
            f"**`{name}`** ({info.get('paper', '?')}{elapsed}): {_cell(info.get('title', ''))}",
            "",
            "| claim | statement | value | test | holds |",
            "|---|---|---|---|---|",
        ]
        for claim in (c for c in claims["claims"] if c["experiment"] == name):
            cells = [
                f"`{claim['id']}`",
                _cell(claim["statement"]),
                _number(claim["value"]),
                f"{claim['relation']} {_number(claim['threshold'])}",
                "✓" if claim["holds"] else "✗",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: claims_table.py RUN_DIR [COMMAND]")
    sys.stdout.write(
        render(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) == 3 else "natgrad reproduce --quick")
    )
