"""The self-contained HTML report of a run folder: inline CSS, figures embedded as data URIs."""

from __future__ import annotations

import base64
import datetime as _dt
import json
from html import escape
from pathlib import Path
from typing import Any

from natgrad.report._atomic import atomic_write_text
from natgrad.report.run_folder import RunFolder
from natgrad.report.summary import Outcome, claims_summary, format_number

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 70rem;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.5rem; }
table { border-collapse: collapse; margin: 0.8rem 0; width: 100%; font-size: 0.92rem; }
th, td { border: 1px solid #d0d0d0; padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { font-family: ui-monospace, monospace; white-space: nowrap; }
.pass { background: #dff5e1; color: #13612a; font-weight: 600; }
.fail { background: #fbe0e0; color: #9b1c1c; font-weight: 600; }
.banner { padding: 0.6rem 0.9rem; border-radius: 6px; margin: 1rem 0; }
pre { background: #f7f7f7; border: 1px solid #e2e2e2; padding: 0.6rem; overflow-x: auto; font-size: 0.85rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #555; } .muted { color: #666; font-size: 0.9rem; }
"""


def _verdict(holds: bool) -> str:
    return '<td class="pass">PASS</td>' if holds else '<td class="fail">FAIL</td>'


def _claim_rows(outcome: Outcome, with_experiment: bool) -> list[str]:
    rows = []
    for claim in outcome.claims:
        experiment = (
            f'<td><a href="#{escape(outcome.name)}">{escape(outcome.name)}</a></td>'
            if with_experiment
            else ""
        )
        rows.append(
            f"<tr>{experiment}<td>{escape(str(claim.get('id', '')))}</td>"
            f"<td>{escape(str(claim.get('statement', '')))}</td>"
            f'<td class="num">{escape(format_number(claim.get("value")))}</td>'
            f'<td class="num">{escape(str(claim.get("relation", "")))}</td>'
            f'<td class="num">{escape(format_number(claim.get("threshold")))}</td>'
            f"{_verdict(bool(claim.get('holds', False)))}</tr>"
        )
    return rows


def _claims_table(outcomes: list[Outcome], with_experiment: bool) -> str:
    rows = [row for outcome in outcomes for row in _claim_rows(outcome, with_experiment)]
    if not rows:
        return '<p class="muted">No claims.</p>'
    head = "<th>experiment</th>" if with_experiment else ""
    return (
        f"<table><thead><tr>{head}<th>id</th><th>statement</th><th>value</th><th>relation</th>"
        f"<th>threshold</th><th>result</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _environment_table(environment: dict[str, Any]) -> str:
    if not environment:
        return '<p class="muted">No environment record.</p>'
    rows = "".join(
        f"<tr><th>{escape(str(key))}</th><td>{escape(str(value))}</td></tr>"
        for key, value in environment.items()
    )
    return f"<table><tbody>{rows}</tbody></table>"


def _figure(path: Path) -> str:
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = escape(path.name)
    return (
        f'<figure><img src="data:{mime};base64,{data}" alt="{name}"><figcaption>{name}</figcaption></figure>'
    )


def _status_banner(outcome: Outcome) -> str:
    if outcome.status == "missing":
        return '<div class="banner fail">Missing: no results yet (interrupted or not run yet).</div>'
    if outcome.status == "incomplete":
        return (
            '<div class="banner fail">Incomplete: results are stored, but claims and figures were not built '
            "to the end (interrupted); rerun to finish.</div>"
        )
    if outcome.status == "error":
        return f'<div class="banner fail">Error</div><pre>{escape(outcome.error or "")}</pre>'
    if outcome.failed_claims:
        failed, total = len(outcome.failed_claims), len(outcome.claims)
        return f'<div class="banner fail">{failed} of {total} claims fail.</div>'
    if not outcome.claims:  # a finished experiment always has claims (the runner refuses none)
        return '<div class="banner fail">No claims were evaluated.</div>'
    return f'<div class="banner pass">All {len(outcome.claims)} claims hold.</div>'


def _section(outcome: Outcome) -> str:
    elapsed = f"run time {outcome.run_seconds:.1f} s" if outcome.run_seconds is not None else ""
    paper = f"paper: {escape(outcome.paper)}" if outcome.paper else ""
    meta = " · ".join(part for part in (f"<code>{escape(outcome.name)}</code>", paper, elapsed) if part)
    config = escape(json.dumps(outcome.record, indent=2, default=str))
    figures = "".join(_figure(path) for path in outcome.figures)
    return (
        f'<section id="{escape(outcome.name)}"><h2>{escape(outcome.title)}</h2>'
        f'<p class="muted">{meta}</p>{_status_banner(outcome)}'
        f"<h3>Claims</h3>{_claims_table([outcome], with_experiment=False)}"
        f"<h3>Config</h3><pre>{config}</pre>"
        f"{'<h3>Figures</h3>' + figures if figures else ''}</section>"
    )


def _summary_line(summary: dict[str, Any]) -> str:
    """The report's headline, from the run-wide claims summary (the same facts as claims.json)."""
    total = summary["passed"] + summary["failed"]
    if not summary["experiments"]:
        return "No experiments in this run folder yet."
    if summary["all_hold"]:
        line = f"All {total} claims hold"
    else:
        line = f"{summary['passed']} of {total} evaluated claims hold"
    for key, label in (("missing", "missing"), ("incomplete", "incomplete"), ("errors", "errors")):
        if summary[key]:
            line += f"; {label}: {', '.join(summary[key])}"
    return line + "."


def render_report(outcomes: list[Outcome], environment: dict[str, Any], run_name: str) -> str:
    """The HTML page for a run: environment, a table of all claims, one section per experiment.

    Every piece of text from results, configs or the environment is HTML-escaped.
    """
    summary_record = claims_summary(outcomes)
    ok = summary_record["all_hold"]
    summary = _summary_line(summary_record)
    generated = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    body = (
        f"<h1>natgrad reproduction report</h1>"
        f'<p class="muted">run <code>{escape(run_name)}</code> · generated {escape(generated)}</p>'
        f'<div class="banner {"pass" if ok else "fail"}">{escape(summary)}</div>'
        f"<h2>Environment</h2>{_environment_table(environment)}"
        f"<h2>All claims</h2>{_claims_table(outcomes, with_experiment=True)}"
        + "".join(_section(outcome) for outcome in outcomes)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>natgrad report: {escape(run_name)}</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def write_report(folder: RunFolder, outcomes: list[Outcome]) -> Path:
    """Render the report of ``folder`` and write it atomically to ``report.html``."""
    html = render_report(outcomes, folder.read_environment(), folder.path.name)
    return atomic_write_text(folder.report_path, html)
