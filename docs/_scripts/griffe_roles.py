"""Griffe extension: Sphinx roles in docstrings (``:func:`x```) are shown as inline code.

natgrad's docstrings use reStructuredText roles in a few places; mkdocstrings renders Markdown, where a role
would print literally. A leading ``~`` keeps only the last component, as in Sphinx.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


class SphinxRoles(Extension):
    """Rewrites every role in every loaded docstring."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_code, obj.docstring.value)
