"""``python -m natgrad`` and the ``natgrad`` console script.

The library needs only torch and numpy; the command line also needs the ``experiments`` extra. On an
install without it the command says which extra to install instead of failing with an import traceback.
"""

from __future__ import annotations

import sys

CLI_EXTRA = "experiments"
CLI_MODULES = frozenset({"typer", "rich", "click"})  # what the command line itself imports
EXIT_USAGE = 2


def main() -> None:
    """Run the ``natgrad`` command, or explain which extra a base install lacks (exit 2)."""
    try:
        from natgrad.cli import app
    except ModuleNotFoundError as exc:
        if exc.name not in CLI_MODULES:
            raise
        print(
            f"natgrad: the command line needs the '{CLI_EXTRA}' extra, which is not installed "
            f"(missing module: {exc.name}). Install it with:  pip install 'natgrad[{CLI_EXTRA}]'",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_USAGE) from None
    app()


if __name__ == "__main__":
    main()
