"""The documentation tooling in docs/_scripts: nav, API pages, benchmark tables, claim table (no mkdocs needed)."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "docs" / "_scripts"


def load(name):
    spec = importlib.util.spec_from_file_location(f"natgrad_docs_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hooks():
    return load("hooks")


def test_nav_drops_missing_pages_and_lists_every_module(hooks, tmp_path):
    (tmp_path / "here.md").write_text("# here\n")
    nav = [
        {"Home": "here.md"},
        {"Guides": [{"Present": "here.md"}, {"Not yet": "later.md"}, "gone.md"]},
        {"Elsewhere": "https://example.org/"},
        {"API reference": []},
    ]
    kept = hooks.drop_missing(nav, tmp_path)
    assert kept[:3] == [
        {"Home": "here.md"},
        {"Guides": [{"Present": "here.md"}]},
        {"Elsewhere": "https://example.org/"},
    ]
    api = kept[3]["API reference"]
    assert [next(iter(entry)) for entry in api] == hooks.public_api.public_modules()


def test_api_page_has_one_block_per_public_name(hooks):
    page = hooks.api_page("natgrad.metrics")
    import natgrad.metrics

    blocks = [line.removeprefix("::: ") for line in page.splitlines() if line.startswith("::: ")]
    assert blocks == [f"natgrad.metrics.{name}" for name in natgrad.metrics.__all__]
    assert ":func:" not in page and ":class:" not in page


def test_api_page_points_a_shadowed_name_at_its_definition(hooks):
    """``natgrad.natural_gradient`` is a module and the function it exports: the page renders the function."""
    blocks = [line for line in hooks.api_page("natgrad").splitlines() if line.startswith("::: ")]
    assert "::: natgrad.natural_gradient.natural_gradient" in blocks
    assert "::: natgrad.natural_gradient" not in blocks


def test_roles_become_inline_code():
    roles = load("roles")
    assert roles.as_code("see :func:`~natgrad.from_module` and :class:`Trajectory`") == (
        "see `from_module` and `Trajectory`"
    )


def test_benchmark_tables_cover_every_results_file():
    tables = load("benchmark_tables")
    results = ROOT / "benchmarks" / "results"
    text = tables.render(results)
    for path in results.glob("*.json"):
        assert f"### `{path.name}`" in text
    assert text.count("*Environment:*") == len(list(results.glob("*.json")))
    row = {
        "N": 4,
        "dual": {"seconds": 2.0, "gradients": 7.5},
        "primal": {"skipped": "too big"},
        "times": [1, 2],
    }
    assert tables.flatten(row) == {"N": 4, "dual": 7.5, "primal": "skipped"}


def test_claims_table_of_a_run_folder(tmp_path):
    claims = load("claims_table")
    claim = {
        "experiment": "toy",
        "id": "c1",
        "statement": "a | b",
        "value": 1e-12,
        "relation": "<=",
        "threshold": 1e-10,
    }
    (tmp_path / "claims.json").write_text(
        json.dumps(
            {
                "passed": 1,
                "failed": 1,
                "errors": [],
                "claims": [{**claim, "holds": True}, {**claim, "id": "c2", "holds": False}],
            }
        )
    )
    (tmp_path / "environment.json").write_text(
        json.dumps({"git_commit": "abc+dirty", "torch": "2.13", "cpu_count": 2})
    )
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "results.json").write_text(
        json.dumps({"paper": "depth", "title": "Toy", "elapsed_s": 1.25})
    )
    text = claims.render(tmp_path, "natgrad reproduce toy --quick")
    assert "**1 claims hold, 1 fail**" in text and "with uncommitted changes" in text
    assert "**`toy`** (depth, 1.2 s): Toy" in text
    assert "| `c1` | a \\| b | 1e-12 | <= 1e-10 | ✓ |" in text and "| `c2` |" in text and "✗" in text


LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+\.) ")


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_lists_start_after_a_blank_line(page):
    """Python-Markdown joins a list that directly follows a paragraph line into that paragraph."""
    lines, fenced, joined = page.read_text(encoding="utf-8").splitlines(), False, []
    for number, (previous, line) in enumerate(zip(lines, lines[1:], strict=False), start=2):
        fenced ^= previous.lstrip().startswith("```")
        if not fenced and LIST_ITEM.match(line) and previous.strip() and not LIST_ITEM.match(previous):
            if not previous.startswith((" ", "\t")):
                joined.append(f"line {number}: {line.strip()[:50]}")
    assert not joined, "add a blank line before these lists:\n" + "\n".join(joined)


def test_site_crawl_reports_broken_links_anchors_and_images(tmp_path):
    check = load("check_site")
    (tmp_path / "index.html").write_text(
        '<h1 id="top">x</h1><a href="page.html#top">ok</a><a href="page.html#nope">bad anchor</a>'
        '<a href="missing.html">missing</a><img src="figure.png"><img src="gone.png">'
        '<a href="https://example.org/">external, not checked</a>'
    )
    (tmp_path / "page.html").write_text('<p id="top">page</p><a href="index.html#top">back</a>')
    (tmp_path / "figure.png").write_bytes(b"\x89PNG")
    server, root = check._serve(tmp_path)
    try:
        pages, problems = check.crawl(root)
    finally:
        server.shutdown()
    assert pages == [root, root + "page.html"]
    assert sorted(problems) == [
        f"{root}: image gone.png does not load",
        f"{root}: link page.html#nope points at a missing anchor",
        f"{root}: link to {root}missing.html does not resolve (HTTP 404)",
    ]
