"""The import direction of docs/design.md, checked on the source of every module (function-level imports too).

Layers: the *core* (everything not listed below) imports the standard library, torch and numpy only, and
other core modules. The *library* layer (diagnostics, flows, optim, ...) uses the core and itself. The
*application* layer (experiments, cli, report) uses the other two through public names only. A private module
(a dotted component starting with ``_``) is imported only from inside the package that contains it, except
that the core's private modules also serve the library layer (the core counts as one package). Third-party
imports outside the core must be declared dependencies of the project.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
LIBRARY = ("diagnostics", "flows", "optim", "linear", "matrix", "distributed", "pde")
APPLICATION = ("experiments", "cli", "report", "__main__")
CORE_THIRD_PARTY = {"torch", "numpy"}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # dotted module name (or top-level package of a third-party import)
    line: int


def layer(module: str) -> str:
    """'core', 'library' or 'application' for a module ``natgrad...``."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top in APPLICATION:
        return "application"
    if top in LIBRARY:
        return "library"
    return "core"


def _is_private(component: str) -> bool:
    return component.startswith("_") and not (component.startswith("__") and component.endswith("__"))


def module_names(src: Path = SRC) -> dict[str, Path]:
    """``{dotted name: file}`` of every module below ``src/natgrad``."""
    names = {}
    for path in sorted((src / "natgrad").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(module: str, source: str, known: set[str], is_package: bool) -> list[Import]:
    """Every import statement of ``source`` (the module ``module``), resolved to dotted targets."""
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.append(Import(module, submodule if submodule in known else target, node.lineno))
    return found


def declared_distributions(pyproject: Path = ROOT / "pyproject.toml") -> set[str]:
    """Normalised names of the project's dependencies and optional dependencies."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {_normalise(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in requirements}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def violations(found: list[Import], declared: set[str]) -> list[str]:
    """The imports that break the rules in the module docstring, one readable line each."""
    distributions = importlib.metadata.packages_distributions()
    problems = []
    for imp in found:
        where = f"{imp.importer} (line {imp.line}) imports {imp.target}"
        source_layer = layer(imp.importer)
        if not imp.target.startswith("natgrad"):
            top = imp.target.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if source_layer == "core" and top not in CORE_THIRD_PARTY:
                problems.append(f"{where}: the core imports only torch and numpy")
            elif (
                source_layer != "core"
                and not {_normalise(d) for d in distributions.get(top, [top])} & declared
            ):
                problems.append(f"{where}: {top} is not a declared dependency in pyproject.toml")
            continue
        target_layer = layer(imp.target)
        if source_layer == "core" and target_layer != "core":
            problems.append(f"{where}: the core must not import the {target_layer} layer")
        if source_layer == "library" and target_layer == "application":
            problems.append(f"{where}: diagnostics/flows/optim/... must not import the application layer")
        parts = imp.target.split(".")
        private_at = next((i for i, part in enumerate(parts) if _is_private(part)), None)
        if private_at is None:
            continue
        owner = ".".join(parts[:private_at])
        core_internal = target_layer == "core" and source_layer in ("core", "library")
        inside_owner = owner != "natgrad" and (imp.importer == owner or imp.importer.startswith(owner + "."))
        if not (core_internal or inside_owner):
            problems.append(
                f"{where}: a private module is imported only inside {owner}; use its public API instead"
            )
    return list(dict.fromkeys(problems))


def test_the_source_follows_the_documented_import_direction():
    names = module_names()
    known = set(names)
    found = [
        imp
        for module, path in names.items()
        for imp in imports_of(module, path.read_text(encoding="utf-8"), known, path.name == "__init__.py")
    ]
    assert len(found) > 100  # the walk saw the package
    problems = violations(found, declared_distributions())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("importer", "source", "message"),
    [
        ("natgrad.reference", "import scipy.linalg", "the core imports only torch and numpy"),
        ("natgrad.models._module", "from natgrad.optim import NGD", "must not import the library layer"),
        ("natgrad.linalg._inverses", "def f():\n    import natgrad.cli", "must not import the application"),
        ("natgrad.optim.ngd", "from natgrad.report import RunFolder", "must not import the application"),
        (
            "natgrad.cli",
            "from natgrad.experiments._base import Claim",
            "imported only inside natgrad.experiments",
        ),
        ("natgrad.report.html", "from natgrad.experiments import _registry", "imported only inside"),
        ("natgrad.experiments.x", "from natgrad._tree import leaves", "imported only inside natgrad;"),
        (
            "natgrad.report.html",
            "from natgrad.metrics._base import psd_factor",
            "only inside natgrad.metrics",
        ),
        (
            "natgrad.optim.ngd",
            "from natgrad.diagnostics._dense import flat",
            "only inside natgrad.diagnostics",
        ),
        ("natgrad.experiments.x", "import yaml", "yaml is not a declared dependency"),
    ],
)
def test_each_rule_catches_its_violation(importer, source, message):
    known = set(module_names())
    problems = violations(imports_of(importer, source, known, is_package=False), declared_distributions())
    assert len(problems) == 1 and message in problems[0], problems


def test_allowed_imports_are_not_flagged():
    known = set(module_names())
    allowed = {
        "natgrad.natural_gradient": "from natgrad._routes._dense import solve_dense\nimport torch",
        "natgrad.experiments.digits_classification": "from natgrad.experiments._base import Claim\nimport sklearn",
        "natgrad.cli": "import typer\nfrom natgrad.report.progress import make_progress",
        "natgrad.report.html": "from natgrad.report._atomic import atomic_write_text",
        "natgrad.diagnostics.rank": "from natgrad.diagnostics._dense import dense_jacobian\nimport natgrad",
        "natgrad.optim.ngd": "from natgrad._loss import output_gradient",
    }
    for importer, source in allowed.items():
        found = imports_of(importer, source, known, is_package=False)
        assert violations(found, declared_distributions()) == [], importer
