"""Griffe extension for mkdocstrings: Sphinx roles in docstrings are shown as inline code (see roles.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from griffe import Extension, Object

sys.path.insert(0, str(Path(__file__).resolve().parent))
from roles import as_code  # noqa: E402


class SphinxRoles(Extension):
    """Rewrites every role in every loaded docstring."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = as_code(obj.docstring.value)
