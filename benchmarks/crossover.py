"""Where each exact route wins: every route ``auto`` can pick, across batch size r and width d, and ``auto``'s pick.

Models: MLPs 32-w-w-10 (tanh) and a small CNN (two 3×3 convolutions on 8×8 images, linear read-out), N random
inputs with labels, cross-entropy and the categorical Fisher (r = 9N weighted outputs), float32. Every route
runs the same call, ``ng.natural_gradient(..., method=route)``: primal (eigh of G, d × d), dual (K from a dense A),
structured (K assembled layer by layer, solved in float64), structured-krylov (matrix-free, preconditioned) and
krylov (LSQR on products with J). Each is timed as CPU time of this process (``time.process_time``) with torch
pinned to one thread, as a multiple of one gradient of the same batch timed the same way: wall-clock time on a
shared machine measures the neighbours. Peak memory is the growth of the resident set during the first call
(Linux; glibc's reuse of freed memory can hide part of it, see ``--exact-peak-memory``), next to what the
engine's budget check counts. Primal is not run where d > 4r, nor dual and structured where r > 4d (the larger
Gram matrix's cubic cost against the smaller's). A route over the memory budget is skipped with the engine's
reason; one slower than ``--slow-s`` CPU seconds is not run at larger batches of the same model and width.

For each point the JSON records the fastest route and ``auto``'s pick (the route it chooses, without running it
again); the summary says how often the pick was the fastest and how much slower it was otherwise, per regime
(d ≤ r, d > r), and ``structured_krylov_over_structured`` the ratio of those two routes wherever both ran: the measurement behind
``choose_route``. ``--repick FILE`` recomputes the picks and the summary of an earlier run with the current
rule (no timing).

Usage:
    python benchmarks/crossover.py [--quick] [--slow-s 30] [--out FILE] [--exact-peak-memory]
    python benchmarks/crossover.py --repick benchmarks/results/crossover.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _env import cpu_time_call, peak_memory, reexec_with_fixed_mmap_threshold  # noqa: E402

import natgrad as ng  # noqa: E402
from natgrad._factorize import prepare  # noqa: E402
from natgrad.natural_gradient import DEFAULT_MEMORY_BUDGET, route_memory  # noqa: E402
from natgrad.report import atomic_write_json, collect_environment  # noqa: E402

ROUTES = ("primal", "dual", "structured", "structured-krylov", "krylov")
INPUTS, CLASSES, IMAGE = 32, 10, 8
SHORT_S = 0.5  # a call shorter than this gets repeats after the first (which also warms up)
# Beyond this ratio the larger Gram matrix only burns CPU (d³ against r³): primal is not run where d > 4r, nor
# the routes that decompose K (dual, structured) where r > 4d.
LOPSIDED = 4
GRADIENT_S = 0.2  # the gradient is repeated until about this much CPU time has been measured


def mlp(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(INPUTS, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, CLASSES)
    )


def cnn(channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(channels * IMAGE * IMAGE, CLASSES),
    )


MODELS: dict[str, tuple[Callable[[int], nn.Module], tuple[int, ...]]] = {
    "mlp": (mlp, (INPUTS,)),
    "cnn": (cnn, (1, IMAGE, IMAGE)),
}


def build(model: str, width: int, batch: int, seed: int = 0):
    make, shape = MODELS[model]
    torch.manual_seed(seed)
    module = make(width)
    x, y = torch.randn(batch, *shape), torch.randint(0, CLASSES, (batch,))

    def loss(z):
        return nn.functional.cross_entropy(z, y, reduction="sum")

    phi, params = ng.from_module(module, x)
    return module, x, loss, phi, params


def auto_pick(phi, params, loss, budget: int) -> str:
    """The route ``auto`` chooses for this problem under ``budget`` (decided before anything is factorised)."""
    fac = prepare(
        "crossover", phi, params, ng.metrics.Categorical(), None, "auto", budget, None, None, eager=False
    )
    return fac.method


def gradient_seconds(module: nn.Module, x, loss) -> float:
    def grad():
        return torch.autograd.grad(loss(module(x)), list(module.parameters()))

    first = cpu_time_call(grad, 1)["median"]
    return cpu_time_call(grad, max(5, min(200, int(GRADIENT_S / max(first, 1e-6)))), warmup=0)["median"]


def measure(
    model: str, width: int, batch: int, repeats: int, budget: int, too_slow: dict[str, int], slow_s: float
) -> dict:
    module, x, loss, phi, params = build(model, width, batch)
    d = sum(p.numel() for p in params.values())
    row: dict = {"model": model, "width": width, "N": batch, "d": d, "r": batch * (CLASSES - 1)}
    row["d_over_r"] = d / row["r"]
    row["gradient_s"] = gradient_seconds(module, x, loss)
    metric = ng.metrics.Categorical()
    directions = {}
    for route in ROUTES:
        lopsided = _lopsided(route, row["r"], d)
        if lopsided is not None:
            row[route] = {"skipped": lopsided}
            continue
        if route in too_slow:
            row[route] = {"skipped": f"slower than {slow_s:g} CPU s at N={too_slow[route]}"}
            continue

        def call(route=route):
            return ng.natural_gradient(phi, params, loss, metric, method=route, memory_budget=budget)

        try:
            (res, seconds), peak = peak_memory(lambda call=call: _timed(call))
        except MemoryError as error:
            row[route] = {"skipped": str(error)}
            continue
        except ng.ConvergenceError as error:  # no certified answer: a failure, not a time
            row[route] = {"failed": str(error)}
            continue
        if seconds < SHORT_S:
            seconds = cpu_time_call(call, repeats, warmup=0)["median"]
        elif seconds > slow_s:
            too_slow[route] = batch
        directions[route] = ng.flatten_params(res.direction).double()
        row[route] = {
            "method": res.method,
            "cpu_s": seconds,
            "gradients": seconds / row["gradient_s"],
            "peak_mib": peak,
            "budget_mib": route_memory(route, row["r"], d, 4) / 2**20,
            "rank": res.rank,
            **_solve_details(res.info),
        }
    reference = next((directions[k] for k in ("structured", "dual", "primal") if k in directions), None)
    for route, v in directions.items():  # agreement with a dense answer (float32 routes differ by rounding)
        if reference is not None:
            row[route]["relative_gap_to_dense"] = float((v - reference).norm() / reference.norm())
    row["auto_pick"] = auto_pick(phi, params, loss, budget)
    row["auto_pick_default_budget"] = auto_pick(phi, params, loss, DEFAULT_MEMORY_BUDGET)
    return _rank_routes(row)


def _lopsided(route: str, r: int, d: int) -> str | None:
    if route == "primal" and d > LOPSIDED * r:
        return f"d > {LOPSIDED}·r: eigh of G (d × d) against a K (r × r) {d // r}× smaller"
    if route in ("dual", "structured") and r > LOPSIDED * d:
        return f"r > {LOPSIDED}·d: K (r × r) against a G (d × d) {r // d}× smaller"
    return None


def _timed(call: Callable[[], object]) -> tuple[object, float]:
    start = time.process_time()
    res = call()
    return res, time.process_time() - start


def _solve_details(info) -> dict:
    details = {k: info[k] for k in ("kernel_solve", "spectral_fallback") if k in info}
    certificate = info.get("certificate")
    if certificate is not None:
        details |= {
            k: certificate[k]
            for k in ("products", "preconditioner_rank", "complete_factorisation", "residual")
        }
    if "iterations" in info:
        details["iterations"] = info["iterations"]
    return details


def _rank_routes(row: dict) -> dict:
    timed = {k: row[k]["cpu_s"] for k in ROUTES if "cpu_s" in row[k]}
    row["fastest"] = min(timed, key=timed.__getitem__)
    pick = row["auto_pick"]
    row["auto_over_fastest"] = timed[pick] / timed[row["fastest"]] if pick in timed else math.nan
    return row


def summary(rows: list[dict]) -> dict:
    out: dict = {}
    for regime, keep in (("d<=r", lambda r: r["d"] <= r["r"]), ("d>r", lambda r: r["d"] > r["r"])):
        chosen = [r for r in rows if keep(r)]
        if chosen:
            out[regime] = {
                "points": len(chosen),
                "auto_is_fastest": sum(r["auto_pick"] == r["fastest"] for r in chosen),
                "worst_auto_over_fastest": max(
                    (r["auto_over_fastest"] for r in chosen if math.isfinite(r["auto_over_fastest"])),
                    default=math.nan,
                ),
                "fastest_routes": sorted({r["fastest"] for r in chosen}),
            }
    return out


def krylov_over_dense(rows: list[dict]) -> list[dict]:
    """structured-krylov's CPU time over the dense structured route's, at every point where both ran."""
    both = [r for r in rows if "cpu_s" in r["structured"] and "cpu_s" in r["structured-krylov"]]
    return [
        {
            "model": r["model"],
            "width": r["width"],
            "r": r["r"],
            "d": r["d"],
            "ratio": r["structured-krylov"]["cpu_s"] / r["structured"]["cpu_s"],
        }
        for r in both
    ]


def repick(path: Path) -> None:
    """Recompute ``auto``'s picks and the summary of an earlier run with the current rule."""
    result = json.loads(path.read_text(encoding="utf-8"))
    budget = int(result["memory_budget"])
    for row in result["rows"]:
        _, _, loss, phi, params = build(row["model"], row["width"], row["N"])
        row["auto_pick"] = auto_pick(phi, params, loss, budget)
        row["auto_pick_default_budget"] = auto_pick(phi, params, loss, DEFAULT_MEMORY_BUDGET)
        _rank_routes(row)
    result["summary"] = summary(result["rows"])
    result["structured_krylov_over_structured"] = krylov_over_dense(result["rows"])
    atomic_write_json(path, result)
    print(json.dumps(result["summary"], indent=1))


def figure(rows: list[dict], path: Path) -> None:
    from natgrad.experiments import pyplot

    plt = pyplot()
    panels = sorted({(r["model"], r["width"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), sharey=True, squeeze=False)
    for ax, (model, width) in zip(axes[0], panels, strict=True):
        sub = sorted((r for r in rows if (r["model"], r["width"]) == (model, width)), key=lambda r: r["r"])
        for index, (route, marker) in enumerate(zip(ROUTES, "osd^v", strict=True)):
            points = [(r["r"], r[route]["gradients"]) for r in sub if "gradients" in r[route]]
            if points:  # a fixed colour per route: panels miss different routes
                ax.loglog(
                    *zip(*points, strict=True), "-" + marker, ms=4, label=route, alpha=0.85, color=f"C{index}"
                )
        picks = [(r["r"], r[r["auto_pick"]]["gradients"]) for r in sub if "gradients" in r[r["auto_pick"]]]
        if picks:
            ax.loglog(*zip(*picks, strict=True), "k*", ms=9, ls="none", label="auto's pick")
        ax.set(xlabel="r (weighted outputs)", title=f"{model} width {width} (d = {sub[0]['d']})")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())  # decades only: minor labels collide
        ax.title.set_fontsize(9)
    axes[0][0].set_ylabel("CPU time / one gradient")
    handles = {
        label: handle for ax in axes[0] for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)
    }
    axes[0][-1].legend(handles.values(), handles.keys(), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grid(quick: bool) -> list[tuple[str, int, tuple[int, ...]]]:
    """(model, width, batches): MLPs over widths × batches, and one CNN."""
    if quick:
        return [("mlp", 4, (16, 64)), ("mlp", 64, (16, 64, 256)), ("cnn", 4, (16, 64))]
    mlps = [("mlp", width, (16, 64, 256, 512)) for width in (4, 16, 64, 256)]
    return [*mlps, ("cnn", 4, (16, 64, 256)), ("cnn", 16, (16, 64, 256))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer points and repeats")
    parser.add_argument("--slow-s", type=float, default=30.0, help="CPU seconds after which a route stops")
    parser.add_argument("--memory-budget-gib", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "crossover.json")
    parser.add_argument("--repick", type=Path, help="recompute auto's picks of an earlier run, no timing")
    parser.add_argument(
        "--exact-peak-memory",
        action="store_true",
        help="restart with glibc's mmap threshold fixed (exact peaks; page faults then slow every route)",
    )
    args = parser.parse_args()
    if args.repick is not None:
        repick(args.repick)
        return
    if args.exact_peak_memory:
        reexec_with_fixed_mmap_threshold()
    torch.set_num_threads(1)
    repeats = 2 if args.quick else 3
    budget = int(args.memory_budget_gib * 2**30)
    measure(
        "mlp", 4, 4, 1, budget, {}, args.slow_s
    )  # the first calls in a process pay one-off initialisation
    rows = []
    for model, width, batches in grid(args.quick):
        too_slow: dict[str, int] = {}  # a route too slow at one batch is not run at larger ones
        for batch in batches:
            row = measure(model, width, batch, repeats, budget, too_slow, args.slow_s)
            rows.append(row)
            times = {k: round(row[k]["gradients"], 1) for k in ROUTES if "gradients" in row[k]}
            _write(args.out, budget, rows, final=False)  # a partial result survives an interrupted sweep
            print(
                f"{model} w={width:4d} N={batch:4d} r={row['r']:5d} d={row['d']:6d} "
                f"auto->{row['auto_pick']:17s} fastest {row['fastest']:17s} {times}",
                flush=True,
            )
    result = _write(args.out, budget, rows, final=True)
    figure(rows, args.out.with_suffix(".png"))
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {args.out}")


def _write(path: Path, budget: int, rows: list[dict], final: bool) -> dict:
    result = {
        "environment": collect_environment(),
        "memory_budget": budget,
        "timer": "time.process_time, torch.set_num_threads(1)",
        "complete": final,
        "rows": rows,
        "summary": summary(rows),
        "structured_krylov_over_structured": krylov_over_dense(rows),
    }
    atomic_write_json(path, result)
    return result


if __name__ == "__main__":
    main()
