"""Cost of one exact distributed natural-gradient step: 1, 2 and 4 gloo processes, both strategies.

Model: the tanh MLP of the benchmarks, 32-w-w-10, cross-entropy (summed) with the categorical Fisher
(r = 9 rows per example), float64, Moore–Penrose. Two scalings:

* strong: a fixed batch of N examples split over P processes;
* weak: a fixed shard of n examples per process, so the batch grows as n·P.

For every (scaling, P, strategy) the JSON records the seconds of one ``natgrad.distributed.natural_gradient``
call (median over repeats, the slowest rank's), the same as a multiple of one gradient of the whole batch in
one process (measured in the same run), the bytes each rank handed to collectives and the number of
collectives (from the result's ``communication``), the Krylov products of the matrix-free strategy, and the
agreement with ``natgrad.natural_gradient`` on the whole batch in one process.

All processes run on this machine. With two cores shared with other work, more processes cannot be faster:
they compete for the same cores and every collective waits for the slowest rank. The numbers measure the
overhead of the method; the JSON's ``nccl_model`` gives the communication model for GPUs.

Usage:
    python benchmarks/distributed.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import os
import pickle
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _env import time_call  # noqa: E402

import natgrad as ng  # noqa: E402
import natgrad.distributed as ngd  # noqa: E402
from natgrad.report import atomic_write_json, collect_environment  # noqa: E402

INPUTS, CLASSES = 32, 10
STRATEGIES = ("kernel", "matrix-free")
NOTE = (
    "All processes share one machine. On two cores shared with other work, more processes cannot show a "
    "speed-up: they compete for the cores and every collective waits for the slowest rank."
)
NCCL_MODEL = {
    "collective": "ring all-reduce of m bytes over P GPUs: about 2(P-1)·alpha + 2(P-1)/P · m / B",
    "matrix_free_per_product": "2 all-reduces: (d + 2)·b and 2b bytes -> 4(P-1)·alpha + 2(P-1)/P·(d + 4)·b/B",
    "kernel_per_call": "gather of r_max·(d + 1)·b bytes per rank into rank 0 ((P-1)·r_max·(d+1)·b/B), "
    "broadcast of (d + 2)·b, and the dense solve on rank 0 alone",
    "typical": "alpha ≈ 5-10 µs and B ≈ 100-450 GB/s on NVLink; alpha ≈ 10-50 µs and B ≈ 12-50 GB/s on PCIe "
    "or InfiniBand; b = 8 bytes in float64, 4 in float32",
}


def build(width: int, total: int, seed: int = 0):
    """The model and the whole batch (identical in every process)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(INPUTS, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, CLASSES)
    ).double()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(total, INPUTS, generator=gen, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (total,), generator=gen)
    return model, x, y


def _loss(y: torch.Tensor):
    return lambda z: nn.functional.cross_entropy(z, y, reduction="sum")


def cases(config: dict, world_size: int) -> list[tuple[str, int]]:
    """(scaling, total batch) for this world size."""
    return [("strong", config["strong_batch"]), ("weak", config["weak_shard"] * world_size)]


def _timed_step(phi, params, loss, metric, strategy: str, repeats: int):
    """One call's result and its timing (after a barrier, so that the ranks start together)."""

    def step():
        return ngd.natural_gradient(phi, params, loss, metric, strategy=strategy)

    dist.barrier()
    timing = time_call(step, repeats, warmup=1)
    return step(), timing


def _compare_with_one_process(row: dict, config: dict) -> None:
    """Agreement with the one-process engine on the whole batch, and one gradient's time there."""
    model, x, y = build(config["width"], row["batch"])
    phi, params = ng.from_module(model, x)
    loss = _loss(y)
    single = ng.natural_gradient(phi, params, loss, ng.metrics.Categorical())
    v = ng.flatten_params(single.direction)
    diff = row.pop("direction") - v
    row["agreement"] = float(torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(v))
    grad = torch.func.grad(lambda p: loss(phi(p)))
    row["gradient_s"] = time_call(lambda: grad(params), max(5, config["repeats"]))["median"]
    row["step_over_gradient"] = row["step_s"] / row["gradient_s"]


def worker(rank: int, world_size: int, port: int, config: dict, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=300),
    )
    rows = []
    for scaling, total in cases(config, world_size):
        model, x, y = build(config["width"], total)
        per = total // world_size
        lo, hi = rank * per, (rank + 1) * per if rank < world_size - 1 else total
        phi, params = ng.from_module(model, x[lo:hi])
        loss, metric = _loss(y[lo:hi]), ng.metrics.Categorical()
        for strategy in STRATEGIES:
            res, timing = _timed_step(phi, params, loss, metric, strategy, config["repeats"])
            slowest = torch.tensor([timing["median"]], dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            row: dict[str, Any] = {
                "scaling": scaling,
                "processes": world_size,
                "strategy": strategy,
                "batch": total,
                "shard": hi - lo,
                "d": ng.num_params(params),
                "r": sum(res.shard_rows),
                "step_s": float(slowest),
                "step_s_this_rank": timing["median"],
                "payload_bytes_per_rank": res.communication["total_payload_bytes"],
                "payload_by_kind": res.communication["payload_bytes"],
                "collectives": res.communication["total_calls"],
                "rank": res.rank,
            }
            if res.certificate is not None:
                row["krylov"] = {
                    "system": res.certificate.system,
                    "products": res.certificate.iterations,
                    "residual": res.certificate.residual,
                }
            row["direction"] = ng.flatten_params(res.direction).clone()
            rows.append(row)
    if rank == 0:
        for row in rows:
            _compare_with_one_process(row, config)
        with open(Path(out_dir) / "rows.pkl", "wb") as fh:
            pickle.dump(rows, fh)
    ngd.shutdown()  # the others wait for rank 0's comparison, then the group ends


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_world(world_size: int, config: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            worker,
            args=(world_size, free_port(), config, out_dir),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        with open(Path(out_dir) / "rows.pkl", "rb") as fh:
            return pickle.load(fh)


def figure(rows: list[dict], path: Path) -> None:
    from natgrad.experiments import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for scaling, ax in zip(("strong", "weak"), axes[:2], strict=True):
        for strategy, marker in zip(STRATEGIES, ("o", "s"), strict=True):
            sel = [r for r in rows if r["scaling"] == scaling and r["strategy"] == strategy]
            ax.plot([r["processes"] for r in sel], [r["step_s"] for r in sel], marker=marker, label=strategy)
        ax.set_xlabel("processes (gloo, one machine)")
        ax.set_ylabel("seconds per exact step")
        ax.set_title(f"{scaling} scaling")
        ax.set_xticks(sorted({r["processes"] for r in rows}))
        ax.legend()
    for strategy, marker in zip(STRATEGIES, ("o", "s"), strict=True):
        sel = [r for r in rows if r["scaling"] == "strong" and r["strategy"] == strategy]
        axes[2].plot(
            [r["processes"] for r in sel],
            [r["payload_bytes_per_rank"] for r in sel],
            marker=marker,
            label=strategy,
        )
    axes[2].set_yscale("log")
    axes[2].set_xticks(sorted({r["processes"] for r in rows}))
    axes[2].set_xlabel("processes")
    axes[2].set_ylabel("bytes handed to collectives per rank")
    axes[2].set_title("communication (strong scaling)")
    axes[2].legend()
    fig.suptitle("Two shared cores: no speed-up is possible; the figure shows overhead", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes on 2 cores)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=None, help="default results/distributed[_quick].json")
    args = parser.parse_args()
    name = "distributed_quick.json" if args.quick else "distributed.json"
    args.out = args.out or Path(__file__).parent / "results" / name
    if args.quick:
        config = {"width": 32, "strong_batch": 48, "weak_shard": 12, "repeats": 3}
    else:
        config = {"width": 64, "strong_batch": 128, "weak_shard": 32, "repeats": 5}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows: list[dict] = []
    for world_size in args.processes:
        rows += run_world(world_size, config)
        for row in rows[-2 * len(STRATEGIES) :]:
            extra = f"  products {row['krylov']['products']}" if "krylov" in row else ""
            print(
                f"{row['scaling']:6s} P={row['processes']} {row['strategy']:11s} N={row['batch']:4d} "
                f"d={row['d']} r={row['r']}: {row['step_s'] * 1e3:8.1f} ms ({row['step_over_gradient']:7.1f} "
                f"gradients)  {row['payload_bytes_per_rank']:>10d} B/rank  {row['collectives']:5d} collectives"
                f"  agreement {row['agreement']:.1e}{extra}"
            )
    gpu = (
        "no GPU was available to this run: the single-GPU NCCL path was not measured"
        if not torch.cuda.is_available()
        else "a GPU is available; run with the NCCL backend to measure it"
    )
    results = {
        "environment": collect_environment(),
        "config": {**config, "quick": args.quick, "dtype": "float64", "backend": "gloo"},
        "note": NOTE,
        "gpu": gpu,
        "nccl_model": NCCL_MODEL,
        "rows": rows,
    }
    atomic_write_json(args.out, results)
    figure(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
