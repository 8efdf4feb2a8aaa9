"""The public API of natgrad, read from the packages themselves.

A public module is ``natgrad``, a module listed in ``natgrad.__all__``, or a subpackage of ``natgrad`` whose
name does not start with an underscore, except the command line and its machinery (documented on the
reproduction page). Its public names are its ``__all__`` (or, without one, the classes and functions it
defines whose names do not start with an underscore). The API reference pages and the docstring test both
come from here, so a new subpackage or a new name in an ``__all__`` needs no edit of the docs.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ROOT = "natgrad"
# The `natgrad` command and what only it uses: documented on the reproduction page, not as a Python API.
COMMAND_LINE = frozenset({"cli", "experiments", "report"})


@dataclass(frozen=True)
class Symbol:
    """One public name: where it is documented (``module.name``) and the object it refers to."""

    module: str
    name: str
    obj: object

    @property
    def path(self) -> str:
        return f"{self.module}.{self.name}"


def public_modules() -> list[str]:
    """Dotted names of the public modules: ``natgrad`` first, then the others sorted."""
    root = importlib.import_module(ROOT)
    names = {
        f"{ROOT}.{name}"
        for name in getattr(root, "__all__", [])
        if inspect.ismodule(getattr(root, name, None))
    }
    for info in pkgutil.iter_modules(root.__path__):
        if info.ispkg and not info.name.startswith("_") and info.name not in COMMAND_LINE:
            names.add(f"{ROOT}.{info.name}")
    return [ROOT, *sorted(names)]


def public_names(module: ModuleType) -> list[str]:
    """``module.__all__`` without submodules (they get their own page), or its own classes and functions."""
    if hasattr(module, "__all__"):
        return [name for name in module.__all__ if not inspect.ismodule(getattr(module, name))]
    return sorted(
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module.__name__
    )


def public_symbols(module_name: str) -> list[Symbol]:
    """The public names of one module with their objects."""
    module = importlib.import_module(module_name)
    return [Symbol(module_name, name, getattr(module, name)) for name in public_names(module)]


def public_methods(cls: type) -> dict[str, object]:
    """Methods and properties that a natgrad class defines or inherits from natgrad classes (not torch's)."""
    members: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith(ROOT):
            continue
        for name, member in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(member, staticmethod | classmethod):
                member = member.__func__
            if inspect.isfunction(member) or isinstance(member, property):
                members[name] = member
    return members


def _attribute_docstrings(path: Path) -> dict[str, str]:
    """Module-level ``NAME = ...`` assignments followed by a string literal (the attribute docstring)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node, following in zip(tree.body, tree.body[1:], strict=False):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if not isinstance(node, ast.Assign | ast.AnnAssign):
            continue
        if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            if isinstance(following.value.value, str):
                for target in targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = following.value.value
    return found


def constant_docstring(module_name: str, name: str) -> str | None:
    """The attribute docstring of a module-level constant, searched in the module's package files."""
    module = importlib.import_module(module_name)
    source = Path(inspect.getfile(module))
    files = sorted(source.parent.rglob("*.py")) if source.name == "__init__.py" else [source]
    for path in files:
        doc = _attribute_docstrings(path).get(name)
        if doc:
            return doc
    return None


def docstring(symbol: Symbol) -> str | None:
    """The docstring that the reference page shows for ``symbol`` (None when there is none)."""
    obj = symbol.obj
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj):
        return inspect.getdoc(obj)
    if callable(obj) and getattr(obj, "__doc__", None) and type(obj).__doc__ != obj.__doc__:
        return inspect.getdoc(obj)
    return constant_docstring(symbol.module, symbol.name)


def undocumented() -> list[str]:
    """Every public name and public method of a public class without a docstring, as dotted paths."""
    missing: list[str] = []
    seen: set[int] = set()
    for module_name in public_modules():
        for symbol in public_symbols(module_name):
            if not (docstring(symbol) or "").strip():
                missing.append(symbol.path)
            if inspect.isclass(symbol.obj) and id(symbol.obj) not in seen:
                seen.add(id(symbol.obj))
                for method_name, member in public_methods(symbol.obj).items():
                    if not (inspect.getdoc(member) or "").strip():
                        missing.append(f"{symbol.path}.{method_name}")
    return missing
