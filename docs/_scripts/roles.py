"""Sphinx roles (``:func:`x```) as Markdown inline code: natgrad's docstrings use a few, the site is Markdown."""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


def as_code(text: str) -> str:
    """``text`` with every role replaced by inline code; a leading ``~`` keeps the last component, as in Sphinx."""
    return ROLE.sub(_code, text)
