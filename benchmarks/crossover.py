"""Where each exact route wins: every route of ``ng.natural_gradient`` across the ratio d/r, and ``auto``'s pick.

MLPs 32-w-w-10 (tanh) on N random inputs with labels, cross-entropy and the categorical Fisher (r = 9N
weighted outputs), float32. The widths and batches span d/r from below 1 to about 100. Every route runs the
same call, ``ng.natural_gradient(..., method=route)``, and is timed as a multiple of one gradient in the same
run (median of repeats, or one call when it takes a second or more); routes whose matrices exceed the memory
budget are skipped with the engine's reason, and a route slower than 20 s is not run at larger widths. For each point the
JSON records the fastest route and the route ``auto`` picked, and the summary gives, per regime (d ≤ r and
d > r), how much slower ``auto``'s pick was than the fastest: the measurement behind ``choose_route``.

Usage:
    python benchmarks/crossover.py [--quick] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _env import time_call  # noqa: E402

import natgrad as ng  # noqa: E402
from natgrad.report import atomic_write_json, collect_environment  # noqa: E402

ROUTES = ("structured", "dual", "primal", "lstsq", "krylov")
INPUTS, CLASSES = 32, 10


def _case(width: int, batch: int, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(INPUTS, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, CLASSES)
    )
    x, y = torch.randn(batch, INPUTS), torch.randint(0, CLASSES, (batch,))

    def loss(z):
        return nn.functional.cross_entropy(z, y, reduction="sum")

    return model, x, loss


SLOW_S = 20.0  # a route slower than this at one width is not run at larger widths of the same batch


def measure(width: int, batch: int, repeats: int, budget: int, too_slow: set[str]) -> dict:
    model, x, loss = _case(width, batch)
    phi, params = ng.from_module(model, x)
    d = sum(p.numel() for p in params.values())
    row: dict = {"width": width, "N": batch, "d": d, "r": batch * (CLASSES - 1)}
    row["d_over_r"] = d / row["r"]
    grad = time_call(lambda: torch.autograd.grad(loss(model(x)), list(model.parameters())), max(5, repeats))
    row["gradient_s"] = grad["median"]
    metric = ng.metrics.Categorical()
    reference = None
    for route in ("auto", *ROUTES):

        def call(route=route):
            return ng.natural_gradient(phi, params, loss, metric, method=route, memory_budget=budget)

        if route in too_slow:
            row[route] = {"skipped": f"slower than {SLOW_S:g} s at a smaller width"}
            continue
        start = time.perf_counter()
        try:
            res = call()
        except MemoryError as error:
            row[route] = {"skipped": str(error)}
            continue
        first = time.perf_counter() - start
        # a call of a second or more is its own measurement; shorter ones get repeats after this warm-up
        timing = {"median": first} if first >= 1.0 else time_call(call, repeats, warmup=0)
        if first > SLOW_S:
            too_slow.add(route)
        v = ng.flatten_params(res.direction).double()
        if route == "dual":
            reference = v
        row[route] = {
            "method": res.method,
            "seconds": timing["median"],
            "gradients": timing["median"] / grad["median"],
            "rank": res.rank,
            "direction": v,
        }
    for route in ("auto", *ROUTES):  # agreement with the dual route (the float32 routes differ by rounding)
        entry = row[route]
        if "direction" in entry:
            v = entry.pop("direction")
            if reference is not None:
                entry["relative_gap_to_dual"] = float((v - reference).norm() / reference.norm())
    timed = {k: row[k]["seconds"] for k in ROUTES if "seconds" in row[k]}
    row["fastest"] = min(timed, key=timed.get)
    row["auto_pick"] = row["auto"]["method"]
    row["auto_over_fastest"] = timed[row["auto_pick"]] / timed[row["fastest"]]
    return row


def summary(rows: list[dict]) -> dict:
    out = {}
    for regime, keep in (("d<=r", lambda r: r["d"] <= r["r"]), ("d>r", lambda r: r["d"] > r["r"])):
        chosen = [r for r in rows if keep(r)]
        if chosen:
            out[regime] = {
                "points": len(chosen),
                "auto_is_fastest": sum(r["auto_pick"] == r["fastest"] for r in chosen),
                "worst_auto_over_fastest": max(r["auto_over_fastest"] for r in chosen),
                "fastest_routes": sorted({r["fastest"] for r in chosen}),
            }
    return out


def figure(rows: list[dict], path: Path) -> None:
    from natgrad.experiments import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for route, marker in zip(ROUTES, "osd^v", strict=True):
        points = sorted((r["d_over_r"], r[route]["gradients"]) for r in rows if "gradients" in r[route])
        if points:
            ax.plot(*zip(*points, strict=True), marker, label=route, alpha=0.8)
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.set(xscale="log", yscale="log", xlabel="d / r", ylabel="time / one gradient")
    ax.set_title("natural_gradient routes, MLP 32-w-w-10, categorical Fisher, float32")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer points and repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-budget-gib", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "crossover.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    widths = [4, 16, 64, 256] if args.quick else [4, 8, 16, 32, 64, 128, 256]
    batches = [16, 64] if args.quick else [16, 64, 256]
    repeats = 2 if args.quick else 3
    budget = int(args.memory_budget_gib * 2**30)
    measure(4, 4, 1, budget, set())  # warm-up: the first calls in a process pay one-off initialisation
    rows = []
    for batch in batches:
        too_slow: set[str] = set()
        for width in widths:
            row = measure(width, batch, repeats, budget, too_slow)
            rows.append(row)
            times = {k: round(row[k]["gradients"], 1) for k in ("auto", *ROUTES) if "gradients" in row[k]}
            print(
                f"N={batch:4d} w={width:4d} d/r={row['d_over_r']:8.2f} auto->{row['auto_pick']:10s} {times}"
            )
    result = {"environment": collect_environment(), "rows": rows, "summary": summary(rows)}
    atomic_write_json(args.out, result)
    figure(rows, args.out.with_suffix(".png"))
    print(result["summary"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
