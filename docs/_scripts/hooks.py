"""MkDocs hooks: API reference pages from each package's ``__all__``, optional pages, benchmark tables.

- ``on_config``: nav entries whose page does not exist are dropped (pages that other work adds later, such as
  ``pde.md``), and the "API reference" nav section is filled with one page per public module.
- ``on_files``: the API pages are generated in memory (never written to ``docs/``), one ``:::`` block per
  public name so mkdocstrings renders its docstring.
- ``on_page_markdown``: ``<!-- benchmark-tables -->`` becomes the tables built from
  ``benchmarks/results/*.json``, ``<!-- crossover-summary -->`` the crossover measurement in words, ``<!-- api-index -->`` the list of
  public modules.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import benchmark_tables  # noqa: E402
import public_api  # noqa: E402
from roles import as_code  # noqa: E402

API_SECTION = "API reference"
REPO = HERE.parent.parent


def _identifier(symbol: public_api.Symbol) -> str:
    """The path mkdocstrings renders: the public one, or the defining one where a submodule shadows it
    (``natgrad.natural_gradient`` is both a module and the function it exports)."""
    obj = symbol.obj
    shadowed = symbol.path in sys.modules and hasattr(obj, "__qualname__")
    return f"{obj.__module__}.{obj.__qualname__}" if shadowed else symbol.path


def api_page(module_name: str) -> str:
    """The markdown of one module's reference page: a summary table, then one ``:::`` block per name."""
    import importlib

    module = importlib.import_module(module_name)
    lines = [
        f"# `{module_name}`",
        "",
        as_code((module.__doc__ or "").strip()),
        "",
    ]
    lines += [
        "| name | summary |",
        "|---|---|",
    ]
    symbols = public_api.public_symbols(module_name)
    for symbol in symbols:
        lines.append(
            f"| [`{symbol.name}`][{_identifier(symbol)}] | {_summary(public_api.docstring(symbol))} |"
        )
    lines.append("")
    for symbol in symbols:
        lines += [f"::: {_identifier(symbol)}", ""]
    return "\n".join(lines)


def _summary(text: str | None) -> str:
    """The first paragraph of a docstring on one line, roles as inline code, safe inside a table cell."""
    first = (text or "").strip().split("\n\n")[0].replace("\n", " ")
    return as_code(first).replace("|", "\\|")


def _api_uri(module_name: str) -> str:
    return f"api/{module_name}.md"


def drop_missing(nav: list, docs_dir: Path) -> list:
    """The nav without entries whose page does not exist, with the API section listing every public module."""
    kept = []
    for entry in nav:
        if isinstance(entry, str):
            if entry.startswith(("http://", "https://")) or (docs_dir / entry).exists():
                kept.append(entry)
            continue
        ((title, value),) = entry.items()
        if title == API_SECTION:
            kept.append({title: [{m: _api_uri(m)} for m in public_api.public_modules()]})
        elif isinstance(value, list):
            kept.append({title: drop_missing(value, docs_dir)})
        elif value.startswith(("http://", "https://")) or (docs_dir / value).exists():
            kept.append(entry)
    return kept


def on_config(config):
    config["nav"] = drop_missing(config["nav"], Path(config["docs_dir"]))
    return config


def on_files(files, config):
    from mkdocs.structure.files import File  # here, so that the tests import this module without mkdocs

    for module_name in public_api.public_modules():
        files.append(File.generated(config, _api_uri(module_name), content=api_page(module_name)))
    return files


def on_page_markdown(markdown, page, config, files):
    if "<!-- benchmark-tables -->" in markdown:
        markdown = markdown.replace(
            "<!-- benchmark-tables -->", benchmark_tables.render(REPO / "benchmarks" / "results")
        )
    if "<!-- crossover-summary -->" in markdown:
        summary = benchmark_tables.crossover_summary(REPO / "benchmarks" / "results")
        markdown = markdown.replace("<!-- crossover-summary -->", summary)
    if "<!-- api-index -->" in markdown:
        rows = []
        for name in public_api.public_modules():
            import importlib

            doc = _summary(importlib.import_module(name).__doc__)
            rows.append(f"| [`{name}`]({_api_uri(name)}) | {doc} |")
        markdown = markdown.replace(
            "<!-- api-index -->", "| module | what it holds |\n|---|---|\n" + "\n".join(rows)
        )
    return markdown
