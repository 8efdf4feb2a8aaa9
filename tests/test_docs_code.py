"""The ```python blocks of every documentation page run, in order, in one fresh namespace per page.

A block that must not run (a sketch with undefined names, a long training run) is marked by the line
``<!-- no-run -->`` directly above its opening fence; the marker is an HTML comment, so the site does not
show it. Blocks run in a temporary working directory, so files they write do not land in the repository.
"""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
NO_RUN = "<!-- no-run -->"
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line number, code, runs) for each ```python block of a markdown page."""
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").splitlines()
        runs = not (before and before[-1].strip() == NO_RUN)
        indent = match.group("indent")
        body = "".join(line[len(indent) :] for line in match.group("body").splitlines(keepends=True))
        blocks.append((text.count("\n", 0, match.start()) + 1, body, runs))
    return blocks


PAGES = sorted(
    p for p in DOCS.rglob("*.md") if not any(part.startswith("_") for part in p.relative_to(DOCS).parts)
)


def test_block_extraction():
    page = "text\n```python\nx = 1\n```\n<!-- no-run -->\n```python\nmodel.fit()\n```\n```bash\nls\n```\n"
    assert python_blocks(page) == [(2, "x = 1\n", True), (6, "model.fit()\n", False)]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(DOCS).as_posix() for p in PAGES])
def test_page_code_runs(page, tmp_path, monkeypatch):
    blocks = [(line, code) for line, code, runs in python_blocks(page.read_text(encoding="utf-8")) if runs]
    if not blocks:
        pytest.skip("no runnable python block")
    monkeypatch.chdir(tmp_path)
    pytest.importorskip("matplotlib").use("Agg")
    torch = pytest.importorskip("torch")
    namespace: dict = {"__name__": "__docs__"}
    with torch.random.fork_rng():  # the guides seed torch; later tests keep their own random state
        for line, code in blocks:
            try:
                exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"{page.name}, block at line {line} failed: {error!r}") from error
