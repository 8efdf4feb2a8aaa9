"""Exact natural gradients past the dense kernel: the matrix-free structured route against the dense one and peers.

MLP 784-512-512-10 (ReLU), summed cross-entropy, categorical Fisher (r = 9N), float32 model, N random inputs.
For each N and method: the cost of one exact step in gradients of the same batch (median of ``--repeats``), the
growth of the process's peak resident set during the call, the certificate (pushforward residual ‖Av − c‖/‖c‖,
products with K, preconditioner rank) and the error against natgrad's float64 dense structured answer where it
fits. The curvlinops GGN + CG peer runs in the same process when the ``benchmark`` extra is installed.

Usage:
    python benchmarks/scale.py [--sizes 256 1024 4096] [--full] [--device cpu|cuda] [--tol 1e-6] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _env import environment, write_json_atomic  # noqa: E402

import natgrad as ng  # noqa: E402

DENSE_MAX_R = 9 * 1024  # the float64 dense kernel (r × r) is formed only up to here


def _model(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    ).to(device)


def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], out


def _curvlinops_cg(model, x, y, tol: float, max_iter: int):
    """GGN (categorical Fisher of the cross-entropy) by curvlinops, solved by scipy CG to the same tolerance."""
    from curvlinops import GGNLinearOperator
    from scipy.sparse.linalg import cg

    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    ggn = GGNLinearOperator(model, loss_fn, params, [(x, y)])
    grad = torch.autograd.grad(loss_fn(model(x), y), params)
    b = torch.cat([g.reshape(-1) for g in grad]).detach().cpu().numpy()
    iterations = []
    v, _ = cg(ggn, b, rtol=tol, maxiter=max_iter, callback=lambda _: iterations.append(1))
    return torch.from_numpy(v), len(iterations)


def measure(n: int, device: torch.device, tol: float, repeats: int, peers: bool) -> dict:
    model = _model(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 784, generator=gen).to(device)
    y = torch.randint(0, 10, (n,), generator=gen).to(device)

    def loss(z):
        return nn.functional.cross_entropy(z, y, reduction="sum")

    gradient_s, _ = _timed(
        lambda: torch.autograd.grad(loss(model(x)), list(model.parameters())), max(3, repeats)
    )
    row: dict = {
        "N": n,
        "r": 9 * n,
        "d": sum(p.numel() for p in model.parameters()),
        "gradient_s": gradient_s,
    }
    phi, params = ng.from_module(model, x)
    metric = ng.metrics.Categorical()
    reference = None
    if 9 * n <= DENSE_MAX_R:
        model64 = copy.deepcopy(model).double()
        phi64, params64 = ng.from_module(model64, x.double())
        reference = ng.flatten_params(
            ng.natural_gradient(phi64, params64, loss, metric, method="structured").direction
        )
    budget = 24 * 2**30
    for method in ("structured-krylov", "structured"):
        if method == "structured" and 9 * n > DENSE_MAX_R:
            row[method] = {"skipped": f"r = {9 * n} > {DENSE_MAX_R}: the dense kernel is not formed"}
            continue
        before = _peak_kib()
        seconds, res = _timed(
            lambda method=method: ng.natural_gradient(
                phi, params, loss, metric, method=method, tol=tol, memory_budget=budget
            ),
            repeats,
        )
        entry = {
            "seconds": seconds,
            "gradients": seconds / gradient_s,
            "peak_rss_growth_mib": (_peak_kib() - before) / 1024,
            "certificate": res.info.get("certificate"),
            "kernel_solve": res.info.get("kernel_solve"),
        }
        if reference is not None:
            v = ng.flatten_params(res.direction).double()
            entry["error_vs_float64"] = float((v - reference).norm() / reference.norm())
        row[method] = entry
    if peers:
        try:
            before = _peak_kib()
            seconds, (v, iterations) = _timed(lambda: _curvlinops_cg(model, x, y, tol, 2000), 1)
            entry = {"seconds": seconds, "gradients": seconds / gradient_s, "cg_iterations": iterations}
            entry["peak_rss_growth_mib"] = (_peak_kib() - before) / 1024
            if reference is not None:
                entry["error_vs_float64"] = float((v.double() - reference.cpu()).norm() / reference.norm())
            row["curvlinops-ggn-cg"] = entry
        except ImportError as error:
            row["curvlinops-ggn-cg"] = {
                "skipped": f"curvlinops is not installed ({error}); pip install '.[benchmark]'"
            }
    return row


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method in ("structured-krylov", "structured", "curvlinops-ggn-cg"):
        pts = [(row["N"], row[method]["gradients"]) for row in rows if "gradients" in row.get(method, {})]
        if pts:
            ax.loglog(*zip(*pts, strict=True), "o-", label=method)
    ax.set_xlabel("N (r = 9N)")
    ax.set_ylabel("cost of one exact step [gradients]")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--full", action="store_true", help="add N = 16384")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = [*args.sizes, 16384] if args.full else args.sizes
    rows = []
    for n in sizes:
        rows.append(measure(n, device, args.tol, args.repeats, peers=not args.no_peers))
        print(rows[-1], flush=True)
        write_json_atomic(args.out, {"environment": environment(device), "rows": rows})
    figure(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
