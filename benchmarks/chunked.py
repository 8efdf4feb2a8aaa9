"""Chunked vs unchunked assembly of the dense structured kernel: cost in gradients and peak memory.

A conv net whose per-layer factors (signals r × C·H·W per conv layer, unfolded patches) are far larger than
its kernel K (r × r) — the case chunking exists for. Categorical Fisher, float32 model, r = 9·N. For the
unchunked route (default budget) and for budgets that force about 3 and 6 chunks, each in a fresh process:

- CPU seconds (single thread, ``time.process_time``, best of the repeats: the least disturbed by other load)
  of one ``natural_gradient(method="structured")`` call, and that as a multiple of one gradient of the batch
  (``torch.func.grad`` of the cross-entropy, best of at least 5, same process);
- the plan (chunks, examples per chunk, factor emissions) from ``info["chunked"]``;
- the call's peak resident-set growth (VmHWM reset before the call, Linux), against the budget, and that of a
  call that allocates only what every route needs (φ linearised, J products: krylov stopped after 2 steps);
- the relative difference of the direction from the unchunked one.

Usage:
    python benchmarks/chunked.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import REPO  # noqa: E402

try:
    import natgrad as ng
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(REPO / "src"))
    import natgrad as ng
from natgrad.models.structured import chunk_bytes, factor_bytes  # noqa: E402
from natgrad.natural_gradient import route_memory  # noqa: E402
from natgrad.report import atomic_write_json, collect_environment  # noqa: E402

CLASSES = 10


def build(examples: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Conv 3→16→16 on 16×16 images, then a linear read-out; seeded weights, inputs and labels."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(16 * 16 * 16, CLASSES),
    )
    x = torch.randn(examples, 3, 16, 16)
    y = torch.randint(0, CLASSES, (examples,))
    return net, x, y


def _cpu_seconds(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return times


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def peak_growth(fn) -> tuple[object, int]:
    """(fn(), the call's peak resident set over the resident set before it).

    The kernel's peak (VmHWM) is reset first (``/proc/self/clear_refs``): ``ru_maxrss`` would start at the
    forking parent's resident set and keep earlier calls' peaks.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status("VmRSS")
    result = fn()
    return result, _status("VmHWM") - before


def worker(examples: int, budget: int | None, repeats: int) -> dict:
    """One configuration in this process (single-threaded): the gradient, then the structured call."""
    torch.set_num_threads(1)
    net, x, y = build(examples)
    params = {k: v.detach() for k, v in net.named_parameters()}

    def loss_of(p):
        return nn.functional.cross_entropy(functional_call(net, p, (x,)), y)

    gradient = grad(loss_of)
    gradient(params)
    gradient_seconds = _cpu_seconds(lambda: gradient(params), max(5, repeats))
    phi, ng_params = ng.from_module(net, x)

    def loss(z):
        return nn.functional.cross_entropy(z, y)

    metric = ng.metrics.Categorical()

    def engine_only():  # φ linearised and a few J products: what every route allocates besides its own
        return ng.natural_gradient(phi, ng_params, loss, metric, method="krylov", max_iter=2, throw=False)

    engine_only()
    _, overhead = peak_growth(engine_only)
    kwargs = {} if budget is None else {"memory_budget": budget}

    def structured():
        return ng.natural_gradient(phi, ng_params, loss, metric, method="structured", **kwargs)

    result, growth = peak_growth(structured)
    seconds = _cpu_seconds(structured, repeats)
    direction = ng.flatten_params(result.direction)
    return {
        "budget_bytes": budget,
        "chunked": result.info.get("chunked"),
        "peak_growth_bytes": growth,
        "engine_growth_bytes": overhead,
        "gradient_cpu_seconds": gradient_seconds,
        "structured_cpu_seconds": seconds,
        "cost_in_gradients": min(seconds) / min(gradient_seconds),
        "direction": direction.tolist(),
    }


def _run(examples: int, budget: int | None, repeats: int) -> dict:
    command = [sys.executable, __file__, "--worker", str(examples), str(budget or 0), str(repeats)]
    # glibc: large blocks mmapped and returned when freed, so the resident set follows what is live
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "0"}
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 24 instead of 48, fewer repeats")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        examples, budget, repeats = args.worker
        print(json.dumps(worker(examples, budget or None, repeats)))
        return {}
    examples, repeats = (24, 2) if args.quick else (48, 3)
    net, x, _ = build(examples)
    r = CLASSES * examples  # Categorical: C − 1 = 9 columns per example, 10 outputs in the estimate's rows
    factors = factor_bytes(net, (x,), {}, (CLASSES - 1) * examples, 4)
    d = sum(p.numel() for p in net.parameters())
    kernel = route_memory("structured", (CLASSES - 1) * examples, d, 4)
    per_example = -(-factors // examples)
    rows = []
    for chunks in (None, 3, 6):
        # the plan's own count: two chunks of ⌈N/c⌉ examples beside K, and the float64 blocks of a pair
        size = -(-examples // chunks) if chunks else examples
        budget = None if chunks is None else kernel + chunk_bytes(size, per_example, CLASSES - 1)
        row = _run(examples, budget, repeats)
        rows.append(row)
    reference = torch.tensor(rows[0]["direction"])
    table = []
    for row in rows:
        direction = torch.tensor(row.pop("direction"))
        row["relative_difference"] = float((direction - reference).norm() / reference.norm())
        plan = row["chunked"] or {"chunks": 1, "examples_per_chunk": examples, "emissions": 1}
        table.append(row)
        budget = "default" if row["budget_bytes"] is None else f"{row['budget_bytes'] / 2**20:.1f} MiB"
        print(
            f"budget {budget:>10}  chunks {plan['chunks']:2d} × {plan['examples_per_chunk']:2d}  "
            f"emissions {plan['emissions']:3d}  cost {row['cost_in_gradients']:7.1f} gradients  "
            f"peak growth {row['peak_growth_bytes'] / 2**20:6.1f} MiB (engine alone "
            f"{row['engine_growth_bytes'] / 2**20:.1f})  diff {row['relative_difference']:.1e}"
        )
    result = {
        "model": "conv 3-16-16 (16×16) + linear 4096-10, tanh, float32, categorical Fisher",
        "examples": examples,
        "r": (CLASSES - 1) * examples,
        "outputs": r,
        "d": d,
        "factor_bytes_estimate": factors,
        "kernel_bytes": kernel,
        "threads": 1,
        "rows": table,
        "environment": collect_environment(),
    }
    out = args.out or REPO / "benchmarks" / "results" / (
        "chunked_quick.json" if args.quick else "chunked.json"
    )
    atomic_write_json(out, result)
    return result


if __name__ == "__main__":
    main()
