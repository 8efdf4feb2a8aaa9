"""Full-batch scikit-learn digits: NGD (its defaults) against Adam and L-BFGS on one MLP.

The train split has 1,257 examples (r = 9 · 1,257 = 11,313 weighted outputs under the categorical Fisher) and
the MLP 64-32-32-10 has d = 3,466 parameters. Each method runs from the same initialisation for a budget of
steps (and a wall-clock cap, so a slow method cannot hang the run); every step records the train loss, the
cumulative optimizer time and, for NGD, the route, rank, damping and number of solves. Reported: loss curves
against steps and against wall time, steps per 10 s (from the median step time), and the first step and time
at which each method reaches the target train loss. Wall time depends on the machine and its load (it is
recorded, not claimed); steps are deterministic.

Usage:
    python benchmarks/digits_fullbatch.py [--quick] [--examples N] [--dtype float32|float64] [--ngd-steps K]
        [--time-cap SECONDS] [--out FILE]
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
from _env import REPO, synchronize  # noqa: E402

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
    """Steps until ``max_steps`` or ``time_cap`` seconds of optimizer time; losses recorded untimed."""
    losses, times, details, elapsed, error = [train_loss(model, x, y)], [0.0], [], 0.0, None
    while len(losses) <= max_steps and elapsed < time_cap:
        synchronize(device)
        start = time.perf_counter()
        try:
            detail = step()
        except NGDStepError as failure:  # recorded, not hidden: the run stops there
            error = str(failure)
            break
        synchronize(device)
        elapsed += time.perf_counter() - start
        losses.append(train_loss(model, x, y))
        times.append(elapsed)
        details.append(detail)
    step_times = [b - a for a, b in zip(times, times[1:], strict=False)]
    median = statistics.median(step_times) if step_times else None
    print(f"{name}: {len(step_times)} steps, loss {losses[0]:.4g} -> {losses[-1]:.4g}, {elapsed:.1f} s")
    return {
        "losses": losses,
        "times_s": times,
        "steps": len(step_times),
        "median_step_s": median,
        "steps_per_10s": None if not median else 10.0 / median,
        "details": details,
        "error": error,
    }


def thinned(result: dict[str, Any], points: int = 400) -> dict[str, Any]:
    """The curves at about ``points`` log-spaced steps (every step when there are fewer), for the JSON."""
    total = len(result["losses"])
    keep = sorted(
        {0, total - 1} | {min(total - 1, round(total ** (k / points)) - 1) for k in range(points + 1)}
    )
    keep = list(range(total)) if total <= points else keep
    out = dict(result)
    out["recorded_steps"] = keep
    out["losses"] = [result["losses"][k] for k in keep]
    out["times_s"] = [result["times_s"][k] for k in keep]
    out["details"] = (
        [result["details"][k - 1] for k in keep if k > 0]
        if result["details"] and result["details"][0]
        else []
    )
    return out


def first_reaching(result: dict[str, Any], target: float) -> dict[str, Any]:
    """The first step (and its cumulative time) with train loss ≤ ``target``; None if never."""
    for k, value in enumerate(result["losses"]):
        if value <= target:
            return {"step": k, "time_s": result["times_s"][k]}
    return {"step": None, "time_s": None}


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
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "digits_fullbatch.json")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    n = args.examples or (300 if args.quick else TRAIN_EXAMPLES)
    budgets = (
        {"ngd": 15, "adam": 3000, "lbfgs": 300, "time_cap": 120.0}
        if args.quick
        else {"ngd": 40, "adam": 50000, "lbfgs": 3000, "time_cap": 600.0}
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
        return {k: opt.last_step.get(k) for k in keep}

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

    summary = {name: first_reaching(r, args.target) for name, r in results.items()}
    for name, r in results.items():
        summary[name]["final_loss"] = r["losses"][-1]
        summary[name]["steps_per_10s"] = r["steps_per_10s"]
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
            "ngd": "NGD(model.parameters()) defaults: lr=1, Moore–Penrose, safeguard",
            "adam": "lr=1e-2",
            "lbfgs": "lr=1, history 20, strong Wolfe",
        },
        "summary": summary,
        "results": {name: thinned(r) for name, r in results.items()},
        "environment": collect_environment(device),
    }
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
