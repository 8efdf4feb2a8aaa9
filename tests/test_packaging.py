"""Packaging habits: one version source, the typing marker, the license file."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import natgrad

ROOT = Path(__file__).resolve().parent.parent


def test_version_has_one_source():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    declared = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE).group(1)  # tomllib needs 3.11
    assert natgrad.__version__ == importlib.metadata.version("natgrad") == declared
    assert f'"{declared}"' not in (ROOT / "src" / "natgrad" / "__init__.py").read_text(encoding="utf-8")


def test_typing_marker_and_license_ship():
    assert (Path(natgrad.__file__).parent / "py.typed").is_file()
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "natgrad developers" in text
