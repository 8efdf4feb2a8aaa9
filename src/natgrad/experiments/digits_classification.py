"""Handwritten digits (scikit-learn's 8×8 `load_digits`, shipped with the package): NGD vs SGD vs Adam.

A tanh MLP 64 → hidden → 10 is trained with softmax cross-entropy on mini-batches by

* NGD: categorical Fisher from the loss, exact per batch (engine route "auto"), Levenberg–Marquardt damping
  adapted from the reduction ratio but never below its starting value, Armijo backtracking on the batch loss;
* SGD with momentum 0.9 and Adam (torch.optim), learning rates fixed in the config,

each for the same budget of *gradient evaluations*, from the same initial network, the same fixed train/test
split and the same sequence of mini-batches. One gradient evaluation is the backward pass of one output of one
example: a first-order step on a batch of B examples costs B (the gradient of the batch loss), an NGD step
costs B·C with C = 10 classes (the exact Fisher needs the Jacobian of every logit). The budget is counted, not
timed, so the comparison and its claims are the same on an idle or a loaded machine and for the same seed
bit for bit. NGD's line-search trials are forward passes only and are not charged (their number is reported).
Wall-clock training time per method is measured and reported (``*_seconds``), never claimed.

Reported: test accuracy against the budget and against steps, and which method ends highest. The SGD and Adam
claims and the equal-budget comparison use the final evaluation; NGD's own accuracy claim uses the mean over the
evaluations in the last quarter of the budget (clearly labelled), because single mini-batch NGD steps move its
test accuracy by tens of percentage points between evaluations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from natgrad.experiments._base import Claim, Experiment, Progress
from natgrad.experiments._figures import pyplot, save_figure
from natgrad.optim import NGD, CrossEntropy, LevenbergMarquardt

METHODS = ("ngd", "sgd", "adam")
NUM_CLASSES = 10


@dataclass(frozen=True)
class Config:
    """Settings of one run (quick or full)."""

    seed: int
    hidden: int
    test_fraction: float
    batch_size: int
    budget: int  # gradient evaluations per method (see the module docstring)
    evaluations: int  # test-accuracy evaluations, evenly spaced over the budget
    ngd_damping: float
    sgd_lr: float
    adam_lr: float
    accuracy_target: float  # claimed for SGD and Adam
    ngd_accuracy_target: float  # claimed for NGD (lower: its mini-batch steps are noisy, see the report)


def config(quick: bool, seed: int = 0) -> Config:
    """Quick: 1280 first-order or 128 NGD steps of 32 examples; full: 25600 or 2560 steps.

    Full: at half that budget NGD's last-quarter mean accuracy was 0.854, 0.852 and 0.833 for seeds 0, 1, 2
    (below its target for seed 2); at this one 0.878, 0.874 and 0.867.
    """
    if quick:
        return Config(seed, 32, 0.3, 32, 40_960, 16, 1e-2, 0.1, 1e-3, 0.9, 0.7)
    return Config(seed, 64, 0.3, 32, 819_200, 40, 1e-2, 0.1, 1e-3, 0.9, 0.85)


def step_cost(method: str, batch_size: int) -> int:
    """Gradient evaluations one step of ``method`` charges (B for first-order methods, B·C for NGD)."""
    return batch_size * (NUM_CLASSES if method == "ngd" else 1)


def _data(cfg: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0 - 0.5, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.from_numpy(
        np.random.default_rng(12345).permutation(len(y))
    )  # one fixed split for all seeds
    n_test = int(round(cfg.test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _model(cfg: Config) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, cfg.hidden), torch.nn.Tanh(), torch.nn.Linear(cfg.hidden, 10)
    )


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).double().mean())


def _train(method: str, cfg: Config, data: tuple[torch.Tensor, ...], progress: Progress) -> dict[str, Any]:
    x_train, y_train, x_test, y_test = data
    model = _model(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    if method == "ngd":
        opt: Any = NGD(
            model.parameters(),
            lr=1.0,
            damping=cfg.ngd_damping,
            adaptive_damping=True,
            # λ never below its start: with a 32-example batch and thousands of parameters an undamped step
            # fits the batch exactly, and test accuracy collapses late in training (seen at λ → 1e-12)
            damping_schedule=LevenbergMarquardt(minimum=cfg.ngd_damping),
            line_search="backtracking",
        )
        forward = opt.functional(model)
    elif method == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.sgd_lr, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.adam_lr)

    forward_calls = 0  # NGD's calls of the batch forward (Jacobian pass and line-search trials)

    def batch_forward(params: Any, xb: torch.Tensor) -> torch.Tensor:
        nonlocal forward_calls
        forward_calls += 1
        return forward(params, xb)

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        if method == "ngd":
            opt.step(lambda p: batch_forward(p, xb), CrossEntropy(yb))
            return
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()

    cost = step_cost(method, cfg.batch_size)
    total_steps = cfg.budget // cost
    eval_steps = {round(total_steps * k / cfg.evaluations) for k in range(1, cfg.evaluations + 1)}
    first = _accuracy(model, x_test, y_test)
    history: dict[str, Any] = {"spent": [0], "step": [0], "test_accuracy": [first]}
    history.update({"checkpoint_step": [0], "checkpoint_accuracy": [first]})
    train_seconds = 0.0
    batches: list[torch.Tensor] = []
    for steps in progress(range(1, total_steps + 1), description=f"digits {method}"):
        if not batches:
            batches = list(torch.randperm(len(y_train), generator=generator).split(cfg.batch_size))
        index = batches.pop()
        started = time.perf_counter()
        step(x_train[index], y_train[index])
        train_seconds += time.perf_counter() - started
        if steps & (steps - 1) == 0:  # powers of two: accuracy against steps
            history["checkpoint_step"].append(steps)
            history["checkpoint_accuracy"].append(_accuracy(model, x_test, y_test))
        if steps in eval_steps:
            history["spent"].append(steps * cost)
            history["step"].append(steps)
            history["test_accuracy"].append(_accuracy(model, x_test, y_test))
    history["train_accuracy"] = [_accuracy(model, x_train, y_train)]
    history["step_cost"] = cost
    history["forward_calls"] = forward_calls
    history["train_seconds"] = train_seconds
    return history


def run(cfg: Config, progress: Progress) -> dict[str, Any]:
    data = _data(cfg)
    results: dict[str, Any] = {
        "budget_unit": "gradient evaluations (backward passes of one output of one example)",
        "num_train": len(data[1]),
        "num_test": len(data[3]),
        "num_params": sum(p.numel() for p in _model(cfg).parameters()),
        "budget": cfg.budget,
        "accuracy_target": cfg.accuracy_target,
        "ngd_accuracy_target": cfg.ngd_accuracy_target,
        "methods": {},
    }
    for method in METHODS:
        history = _train(method, cfg, data, progress)
        late = [
            a
            for spent, a in zip(history["spent"], history["test_accuracy"], strict=True)
            if spent >= 0.75 * cfg.budget
        ]
        results["methods"][method] = {
            **history,
            "final_test_accuracy": history["test_accuracy"][-1],
            "last_quarter_mean_accuracy": sum(late) / len(late),
            "last_quarter_range": [min(late), max(late)],
            "steps": history["step"][-1],
        }
    finals = {m: results["methods"][m]["final_test_accuracy"] for m in METHODS}
    results["winner"] = max(finals, key=finals.get)
    return results


def claims(results: dict[str, Any]) -> list[Claim]:
    methods = results["methods"]
    budget = results["budget"]
    finals = {m: methods[m]["final_test_accuracy"] for m in METHODS}
    best_baseline = max(finals["sgd"], finals["adam"])
    low, high = methods["ngd"]["last_quarter_range"]
    out = [
        Claim(
            "ngd-accuracy",
            f"NGD's mean test accuracy over the evaluations in the last quarter of a budget of {budget:,} "
            f"gradient evaluations ({methods['ngd']['steps']} steps; single evaluations there swing between "
            f"{low:.3f} and {high:.3f} with the mini-batch steps, the final one is {finals['ngd']:.3f})",
            methods["ngd"]["last_quarter_mean_accuracy"],
            ">=",
            results["ngd_accuracy_target"],
        )
    ]
    for name, label in (("sgd", "SGD (momentum 0.9)"), ("adam", "Adam")):
        out.append(
            Claim(
                f"{name}-accuracy",
                f"{label} test accuracy after the same budget ({methods[name]['steps']} steps), reported "
                "against the same target",
                finals[name],
                ">=",
                results["accuracy_target"],
            )
        )
    out.append(
        Claim(
            "equal-budget-margin",
            f"best of SGD and Adam minus NGD in final test accuracy at an equal budget of {budget:,} gradient "
            f"evaluations (winner: {results['winner']}); positive means the first-order methods win",
            best_baseline - finals["ngd"],
            ">",
            0.0,
        )
    )
    return out


def figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = {"ngd": "NGD (exact Fisher, LM damping)", "sgd": "SGD + momentum", "adam": "Adam"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, history in results["methods"].items():
        axes[0].plot(history["spent"], history["test_accuracy"], label=labels[name])
        axes[1].semilogx(
            [max(s, 1) for s in history["checkpoint_step"]],
            history["checkpoint_accuracy"],
            label=labels[name],
        )
    axes[0].set_xlabel("gradient evaluations (one output of one example each)")
    axes[1].set_xlabel("steps")
    for ax in axes:
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0.0, 1.0)
        ax.legend(loc="lower right")
    fig.suptitle(
        f"Digits ({results['num_train']} train / {results['num_test']} test), MLP {results['num_params']} params"
    )
    path = save_figure(fig, out_dir / "digits_accuracy.png")
    return [path]


EXPERIMENT = Experiment(
    name="digits-classification",
    title="Digits classification: NGD vs SGD vs Adam at an equal budget of gradient evaluations",
    config=config,
    run=run,
    claims=claims,
    figures=figures,
    paper="practice",
)
