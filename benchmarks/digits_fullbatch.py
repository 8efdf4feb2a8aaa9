"""Full-batch scikit-learn digits: NGD (its defaults) against Adam and L-BFGS on one MLP.

The train split has 1,257 examples (r = 9 · 1,257 = 11,313 weighted outputs under the categorical Fisher) and
the MLP 64-32-32-10 has d = 3,466 parameters. Each method runs from the same initialisation (seed 0), on the same
loss (mean cross-entropy over the whole train split, every step full batch), for a budget of steps (and a time
cap, so a slow method cannot hang the run); every step records the train loss, the cumulative optimizer time
as CPU time of this single-threaded process and as wall clock, and, for NGD, the route, damping, number of
solves and the matrix-free certificate (relative residual, kernel products, and what happened to the
preconditioner: built, reused from the previous step, or rebuilt on its pivots). L-BFGS also records its
function evaluations (one ``step`` runs up to 20 iterations). Reported: loss curves against steps and against
CPU time (figure), steps per 10 s (from the median step time), the first step and time at which each method
reaches the target train loss, and the cost of a step in gradients (median step CPU time over the CPU time
of one full-batch loss and backward, measured in the same process). Wall time depends on the machine and its load (it is recorded, not claimed);
CPU time of one thread much less so; steps are deterministic.

Usage:
    python benchmarks/digits_fullbatch.py [--quick] [--examples N] [--dtype float32|float64] [--ngd-steps K]
        [--time-cap SECONDS] [--out FILE] [--figure FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import REPO, cpu_time_call, synchronize  # noqa: E402

try:
    import natgrad as ng
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(REPO / "src"))
    import natgrad as ng
from natgrad.optim import NGD, CrossEntropy, NGDStepError  # noqa: E402
from natgrad.report import atomic_write_json, collect_environment  # noqa: E402

TRAIN_EXAMPLES = 1257  # 70 % of the 1,797 digits


def digits(n: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` examples of a seeded shuffle of scikit-learn's digits, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:n]
    return (
        torch.tensor(x / 16.0, dtype=dtype)[order].to(device),
        torch.tensor(y)[order].to(device),
    )


def mlp(dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """64-32-32-10 with tanh (d = 3,466), seeded."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 32),
        torch.nn.Tanh(),
        torch.nn.Linear(32, 32),
        torch.nn.Tanh(),
        torch.nn.Linear(32, 10),
    ).to(dtype=dtype, device=device)


def train_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy on the train set."""
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(x), y))


def run(
    name: str,
    model: torch.nn.Module,
    step: Callable[[], dict[str, Any]],
    x: torch.Tensor,
    y: torch.Tensor,
    max_steps: int,
    time_cap: float,
    device: torch.device,
) -> dict[str, Any]:
    """Steps until ``max_steps`` or ``time_cap`` seconds of optimizer CPU time; losses recorded untimed."""
    losses, cpu, wall, details, error = [train_loss(model, x, y)], [0.0], [0.0], [], None
    while len(losses) <= max_steps and cpu[-1] < time_cap:
        synchronize(device)
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        try:
            detail = step()
        except NGDStepError as failure:  # recorded, not hidden: the run stops there
            error = str(failure)
            break
        synchronize(device)
        cpu.append(cpu[-1] + time.process_time() - start_cpu)
        wall.append(wall[-1] + time.perf_counter() - start_wall)
        losses.append(train_loss(model, x, y))
        details.append(detail)
    result: dict[str, Any] = {"losses": losses, "cpu_s": cpu, "wall_s": wall, "steps": len(losses) - 1}
    for clock in ("cpu", "wall"):
        step_times = [b - a for a, b in zip(result[f"{clock}_s"], result[f"{clock}_s"][1:], strict=False)]
        median = statistics.median(step_times) if step_times else None
        result[f"median_step_{clock}_s"] = median
        result[f"steps_per_10s_{clock}"] = None if not median else 10.0 / median
    print(
        f"{name}: {result['steps']} steps, loss {losses[0]:.4g} -> {losses[-1]:.4g}, "
        f"{cpu[-1]:.1f} s CPU, {wall[-1]:.1f} s wall"
    )
    return {**result, "details": details, "error": error}


def thinned(result: dict[str, Any], points: int = 400) -> dict[str, Any]:
    """The curves at about ``points`` log-spaced steps (every step when there are fewer), for the JSON."""
    total = len(result["losses"])
    keep = sorted(
        {0, total - 1} | {min(total - 1, round(total ** (k / points)) - 1) for k in range(points + 1)}
    )
    keep = list(range(total)) if total <= points else keep
    out = dict(result)
    out["recorded_steps"] = keep
    for key in ("losses", "cpu_s", "wall_s"):
        out[key] = [result[key][k] for k in keep]
    out["details"] = (
        [result["details"][k - 1] for k in keep if k > 0]
        if result["details"] and result["details"][0]
        else []
    )
    return out


def first_reaching(result: dict[str, Any], target: float) -> dict[str, Any]:
    """The first step (and its cumulative CPU and wall time) with train loss ≤ ``target``; None if never."""
    for k, value in enumerate(result["losses"]):
        if value <= target:
            evaluations = result["details"][k - 1].get("evaluations") if k > 0 else 0
            return {
                "step": k,
                "cpu_s": result["cpu_s"][k],
                "wall_s": result["wall_s"][k],
                "evaluations": evaluations,
            }
    return {"step": None, "cpu_s": None, "wall_s": None, "evaluations": None}


def figure(results: dict[str, Any], title: str, target: float, path: Path) -> None:
    """Train loss against steps and against CPU time, one line per method."""
    from natgrad.experiments import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, r in results.items():
        steps = r.get("recorded_steps", range(len(r["losses"])))
        axes[0].plot(list(steps), r["losses"], label=name)
        axes[1].plot(r["cpu_s"], r["losses"], label=name)
    for ax, xlabel in zip(axes, ("step", "CPU time of one thread (s)"), strict=True):
        ax.axhline(target, color="k", lw=0.8, ls="--")
        ax.set(yscale="log", xlabel=xlabel, ylabel="train loss")
        ax.legend()
    axes[0].set_xscale("symlog", linthresh=1.0)
    axes[0].set_xlim(left=0)
    axes[1].set_xscale("log")  # the start (t = 0) is off the axis
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 examples and small step budgets")
    parser.add_argument(
        "--examples", type=int, default=None, help=f"train examples (default {TRAIN_EXAMPLES})"
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--target", type=float, default=1e-3, help="train loss to reach")
    parser.add_argument("--ngd-steps", type=int, default=None, help="override the NGD step budget")
    parser.add_argument("--time-cap", type=float, default=None, help="override the per-method time cap (s)")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON (default results/digits_fullbatch_<dtype>[_quick])"
    )
    parser.add_argument("--figure", type=Path, default=None, help="PNG (default: the JSON's name)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # CPU time of one thread is the measure; wall clock is recorded beside it
    stem = f"digits_fullbatch_{args.dtype}{'_quick' if args.quick else ''}"
    out = args.out or REPO / "benchmarks" / "results" / f"{stem}.json"
    figure_path = args.figure or out.with_suffix(".png")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    n = args.examples or (300 if args.quick else TRAIN_EXAMPLES)
    budgets = (
        {"ngd": 15, "adam": 3000, "lbfgs": 100, "time_cap": 120.0}
        if args.quick
        else {"ngd": 30, "adam": 5000, "lbfgs": 300, "time_cap": 600.0}
    )
    if args.ngd_steps is not None:
        budgets["ngd"] = args.ngd_steps
    if args.time_cap is not None:
        budgets["time_cap"] = args.time_cap
    x, y = digits(n, dtype, device)
    results: dict[str, Any] = {}

    model = mlp(dtype, device)
    opt = NGD(model.parameters())
    f = opt.functional(model)
    loss = CrossEntropy(y)

    def ngd_step() -> dict[str, Any]:
        opt.step(lambda p: f(p, x), loss)
        keep = ("method", "rank", "damping", "attempts", "step_size")
        detail = {k: opt.last_step.get(k) for k in keep}
        certificate = opt.last_step.get("certificate") or {}
        detail["residual"] = certificate.get("residual")  # the matrix-free solve's pushforward residual
        detail["kernel_products"] = certificate.get("products")
        detail["column_blocks"] = certificate.get("column_blocks")
        detail["preconditioner"] = certificate.get("preconditioner")
        detail["started_damped"] = opt.last_step.get("started_damped")
        return detail

    results["ngd"] = run("NGD", model, ngd_step, x, y, budgets["ngd"], budgets["time_cap"], device)

    model = mlp(dtype, device)
    adam = torch.optim.Adam(model.parameters(), lr=1e-2)

    def adam_step() -> dict[str, Any]:
        adam.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        adam.step()
        return {}

    results["adam"] = run("Adam", model, adam_step, x, y, budgets["adam"], budgets["time_cap"], device)

    model = mlp(dtype, device)
    lbfgs = torch.optim.LBFGS(model.parameters(), lr=1.0, history_size=20, line_search_fn="strong_wolfe")
    evaluations = [0]

    def closure() -> torch.Tensor:
        evaluations[0] += 1
        lbfgs.zero_grad()
        value = torch.nn.functional.cross_entropy(model(x), y)
        value.backward()
        return value

    def lbfgs_step() -> dict[str, Any]:
        lbfgs.step(closure)
        return {"evaluations": evaluations[0]}

    results["lbfgs"] = run("L-BFGS", model, lbfgs_step, x, y, budgets["lbfgs"], budgets["time_cap"], device)

    model = mlp(dtype, device)

    def gradient() -> None:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        synchronize(device)

    gradient_cpu = cpu_time_call(gradient, repeats=50, warmup=5)["median"]
    summary = {name: first_reaching(r, args.target) for name, r in results.items()}
    for name, r in results.items():
        summary[name]["final_loss"] = r["losses"][-1]
        summary[name]["steps_per_10s_cpu"] = r["steps_per_10s_cpu"]
        summary[name]["steps_per_10s_wall"] = r["steps_per_10s_wall"]
        median = r["median_step_cpu_s"]
        summary[name]["median_step_gradients"] = None if median is None else median / gradient_cpu
    ngd_times = [b - a for a, b in zip(results["ngd"]["cpu_s"], results["ngd"]["cpu_s"][1:], strict=False)]
    summary["ngd"]["first_step_cpu_s"] = ngd_times[0] if ngd_times else None
    print("reaching train loss", args.target, summary)
    record = {
        "benchmark": "digits_fullbatch",
        "settings": {
            "examples": n,
            "weighted_outputs_r": 9 * n,
            "parameters_d": ng.num_params(dict(mlp(dtype, device).named_parameters())),
            "dtype": args.dtype,
            "target_loss": args.target,
            "budgets": budgets,
            "quick": args.quick,
            "ngd": "NGD(model.parameters()) defaults: lr=1, Moore–Penrose, safeguard, method auto",
            "adam": "lr=1e-2",
            "lbfgs": "lr=1, history 20, strong Wolfe, max_iter 20 per step",
            "init": "torch.manual_seed(0) before building the MLP, the same for every method",
            "loss": "mean cross-entropy over the whole train split (full batch) for every method",
            "timing": "optimizer CPU time of this process (one torch thread) and wall clock; losses untimed",
        },
        "summary": summary,
        "gradient_cpu_s": gradient_cpu,  # one full-batch loss and backward: the unit of median_step_gradients
        "results": {name: thinned(r) for name, r in results.items()},
        "environment": collect_environment(device),
    }
    atomic_write_json(out, record)
    title = f"digits full batch, r = {9 * n:,}, d = {record['settings']['parameters_d']:,}, {args.dtype}"
    figure(record["results"], title, args.target, figure_path)
    print(f"wrote {out} and {figure_path}")


if __name__ == "__main__":
    main()
