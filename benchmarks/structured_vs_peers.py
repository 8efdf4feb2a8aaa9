"""Exact natural gradient steps: the structured route against peers, side by side in one run.

Costs are quoted as ratios to one gradient computation measured in the same run. Peers are used from their
packages (``pip install -e ".[benchmark]"``): nngeometry's GramMatrix (kernel only, completed here with the
same solve and parameter direction as the structured route) and curvlinops' GGN operator solved by
conjugate gradients. Peak memory is the growth of the process's resident set over its value before each
measurement (Linux; on CUDA the allocator's peak). glibc reuses memory freed by earlier steps, which hides
part of each peak; ``--exact-peak-memory`` restarts with its mmap threshold fixed so that every large tensor
is a fresh mapping (exact peaks, slower times: results go to ``structured_vs_peers_memory.json``).

Usage:
    python benchmarks/structured_vs_peers.py [--quick] [--threads 2] [--with-jacrev] [--exact-peak-memory] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _env import peak_memory, reexec_with_fixed_mmap_threshold, time_call  # noqa: E402

import natgrad as ng  # noqa: E402
from natgrad.models.structured import categorical_fisher_factor, structured_kernel  # noqa: E402
from natgrad.report import atomic_write_json, collect_environment  # noqa: E402


def mlp(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10)
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 10),
    )


class Case:
    """A model, a batch, the summed cross-entropy loss and its categorical Fisher."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.x, self.y = model, x, y
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.d = sum(p.numel() for p in self.params)

    def gradient(self) -> list[torch.Tensor]:
        loss = nn.functional.cross_entropy(self.model(self.x), self.y, reduction="sum")
        return list(torch.autograd.grad(loss, self.params))

    def coefficients(self, logits: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """c with B c = ∇z L = p − e_y, per example (least squares in each C × k block)."""
        p = torch.softmax(logits, 1)
        grad_z = p - nn.functional.one_hot(self.y, p.shape[1]).to(p.dtype)
        return torch.linalg.lstsq(factor, grad_z.unsqueeze(2)).solution.reshape(-1)


def solve(kernel: torch.Tensor, c: torch.Tensor, how: str) -> torch.Tensor:
    """y with K y = c: Cholesky (K nonsingular) or the eigendecomposition pseudo-inverse."""
    if how == "cholesky":
        chol, info = torch.linalg.cholesky_ex(kernel)
        if int(info) == 0:
            return torch.cholesky_solve(c[:, None], chol)[:, 0]
    evals, evecs = torch.linalg.eigh(kernel)
    keep = evals > evals.max() * kernel.shape[0] * torch.finfo(kernel.dtype).eps
    return evecs[:, keep] @ ((evecs[:, keep].T @ c) / evals[keep])


def structured_step(case: Case, how: str = "cholesky") -> list[torch.Tensor]:
    """v = Aᵀ K⁻¹ c with A = Bᵀ J: structured kernel, one solve, one VJP."""
    factor = categorical_fisher_factor(case.model(case.x).detach())
    kernel, context = structured_kernel(case.model, case.x, factor)
    c = case.coefficients(context.output, factor)
    direction = context.vjp(solve(kernel, c, how))
    return [direction[name] for name, _ in case.model.named_parameters()]


def natgrad_result(case: Case) -> ng.NaturalGradient:
    """The public API end to end: ng.natural_gradient with the categorical Fisher, method="auto"."""
    phi, params = ng.from_module(case.model, case.x)
    return ng.natural_gradient(
        phi,
        params,
        lambda z: nn.functional.cross_entropy(z, case.y, reduction="sum"),
        ng.metrics.Categorical(),
    )


def natgrad_step(case: Case) -> list[torch.Tensor]:
    res = natgrad_result(case)
    return [res.direction[name] for name, _ in case.model.named_parameters()]


def nngeometry_step(case: Case, how: str = "cholesky") -> list[torch.Tensor]:
    """nngeometry's Gram matrix of the factored outputs Bᵀz, then the same solve and one VJP."""
    from nngeometry import GramMatrix

    logits = case.model(case.x)
    factor = categorical_fisher_factor(logits.detach())
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(case.x, case.y), batch_size=len(case.x)
    )
    gram = GramMatrix(
        case.model, loader, function=lambda x, y: torch.einsum("nck,nc->nk", factor, case.model(x))
    )
    k = factor.shape[2]
    n = len(case.x)
    kernel = gram.data.permute(1, 0, 3, 2).reshape(n * k, n * k)  # (k, N, k, N) -> rows (i, j)
    c = case.coefficients(logits.detach(), factor)
    y = solve(kernel, c, how)
    cotangent = torch.einsum("nck,nk->nc", factor, y.reshape(n, k))
    return list(torch.autograd.grad(logits, case.params, cotangent))


def curvlinops_step(case: Case, tol: float, max_iter: int) -> tuple[list[torch.Tensor], int]:
    """curvlinops' GGN operator (= Jᵀ F J for summed cross-entropy) and conjugate gradients from 0."""
    from curvlinops import GGNLinearOperator

    ggn = GGNLinearOperator(
        case.model,
        nn.CrossEntropyLoss(reduction="sum"),
        case.params,
        [(case.x, case.y)],
        check_deterministic=False,
    )
    b = torch.cat([g.reshape(-1) for g in case.gradient()])
    v, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), r @ r
    iterations = 0
    while iterations < max_iter and rr.sqrt() > tol * b.norm():
        gp = ggn @ p
        alpha = rr / (p @ gp)
        v, r = v + alpha * p, r - alpha * gp
        rr_new = r @ r
        p, rr = r + (rr_new / rr) * p, rr_new
        iterations += 1
    return list(v.split([q.numel() for q in case.params])), iterations


def jacrev_step(case: Case) -> list[torch.Tensor]:
    """Full J by torch.func.jacrev, then A = Bᵀ J, K = A Aᵀ, the same solve and v = Aᵀ y."""
    from torch.func import functional_call, jacrev

    names = [n for n, _ in case.model.named_parameters()]
    params = {n: p.detach() for n, p in case.model.named_parameters()}
    jac = jacrev(lambda q: functional_call(case.model, q, (case.x,)))(params)
    jac = torch.cat([jac[n].reshape(len(case.x), 10, -1) for n in names], dim=2)  # (N, C, d)
    logits = case.model(case.x).detach()
    factor = categorical_fisher_factor(logits)
    a = torch.einsum("nck,ncd->nkd", factor, jac).reshape(-1, case.d)
    y = solve(a @ a.T, case.coefficients(logits, factor), "cholesky")
    return list((a.T @ y).split([p.numel() for p in case.params]))


def relative_error(v: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    a = torch.cat([t.reshape(-1).double() for t in v])
    b = torch.cat([t.reshape(-1).double() for t in ref])
    return float((a - b).norm() / b.norm())


def reference_direction(case: Case) -> list[torch.Tensor]:
    """Float64 Moore–Penrose direction through the structured kernel (tested against jacrev) and eigh."""
    clone = Case(_double(case.model), case.x.double(), case.y)
    return structured_step(clone, "eigh")


def _double(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double()


def measure_case(case: Case, repeats: int, peers: bool, cg: bool, jac: bool, cg_iter: int) -> dict:
    row: dict = {"d": case.d, "N": len(case.x)}
    grad_time = time_call(case.gradient, repeats)["median"]
    row["gradient_s"] = grad_time
    ref = reference_direction(case)
    routes: dict[str, Callable[[], object]] = {
        "structured_cholesky": lambda: structured_step(case, "cholesky"),
        "structured_eigh": lambda: structured_step(case, "eigh"),
        "natgrad_natural_gradient_auto": lambda: natgrad_step(case),
    }
    if peers:
        routes["nngeometry_gram_cholesky"] = lambda: nngeometry_step(case, "cholesky")
    if jac:
        routes["jacrev_cholesky"] = lambda: jacrev_step(case)
    for name, fn in routes.items():
        start = time.perf_counter()
        out, peak = peak_memory(fn)
        seconds = time.perf_counter() - start
        if "jacrev" not in name:  # the full-Jacobian route is timed once
            seconds = time_call(fn, repeats)["median"]
        row[name] = {
            "seconds": seconds,
            "gradients": seconds / grad_time,
            "peak_mib": peak,
            "relative_error_vs_float64": relative_error(out, ref),
        }
    res = natgrad_result(case)
    row["natgrad_natural_gradient_auto"] |= {
        "route": res.method,
        "kernel_solve": res.info.get("kernel_solve"),
        "rank": res.rank,
    }
    if cg:
        start = time.perf_counter()
        (out, iterations), peak = peak_memory(lambda: curvlinops_step(case, 1e-6, cg_iter))
        seconds = time.perf_counter() - start
        row["curvlinops_ggn_cg"] = {
            "seconds": seconds,
            "gradients": seconds / grad_time,
            "peak_mib": peak,
            "cg_iterations": iterations,
            "relative_error_vs_float64": relative_error(out, ref),
        }
    return row


def peer_versions() -> dict:
    """Installed versions of the peers (None when one is missing), for the environment record."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("nngeometry", "curvlinops-for-pytorch"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return versions


def make_mlp_case(width: int, n: int, seed: int = 0, latent: int | None = None) -> Case:
    """MLP 784-w-w-10 on N inputs: isotropic Gaussian, or (``latent``) a ``latent``-dimensional Gaussian
    embedded in R⁷⁸⁴ plus 1% noise, as natural images are: the kernel is then far from well conditioned."""
    torch.manual_seed(seed)
    if latent is None:
        x = torch.randn(n, 784)
    else:
        x = torch.randn(n, latent) @ torch.randn(latent, 784) / latent**0.5 + 0.01 * torch.randn(n, 784)
    return Case(mlp(width), x, torch.randint(0, 10, (n,)))


def kernel_condition(case: Case) -> float:
    """cond(K) of the float64 structured kernel (categorical Fisher, C − 1 columns per example)."""
    model = _double(case.model)
    x = case.x.double()
    kernel, _ = structured_kernel(model, x, categorical_fisher_factor(model(x).detach()))
    evals = torch.linalg.eigvalsh(kernel)
    return float(evals[-1] / evals[0].clamp_min(1e-300))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and scaling points, no CG")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--with-jacrev", action="store_true", help="also time the full-Jacobian route once")
    parser.add_argument("--cg-iter", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--exact-peak-memory",
        action="store_true",
        help="restart with glibc's mmap threshold fixed: exact peaks, but every large tensor then costs page "
        "faults, which slows all methods (quote times from a run without it)",
    )
    args = parser.parse_args()
    if args.exact_peak_memory:
        reexec_with_fixed_mmap_threshold()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 7
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict = {
        "environment": collect_environment(device) | {"dtype": "float32", "peers": peer_versions()}
    }

    print("MLP 784-512-512-10, N=64, categorical Fisher", flush=True)
    mlp_case = make_mlp_case(512, 64)
    results["mlp"] = measure_case(mlp_case, repeats, True, not args.quick, args.with_jacrev, args.cg_iter) | {
        "kernel_condition": kernel_condition(mlp_case)
    }
    print(json.dumps(results["mlp"], indent=1), flush=True)

    print("MLP 784-512-512-10, N=64, inputs on a 16-dimensional subspace + 1% noise", flush=True)
    low_rank = make_mlp_case(512, 64, latent=16)
    results["mlp_low_rank_inputs"] = measure_case(
        low_rank, repeats, True, not args.quick, False, args.cg_iter
    ) | {"kernel_condition": kernel_condition(low_rank)}
    print(json.dumps(results["mlp_low_rank_inputs"], indent=1), flush=True)

    print("CNN 3 conv layers on 32x32x3, N=32", flush=True)
    torch.manual_seed(1)
    cnn_case = Case(cnn(), torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))
    results["cnn"] = measure_case(cnn_case, repeats, True, False, False, args.cg_iter)
    print(json.dumps(results["cnn"], indent=1), flush=True)

    widths = [64, 128, 256, 512] if args.quick else [64, 128, 256, 512, 1024]
    sizes = [16, 32, 64] if args.quick else [16, 32, 64, 128]
    cg = not args.quick
    results["scaling_width"] = []
    for w in widths:
        results["scaling_width"].append(
            measure_case(make_mlp_case(w, 64), repeats, True, cg, False, args.cg_iter) | {"width": w}
        )
        print(f"width {w}: done", flush=True)
    results["scaling_batch"] = []
    for n in sizes:
        results["scaling_batch"].append(
            measure_case(make_mlp_case(512, n), repeats, True, cg, False, args.cg_iter) | {"batch": n}
        )
        print(f"batch {n}: done", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / (
        "structured_vs_peers_memory.json" if args.exact_peak_memory else "structured_vs_peers.json"
    )
    atomic_write_json(path, results)
    figure(results, path.with_suffix(".png"))
    print(f"wrote {path}")


def figure(results: dict, path: Path) -> None:
    from natgrad.experiments import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for col, (key, xkey) in enumerate((("scaling_width", "d"), ("scaling_batch", "N"))):
        rows = results[key]
        xs = [r[xkey] for r in rows]
        for route in (
            "natgrad_natural_gradient_auto",
            "structured_cholesky",
            "structured_eigh",
            "nngeometry_gram_cholesky",
            "curvlinops_ggn_cg",
        ):
            if route not in rows[0]:
                continue
            axes[0, col].plot(xs, [r[route]["seconds"] for r in rows], "o-", label=route)
            axes[1, col].plot(xs, [r[route]["peak_mib"] for r in rows], "o-", label=route)
        axes[0, col].plot(xs, [r["gradient_s"] for r in rows], "k--", label="one gradient")
        for row in range(2):
            axes[row, col].set_xscale("log")
            axes[row, col].set_yscale("log")
            axes[row, col].set_xlabel(xkey)
        axes[0, col].set_ylabel("seconds")
        axes[1, col].set_ylabel("peak memory growth (MiB)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
