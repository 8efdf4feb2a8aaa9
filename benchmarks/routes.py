"""Cost of each natural-gradient route on a tanh MLP classifier, as a multiple of one gradient computation.

For a tanh MLP (784-256-256-10, d = 269,322 parameters) on a batch of N inputs with the categorical Fisher
and cross-entropy (n = r = 10·N weighted outputs), it times ``natgrad.natural_gradient`` with each
``method`` and divides by the time of one gradient ∇ξ L(φ(ξ)) measured in the same run (median of several
repeats after a warm-up call). It also reports how far each route's direction is from the dual route's
(‖v − v_dual‖ / ‖v_dual‖, same dtype) and, in float32, from the float64 dual direction.

A route whose matrices do not fit the memory budget (the primal route's d×d Gram matrix, always, here)
is skipped and the engine's own MemoryError message is recorded.

Usage:
    python benchmarks/routes.py [--quick] [--out FILE] [--device cpu|cuda] [--memory-budget-gib X] [--threads K]
                                [--batches N ...]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.functional import cross_entropy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import REPO, synchronize, time_call  # noqa: E402

try:
    import natgrad as ng
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(REPO / "src"))
    import natgrad as ng
from natgrad.natural_gradient import DEFAULT_MEMORY_BUDGET, route_memory  # noqa: E402
from natgrad.report import atomic_write_json, collect_environment  # noqa: E402

ROUTES = ("primal", "dual", "lstsq", "krylov", "structured")
WARMUP_BATCH = (
    2  # each route is first called once on this many inputs: first-call costs without the full price
)
DEVICE = torch.device("cpu")  # set by main()
DEFAULT_OUT = REPO / "benchmarks" / "results" / "routes.json"


@dataclass(frozen=True)
class Settings:
    """What one run measures."""

    widths: tuple[int, ...]
    cases: tuple[tuple[int, str], ...]  # (batch size N, dtype)
    repeats: int  # timed calls per route, unless one route's calls exceed route_seconds first
    route_seconds: float
    memory_budget: int
    seed: int = 0


def settings(quick: bool, memory_budget_gib: float) -> Settings:
    budget = int(memory_budget_gib * 2**30)
    if quick:
        return Settings(
            widths=(784, 128, 128, 10),
            cases=((8, "float64"), (8, "float32")),
            repeats=3,
            route_seconds=4.0,
            memory_budget=budget,
        )
    return Settings(
        widths=(784, 256, 256, 10),
        cases=((16, "float64"), (16, "float32")),
        repeats=3,
        route_seconds=20.0,
        memory_budget=budget,
    )


def mlp(widths: tuple[int, ...]) -> nn.Sequential:
    """tanh MLP with the given layer widths (no activation after the last layer: logits)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def problem(s: Settings, batch: int, dtype: torch.dtype, device: torch.device):
    """(phi, params, loss) for the seeded MLP on N random inputs; the same weights for every dtype and N."""
    torch.manual_seed(s.seed)
    model = mlp(s.widths).to(device=device, dtype=torch.float64)
    x = torch.randn(batch, s.widths[0], device=device, dtype=torch.float64)
    labels = torch.randint(0, s.widths[-1], (batch,), device=device)
    phi, params = ng.from_module(model.to(dtype), x.to(dtype))

    def loss(z: torch.Tensor) -> torch.Tensor:
        return cross_entropy(z, labels)

    return phi, params, loss


def time_route(call, s: Settings) -> tuple[dict[str, Any], Any]:
    """Up to ``s.repeats`` timed calls, fewer once their total passes ``s.route_seconds`` (at least one).

    Returns the timing record and the last call's result.
    """
    times: list[float] = []
    result = None
    while len(times) < s.repeats and sum(times) < s.route_seconds:
        start = time.perf_counter()
        result = call()
        synchronize(DEVICE)
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "times": times}, result


def run_case(s: Settings, batch: int, dtype_name: str, device: torch.device, dual64: dict) -> dict[str, Any]:
    """Time the gradient and every route for one (batch size, dtype); returns a JSON-ready record."""
    dtype = getattr(torch, dtype_name)
    phi, params, loss = problem(s, batch, dtype, device)

    d, n = ng.num_params(params), batch * s.widths[-1]
    grad_fn = torch.func.grad(lambda p: loss(phi(p)))
    grad_time = time_call(lambda: grad_fn(params), repeats=max(5, 2 * s.repeats), warmup=2, device=device)
    itemsize = torch.finfo(dtype).bits // 8
    record: dict[str, Any] = {
        "batch": batch,
        "dtype": dtype_name,
        "d": d,
        "n": n,
        "r": n,
        "gradient_seconds": grad_time,
        "auto_route_default_budget": ng.choose_route(n, d, itemsize, DEFAULT_MEMORY_BUDGET, structured=True),
        "auto_route_this_budget": ng.choose_route(n, d, itemsize, s.memory_budget, structured=True),
        "routes": {},
    }
    print(
        f"\nN={batch} {dtype_name}: d={d:,} n=r={n}  one gradient {1e3 * grad_time['median']:.2f} ms "
        f"(auto picks {record['auto_route_default_budget']!r} at the default 1 GiB budget)"
    )
    warm_phi, warm_params, warm_loss = problem(s, WARMUP_BATCH, dtype, device)
    directions: dict[str, torch.Tensor] = {}
    for route in ROUTES:

        def call(route: str = route, phi=phi, params=params, loss=loss):
            return ng.natural_gradient(
                phi, params, loss, ng.metrics.Categorical(), method=route, memory_budget=s.memory_budget
            )

        try:
            if route_memory(route, n, d, itemsize) <= s.memory_budget:
                call(phi=warm_phi, params=warm_params, loss=warm_loss)  # warm-up on a small batch
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RuntimeWarning)
                timing, first = time_route(call, s)
        except MemoryError as err:
            record["routes"][route] = {"skipped": str(err)}
            print(f"  {route:7s} skipped: {err}")
            continue
        v = ng.flatten_params(first.direction).detach()
        directions[route] = v
        entry: dict[str, Any] = {
            "seconds": timing,
            "gradients": timing["median"] / grad_time["median"],
            "rank": first.rank,
            "info": {k: val for k, val in first.info.items() if isinstance(val, int | float | bool | str)},
            "warnings": sorted({str(w.message) for w in caught}),
        }
        record["routes"][route] = entry
    for route, v in directions.items():
        entry = record["routes"][route]
        entry["rel_diff_to_dual"] = _relative(v, directions["dual"]) if "dual" in directions else None
        if dtype_name != "float64" and batch in dual64:
            entry["rel_diff_to_float64_dual"] = _relative(v, dual64[batch])
        extra = (
            f"rank {entry['rank']}"
            if entry["rank"] is not None
            else (f"{entry['info'].get('iterations')} iterations, converged={entry['info'].get('converged')}")
        )
        to_dual, to_f64 = entry["rel_diff_to_dual"], entry.get("rel_diff_to_float64_dual")
        print(
            f"  {route:7s} {entry['seconds']['median']:8.3f} s = {entry['gradients']:8.1f} gradients"
            + (f"   vs dual {to_dual:.1e}" if to_dual is not None else "")
            + (f"   vs float64 dual {to_f64:.1e}" if to_f64 is not None else "")
            + f"   ({extra}; {len(entry['seconds']['times'])} timed calls)"
        )
    if dtype_name == "float64" and "dual" in directions:
        dual64[batch] = directions["dual"]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller model and batch (about a minute)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT.relative_to(REPO)})"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--memory-budget-gib",
        type=float,
        default=4.0,
        help="memory_budget passed to every route, in GiB (default 4)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads (default 2; use 1 on a CPU shared with other jobs)",
    )
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        help="batch sizes N to run instead of the defaults (each in float64 and float32)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = device = torch.device(args.device)
    s = settings(args.quick, args.memory_budget_gib)
    if args.batches:
        s = replace(s, cases=tuple((b, dt) for b in args.batches for dt in ("float64", "float32")))
    print(
        f"natgrad route benchmark ({'quick' if args.quick else 'full'}): widths {s.widths}, cases {s.cases}, "
        f"up to {s.repeats} timed calls per route after a warm-up, {torch.get_num_threads()} torch threads, {device}"
    )
    dual64: dict[int, torch.Tensor] = {}
    cases = [run_case(s, batch, dt, device, dual64) for batch, dt in s.cases]
    data = {
        "benchmark": "routes",
        "description": "seconds of natgrad.natural_gradient per method, and as a multiple of one gradient "
        "(torch.func.grad of cross-entropy through the same model) measured in the same run",
        "settings": asdict(s) | {"quick": args.quick, "threads": args.threads, "warmup_batch": WARMUP_BATCH},
        "environment": collect_environment(device),
        "cases": cases,
    }
    path = atomic_write_json(args.out, data)
    print(f"\nwrote {path}")
    return 0 if all(math.isfinite(c["gradient_seconds"]["median"]) for c in cases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
