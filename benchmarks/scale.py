"""Exact natural gradients past the dense kernel: the matrix-free structured route against the dense one and peers.

MLP 784-512-512-10 (ReLU), summed cross-entropy, categorical Fisher (r = 9N), float32 model, N inputs: isotropic
Gaussian, or (``low-rank``) inputs near a 16-dimensional subspace plus 1 % noise, whose kernel is far worse
conditioned. Every case runs in a fresh process (single-threaded by default) with glibc's mmap threshold fixed,
so that each method's peak resident-set growth is its own; the methods run side by side in that process:

* ``structured-krylov``: natgrad's matrix-free route (no r × r matrix), to ``--tol`` on its pushforward residual;
* ``structured``: natgrad's dense structured route (r × r kernel), where r ≤ ``DENSE_MAX_R``;
* ``curvlinops-ggn-cg``: curvlinops' GGN operator with conjugate gradients from zero (vectors in float64),
  stopped when its direction reaches the same pushforward residual (checked every ``CG_CHECK`` iterations,
  checks not counted), or at ``--cg-max-gradients``.

Cost: CPU seconds of the call (``time.process_time``; on CUDA wall-clock after synchronising) as a multiple of
one gradient of the same batch measured in the same process, plus the deterministic counts (products with K,
column blocks, CG iterations). Accuracy, for every method alike: the pushforward residual ‖Bᵀ J v − c‖/‖c‖
evaluated in float64 (the float32 weights in a float64 copy of the model), and the error against natgrad's
float64 dense answer where its kernel fits. The crossover N between the dense and the matrix-free structured
routes is interpolated from the costs. JSON and a figure (cost against N for every method).

Usage:
    python benchmarks/scale.py [--sizes 256 512 1024 4096] [--full] [--low-rank-sizes 1024]
        [--device cpu|cuda] [--tol 1e-6] [--threads 1] [--no-peers] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _env import environment, write_json_atomic  # noqa: E402

import natgrad as ng  # noqa: E402

BUDGET = 6 * 2**30  # memory_budget of every natgrad call (the dense routes refuse larger r themselves)
DENSE_MAX_R = 9 * 1024  # the dense r × r kernels (the structured route and the float64 answer) up to here
CG_CHECK = 10  # CG iterations between checks of the pushforward residual
LATENT = 16
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "0"}
METHODS = ("structured-krylov", "structured", "curvlinops-ggn-cg")


def make_case(n: int, inputs: str, device: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The seeded model, N inputs (``gaussian`` or ``low-rank``) and labels."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    ).to(device)
    gen = torch.Generator().manual_seed(1)
    if inputs == "low-rank":
        basis = torch.randn(LATENT, 784, generator=gen) / LATENT**0.5
        x = torch.randn(n, LATENT, generator=gen) @ basis + 0.01 * torch.randn(n, 784, generator=gen)
    else:
        x = torch.randn(n, 784, generator=gen)
    return model, x.to(device), torch.randint(0, 10, (n,), generator=gen).to(device)


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(key)


def measured(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float]:
    """(result, seconds, peak memory growth in MiB) of ``fn()``: CPU time of this process on CPU (the resident
    set's high-water mark, reset before the call), wall-clock and the allocator's peak on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(device)
        return out, time.perf_counter() - start, (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kib("VmRSS")
    except OSError:
        base = None
    start = time.process_time()
    out = fn()
    seconds = time.process_time() - start
    peak = float("nan") if base is None else (_status_kib("VmHWM") - base) / 1024
    return out, seconds, peak


def _loss(y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def loss(z: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(z, y, reduction="sum")

    return loss


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class Float64Check:
    """The pushforward residual ‖Bᵀ J v − c‖/‖c‖ of any direction v, with J, B and c of a float64 copy of the
    model at the same weights (so rounding in the check does not depend on the method checked)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model = copy.deepcopy(model).double()
        self.x, self.y = x.double(), y
        self.params = {k: p.detach() for k, p in self.model.named_parameters()}
        z = self.model(self.x).detach().requires_grad_(True)
        grad_z = torch.autograd.grad(_loss(y)(z), z)[0]
        self.metric = ng.metrics.Categorical().at(z.detach())
        self.c = self.metric.factor_solve(grad_z.reshape(-1))

    def residual(self, v: torch.Tensor) -> float:
        from torch.func import functional_call, jvp

        tangents, start = {}, 0
        for k, p in self.params.items():
            tangents[k] = v[start : start + p.numel()].reshape(p.shape).to(p)
            start += p.numel()
        _, jv = jvp(lambda q: functional_call(self.model, q, (self.x,)), (self.params,), (tangents,))
        av = self.metric.factor_t_matmul(jv.reshape(-1))
        return float(torch.linalg.vector_norm(av - self.c) / torch.linalg.vector_norm(self.c))

    def reference(self) -> torch.Tensor:
        """natgrad's float64 dense structured answer (r × r kernel)."""
        phi, params = ng.from_module(self.model, self.x)
        res = ng.natural_gradient(
            phi, params, _loss(self.y), ng.metrics.Categorical(), method="structured", memory_budget=BUDGET
        )
        return ng.flatten_params(res.direction)


def natgrad_step(model, x, y, method: str, tol: float) -> tuple[torch.Tensor, dict]:
    phi, params = ng.from_module(model, x)
    res = ng.natural_gradient(
        phi, params, _loss(y), ng.metrics.Categorical(), method=method, tol=tol, memory_budget=BUDGET
    )
    return ng.flatten_params(res.direction), res.info


def curvlinops_cg(
    model, x, y, check: Float64Check, target: float, max_seconds: float, device: torch.device
) -> dict:
    """curvlinops' GGN (the categorical Fisher for summed cross-entropy) by CG from zero until the direction's
    pushforward residual reaches ``target``; returns the CPU seconds of the CG alone (checks excluded)."""
    from curvlinops import GGNLinearOperator

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return time.process_time()

    start = clock()
    params = [p for p in model.parameters() if p.requires_grad]
    ggn = GGNLinearOperator(
        model, nn.CrossEntropyLoss(reduction="sum"), params, [(x, y)], check_deterministic=False
    )
    b = _flat(torch.autograd.grad(_loss(y)(model(x)), params)).double()
    v, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), float(r @ r)
    iterations, residual, seconds = 0, 1.0, clock() - start
    while seconds <= max_seconds:
        start = clock()
        for _ in range(CG_CHECK):
            gp = (ggn @ p.float()).double()
            alpha = rr / float(p @ gp)
            v, r = v + alpha * p, r - alpha * gp
            rr_next = float(r @ r)
            p, rr = r + (rr_next / rr) * p, rr_next
            iterations += 1
        seconds += clock() - start
        residual = check.residual(v)
        if residual <= target:
            break
    return {
        "seconds": seconds,
        "cg_iterations": iterations,
        "reached": residual <= target,
        "pushforward_residual_float64": residual,
        "parameter_residual": math.sqrt(rr) / float(b.norm()),
        "direction": v,
    }


def measure_case(
    n: int, inputs: str, device: torch.device, tol: float, peers: bool, cg_max: float, cg_ratio: float
) -> dict:
    """One case, every method, in this process."""
    # One-off imports that the first torch.func call and the first JVP trigger (seconds): not a step's cost.
    import torch._decomp.decompositions_for_jvp  # noqa: F401
    import torch._dynamo  # noqa: F401

    model, x, y = make_case(n, inputs, device)
    params = list(model.parameters())

    def gradient():
        return torch.autograd.grad(_loss(y)(model(x)), params)

    gradient()
    gradient_s = sorted(measured(gradient, device)[1] for _ in range(5))[2]
    row: dict = {
        "N": n,
        "r": 9 * n,
        "d": sum(p.numel() for p in params),
        "inputs": inputs,
        "gradient_s": gradient_s,
    }
    check = Float64Check(model, x, y)
    reference = check.reference() if 9 * n <= DENSE_MAX_R else None
    krylov_residual = tol
    for method in METHODS:
        if method == "structured" and 9 * n > DENSE_MAX_R:
            row[method] = {"skipped": f"r = {9 * n} > {DENSE_MAX_R}: the r × r kernel is not formed"}
            continue
        if method == "curvlinops-ggn-cg":
            if not peers:
                continue
            try:
                import curvlinops  # noqa: F401
            except ImportError as error:
                row[method] = {"skipped": f"{error}; pip install '.[benchmark]'"}
                continue
            target = max(tol, krylov_residual)
            # CG stops at cg_ratio times the matrix-free route's cost: "not reached" then means "that much dearer".
            krylov_cost = row.get("structured-krylov", {}).get("gradients")
            cap = cg_max if krylov_cost is None else min(cg_max, cg_ratio * krylov_cost)
            out, _, peak = measured(
                functools.partial(curvlinops_cg, model, x, y, check, target, cap * gradient_s, device), device
            )
            v = out.pop("direction")
            entry = {
                **out,
                "target_residual": target,
                "cap_gradients": cap,
                "gradients": out["seconds"] / gradient_s,
                "peak_rss_growth_mib": peak,
            }
        else:
            try:
                (v, info), seconds, peak = measured(
                    lambda m=method: natgrad_step(model, x, y, m, tol), device
                )
            except Exception as error:  # a route that cannot honour its contract says so: record it
                row[method] = {"failed": f"{type(error).__name__}: {error}"}
                continue
            entry = {"seconds": seconds, "gradients": seconds / gradient_s, "peak_rss_growth_mib": peak}
            if method == "structured-krylov":
                entry["certificate"] = info["certificate"]
                entry["kernel_solves"] = info["kernel_solves"]
            else:
                entry["kernel_solve"] = info.get("kernel_solve")
        entry["pushforward_residual_float64"] = check.residual(v.double())
        if method == "structured-krylov":
            krylov_residual = entry["pushforward_residual_float64"]
        if reference is not None:
            entry["error_vs_float64"] = float((v.double() - reference).norm() / reference.norm())
        row[method] = entry
    return row


def crossover(rows: list[dict]) -> dict:
    """Where the matrix-free route's cost (gradients) falls below the dense structured route's, interpolated
    linearly in log N between the measured sizes on each side of the sign change."""
    pts = [
        (row["N"], math.log(row["structured-krylov"]["gradients"] / row["structured"]["gradients"]))
        for row in rows
        if row["inputs"] == "gaussian"
        and "gradients" in row.get("structured", {})
        and "gradients" in row.get("structured-krylov", {})
    ]
    pts.sort()
    for (n0, g0), (n1, g1) in zip(pts, pts[1:], strict=False):
        if g0 > 0 >= g1:
            at = math.exp(math.log(n0) + (math.log(n1) - math.log(n0)) * g0 / (g0 - g1))
            return {"N": at, "r": 9 * at, "between": [n0, n1], "log_cost_ratios": pts}
    side = "cheaper" if pts and all(g <= 0 for _, g in pts) else "dearer"
    return {"N": None, "note": f"structured-krylov {side} at every measured N", "log_cost_ratios": pts}


def figure(rows: list[dict], path: Path) -> None:
    from natgrad.experiments import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for inputs, style in (("gaussian", "o-"), ("low-rank", "s--")):
        for method in METHODS:
            pts = [
                (row["N"], row[method]["gradients"])
                for row in rows
                if row["inputs"] == inputs and "gradients" in row.get(method, {})
            ]
            if pts:
                color = f"C{METHODS.index(method)}"
                ax.loglog(*zip(*pts, strict=True), style, color=color, label=f"{method} ({inputs})")
            capped = [
                (row["N"], row[method]["gradients"])
                for row in rows
                if row["inputs"] == inputs and row.get(method, {}).get("reached") is False
            ]
            if capped:  # stopped at its cost cap before reaching the residual: a lower bound
                ax.loglog(*zip(*capped, strict=True), "^", color=color, markersize=11, fillstyle="none")
    ax.set_xlabel("N (r = 9N)")
    ax.set_title("open triangles: CG stopped at its cap, residual not reached", fontsize=7)
    ax.set_ylabel("one exact step [gradients]")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def run_child(n: int, inputs: str, args: argparse.Namespace) -> dict:
    """The case in a fresh process with the mmap threshold fixed (exact per-method peaks)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, __file__, "--child", str(n), inputs, str(out), "--device", args.device]
        cmd += ["--tol", str(args.tol), "--threads", str(args.threads)]
        cmd += ["--cg-max-gradients", str(args.cg_max_gradients), "--cg-ratio", str(args.cg_ratio)]
        cmd += ["--no-peers"] if args.no_peers else []
        env = {
            **os.environ,
            **MALLOC,
            "OMP_NUM_THREADS": str(args.threads),
            "MKL_NUM_THREADS": str(args.threads),
        }
        done = subprocess.run(cmd, env=env, check=False)
        if done.returncode != 0 or not out.exists():
            return {"N": n, "r": 9 * n, "inputs": inputs, "failed": f"child exited with {done.returncode}"}
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 4096])
    parser.add_argument("--full", action="store_true", help="add N = 16384")
    parser.add_argument("--low-rank-sizes", type=int, nargs="*", default=[1024])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cg-max-gradients", type=float, default=3000.0, help="CG's cost cap, in gradients")
    parser.add_argument(
        "--cg-ratio", type=float, default=12.0, help="CG's cost cap as a multiple of structured-krylov's cost"
    )
    parser.add_argument("--append", action="store_true", help="keep the rows of --out for other cases")
    parser.add_argument(
        "--merge", type=Path, nargs="+", help="combine these results files (cases run in parallel) into --out"
    )
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale.json")
    parser.add_argument("--child", nargs=3, metavar=("N", "INPUTS", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.merge:
        merge(args.merge, args.out)
        return
    if args.child:
        n, inputs, out = int(args.child[0]), args.child[1], Path(args.child[2])
        row = measure_case(
            n, inputs, device, args.tol, not args.no_peers, args.cg_max_gradients, args.cg_ratio
        )
        out.write_text(json.dumps(row))
        return
    cases = [(n, "gaussian") for n in [*args.sizes, *([16384] if args.full else [])]]
    cases += [(n, "low-rank") for n in args.low_rank_sizes]
    record = environment(device) | {
        "dtype": "float32",
        "tol": args.tol,
        "cost_clock": "CUDA wall-clock" if device.type == "cuda" else "process CPU time",
        "malloc": MALLOC,
        "memory_budget_bytes": BUDGET,
        "peers": {"curvlinops": _version("curvlinops-for-pytorch")},
    }
    rows: list[dict] = []
    if args.append and args.out.exists():
        rows = [
            row for row in json.loads(args.out.read_text())["rows"] if (row["N"], row["inputs"]) not in cases
        ]
    for n, inputs in cases:
        rows.append(run_child(n, inputs, args))
        print(json.dumps(rows[-1]), flush=True)
        rows.sort(key=lambda row: (row["inputs"], row["N"]))
        write_json_atomic(args.out, {"environment": record, "rows": rows, "crossover": crossover(rows)})
    figure(rows, args.out.with_suffix(".png"))


def merge(paths: list[Path], out: Path) -> None:
    """One results file from several runs: their rows (the last run of a case wins) and environment records."""
    runs = [json.loads(path.read_text()) for path in paths]
    rows = {(row["N"], row["inputs"]): row for run in runs for row in run["rows"]}
    ordered = sorted(rows.values(), key=lambda row: (row["inputs"], row["N"]))
    environments = [env for run in runs for env in run.get("runs", [run["environment"]])]
    data = {
        "environment": environments[-1],
        "runs": environments,
        "rows": ordered,
        "crossover": crossover(ordered),
    }
    write_json_atomic(out, data)
    figure(ordered, out.with_suffix(".png"))


def _version(package: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
