"""Writing an experiment's matplotlib figure: one place for layout, resolution and closing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DPI = 120


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend: figures are files, never windows.

    The one place that selects the backend, for every experiment (and the benchmarks' plots).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, *, tight: bool = True) -> Path:
    """Lay out ``fig`` (unless ``tight=False``), write it as PNG at ``path`` (parents created), close it."""
    plt = pyplot()
    if tight:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
