"""Figures of the nonlinear-network experiment, rebuilt from its stored results only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from natgrad.experiments._figures import pyplot, save_figure

_STYLES = ("-", "--", ":", "-.")


def _outputs_over_time(results: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    panels = (
        ("ngd-squared", "NGD, squared loss", results["ngd_lr"]),
        ("gd-squared", "GD, squared loss", results["gd_lr"]),
        ("ngd-logistic", "NGD, logistic loss (margins)", results["ngd_lr"]),
    )
    labels = np.asarray(results["labels"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    shown = range(min(4, len(results["targets"])))
    for ax, (key, title, lr) in zip(axes, panels, strict=True):
        for style, (arch, run) in zip(_STYLES, results["runs"].items(), strict=False):
            outputs = np.asarray(run[key]["outputs"])
            if key == "ngd-logistic":
                outputs = outputs * labels
            time = lr * np.arange(outputs.shape[0])
            for i in shown:
                ax.plot(time, outputs[:, i], style, color=f"C{i}", lw=1.2, label=arch if i == 0 else None)
        if key.endswith("squared"):
            for i in shown:
                ax.axhline(results["targets"][i], color=f"C{i}", lw=0.5, alpha=0.5)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("time (lr · steps)")
        ax.legend(fontsize=7, title="architecture (line style)", title_fontsize=7)
    axes[0].set_ylabel("training outputs (4 points, colour = point)")
    save_figure(fig, path)
    return path


def _grid_predictions(results: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    size = results["grid_size"]
    grid = np.asarray(results["grid"])
    extent = (grid[:, 1].min(), grid[:, 1].max(), grid[:, 0].min(), grid[:, 0].max())
    runs = results["runs"]
    inputs = np.asarray(results["inputs"])
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.8), squeeze=False)
    values = [np.asarray(run["ngd-squared"]["grid_predictions"]).reshape(size, size) for run in runs.values()]
    low, high = min(v.min() for v in values), max(v.max() for v in values)
    for ax, (arch, value) in zip(axes[0], zip(runs, values, strict=True), strict=True):
        image = ax.imshow(value, origin="lower", extent=extent, vmin=low, vmax=high, cmap="coolwarm")
        ax.scatter(
            inputs[:, 1],
            inputs[:, 0],
            c=results["targets"],
            cmap="coolwarm",
            vmin=low,
            vmax=high,
            edgecolors="k",
            s=25,
        )
        ax.set_title(f"NGD {arch}: prediction on (x₁, x₂, 0)", fontsize=9)
        ax.set_xlabel("x₂")
        ax.set_ylabel("x₁")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    save_figure(fig, path, tight=False)
    return path


def draw_figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the two PNGs into ``out_dir`` and return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        _outputs_over_time(results, out_dir / "training_outputs.png"),
        _grid_predictions(results, out_dir / "off_training_predictions.png"),
    ]
