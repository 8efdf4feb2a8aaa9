"""Figures of the matrix-completion experiment, rebuilt from its stored results only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from natgrad.experiments._figures import pyplot, save_figure


def _test_error_vs_observed(results: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    counts = sorted(int(k) for k in results["gd"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for depth in sorted({d for runs in results["gd"].values() for d in runs}, key=int):
        xs = [c for c in counts if depth in results["gd"][str(c)]]
        ax.plot(
            xs, [results["gd"][str(c)][depth]["final_test_mse"] for c in xs], "o-", label=f"GD depth {depth}"
        )
    for fisher, style in (("full", "s--"), ("observed", "^:")):
        depths = sorted({d for runs in results["ngd"][fisher].values() for d in runs}, key=int)
        for depth in depths:
            xs = [c for c in counts if depth in results["ngd"][fisher].get(str(c), {})]
            ys = [results["ngd"][fisher][str(c)][depth]["final_test_mse"] for c in xs]
            ax.plot(xs, ys, style, label=f"NGD {fisher} Fisher depth {depth}")
    ax.set_yscale("log")
    ax.set_xlabel("|Ω| (observed entries)")
    ax.set_ylabel("test MSE on unobserved entries")
    ax.set_title(f"{results['size']}×{results['size']}, rank {results['rank']}")
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return path


def _singular_values(results: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    key = str(results["claim_observed"])
    runs = [("GD depth 3", results["gd"][key].get("3"))]
    for fisher in ("full", "observed"):
        deepest = max(results["ngd"][fisher].get(key, {}) or {"0": None}, key=int)
        runs.append(
            (f"NGD {fisher} Fisher depth {deepest}", results["ngd"][fisher].get(key, {}).get(deepest))
        )
    runs = [(label, run) for label, run in runs if run is not None]
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.6), squeeze=False)
    for ax, (label, run) in zip(axes[0], runs, strict=True):
        values = list(zip(*run["singular_values"], strict=True))
        for index, series in enumerate(values):
            ax.plot(run["time"], series, color=plt.cm.viridis(index / max(1, len(values) - 1)), lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("time (GD: lr·steps; NGD: Σ η)")
        ax.set_title(label, fontsize=9)
    axes[0][0].set_ylabel(f"singular values of E (|Ω| = {key})")
    save_figure(fig, path)
    return path


def _drift(results: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    key = str(results["claim_observed"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for depth, flow in sorted(results["flow"].items()):
        left.plot(
            flow["time"], [max(d, 1e-18) for d in flow["drift"]], "o-", label=f"exact NGF depth {depth}"
        )
    left.set_yscale("log")
    left.set_xlabel("t")
    left.set_ylabel("‖E_u(t) − E_u(0)‖ / ‖E_u(0)‖")
    left.set_title("exact full-Fisher flow, 6×6, imbalanced init", fontsize=9)
    left.legend(fontsize=7)
    for fisher, style in (("full", "-"), ("observed", "--")):
        for depth, run in sorted(results["ngd"][fisher].get(key, {}).items()):
            right.plot(
                run["time"],
                [max(d, 1e-18) for d in run["unobserved_rms_change"]],
                style,
                label=f"NGD {fisher} Fisher depth {depth}",
            )
    gd = results["gd"][key]
    for depth in ("2", "3"):
        if depth in gd:
            right.plot(
                gd[depth]["time"],
                [max(d, 1e-18) for d in gd[depth]["unobserved_rms_change"]],
                ":",
                label=f"GD depth {depth}",
            )
    right.set_yscale("log")
    right.set_xscale("symlog", linthresh=1e-3)
    right.set_xlim(left=0)
    right.set_xlabel("time")
    right.set_ylabel("RMS change of unobserved entries")
    right.set_title(f"discrete runs, |Ω| = {key}", fontsize=9)
    right.legend(fontsize=7)
    save_figure(fig, path)
    return path


def draw_figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the three PNGs into ``out_dir`` and return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        _test_error_vs_observed(results, out_dir / "test_error_vs_observed.png"),
        _singular_values(results, out_dir / "singular_values.png"),
        _drift(results, out_dir / "unobserved_drift.png"),
    ]
