"""Training a `natgrad.pde.Problem` by several methods on fixed step budgets, and what the PDE experiments report.

Methods, each from the same initial network (a fresh copy per method) on the same collocation points:

* ``ngd``: `natgrad.optim.NGD` on the residuals — Gauss–Newton natural gradient (= energy natural gradient for
  a linear PDE), Moore–Penrose inverse with the default cutoff, grid line search α ∈ {2⁻ᵏ, k < grid_size};
  the route is natgrad's ``auto`` (the d×d primal system when d ≤ N, the N×N dual system when d > N);
* ``ngd-primal``: the same step forced onto the primal route (factorising the d×d Gram matrix, as the exact
  ENGD implementations of the literature do), to show what the size-chosen route avoids;
* ``adam``: torch.optim.Adam; ``lbfgs``: torch.optim.LBFGS with a strong Wolfe line search (one step = one
  ``optimizer.step`` of at most ``lbfgs_max_iter`` inner iterations).

Budgets are step counts, so the same seed gives the same errors whatever else the machine runs. Wall-clock
training time (paused while the error is evaluated, one fixed torch thread count for every method) is
recorded next to every evaluation, together with the process CPU time of the steps (with one torch thread it
measures the work done, which other jobs on a shared machine do not inflate), and reported — time to 10⁻⁴,
10⁻⁵, 10⁻⁶ — but never claimed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import natgrad as ng
from natgrad import pde
from natgrad.experiments._base import Claim, Progress
from natgrad.experiments._figures import pyplot, save_figure
from natgrad.experiments._timing import TrainingClock, fixed_threads
from natgrad.optim import NGD

THRESHOLDS = (1e-4, 1e-5, 1e-6)
LABELS = {
    "ngd": "ENGD (natgrad auto route)",
    "ngd-primal": "ENGD, primal d×d route",
    "adam": "Adam",
    "lbfgs": "L-BFGS",
}


@dataclass(frozen=True)
class Training:
    """Optimizer settings shared by the PDE experiments."""

    steps: tuple[tuple[str, int], ...]  # (method, optimizer steps): the deterministic budget
    eval_every: tuple[tuple[str, int], ...]  # (method, steps between error evaluations)
    grid_size: int = 30
    adam_lr: float = 1e-3
    lbfgs_max_iter: int = 20
    rtol: float | None = None  # Moore–Penrose cutoff on eigenvalues (rtol·λ_max); None: NGD's default for
    # residuals, natgrad.linalg.residual_rtol
    primal_memory_budget: int = 2**34  # bytes the forced primal route may allocate (its d×d matrices)
    threads: int = 1


def train(
    method: str,
    steps: int,
    eval_every: int,
    problem: pde.Problem,
    error: Callable[[], float],
    settings: Training,
    progress: Progress,
) -> dict[str, list[float]]:
    """Train ``problem.network`` in place by ``method`` for ``steps`` steps; the error / loss / time history."""
    module = problem.network.module
    named = dict(module.named_parameters())
    grid = tuple(0.5**k for k in range(settings.grid_size))

    def loss_of_model() -> torch.Tensor:
        return problem.loss(named)

    if method in ("ngd", "ngd-primal"):

        def primal_factorize(
            forward: Any, theta: dict[str, torch.Tensor], metric: Any, inverse: Any, route: str
        ) -> ng.GramFactorization:
            # the d×d matrices of the forced primal route may need more than the engine's default budget
            return ng.factorize(
                forward, theta, metric, inverse, route, memory_budget=settings.primal_memory_budget
            )

        opt: Any = NGD(
            module.named_parameters(),
            lr=1.0,
            line_search="grid",
            line_search_grid=grid,
            inverse=None if settings.rtol is None else ng.MoorePenrose(rtol=settings.rtol),
            method="auto" if method == "ngd" else "primal",
            factorize=primal_factorize if method == "ngd-primal" else None,
        )

        def step() -> float:
            return float(opt.step(problem))

    elif method == "adam":
        opt = torch.optim.Adam(module.parameters(), lr=settings.adam_lr)

        def step() -> float:
            opt.zero_grad()
            value = loss_of_model()
            value.backward()
            opt.step()
            return float(value.detach())

    elif method == "lbfgs":
        opt = torch.optim.LBFGS(
            module.parameters(),
            lr=1.0,
            max_iter=settings.lbfgs_max_iter,
            history_size=50,
            tolerance_grad=0.0,
            tolerance_change=0.0,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            value = loss_of_model()
            value.backward()
            return value

        def step() -> float:
            return float(opt.step(closure).detach())

    else:
        raise ValueError(f"train: unknown method {method!r}; expected one of {sorted(LABELS)}")

    history: dict[str, list[float]] = {
        "time": [0.0],
        "cpu_time": [0.0],
        "step": [0],
        "error": [error()],
        "loss": [],
    }
    clock = TrainingClock()
    cpu = 0.0
    for taken in progress(range(1, steps + 1), description=method, total=steps):
        clock.resume()
        cpu_start = time.process_time()
        try:
            loss_value = step()
        except ValueError:  # a non-finite loss stops this method's run; what it reached so far stands
            clock.pause()
            break
        cpu += time.process_time() - cpu_start
        elapsed = clock.pause()
        if taken % eval_every == 0 or taken == steps:
            history["time"].append(elapsed)
            history["cpu_time"].append(cpu)
            history["step"].append(taken)
            history["error"].append(error())
            history["loss"].append(loss_value)
    return history


def first_reached(history: dict[str, list[float]], threshold: float, key: str) -> float | None:
    """The first recorded ``key`` ("time", "cpu_time" or "step") at which the error is ≤ threshold; None if never."""
    for value, err in zip(history[key], history["error"], strict=True):
        if err <= threshold:
            return value
    return None


def _warm_up(problem: pde.Problem) -> None:
    """One small Jacobian: the first torch.func transform of a process pays one-off imports (seconds)."""
    first = problem.conditions[0]
    small = pde.Problem(problem.network, [pde.Condition(first.kind, first.points[:2], first.residual)])
    small.jacobian(problem.network.params())


def run_methods(
    make_problem: Callable[[], pde.Problem],
    error_of: Callable[[pde.Problem], float],
    settings: Training,
    progress: Progress,
) -> dict[str, Any]:
    """Every method of ``settings.steps`` on a fresh problem from ``make_problem`` (same seed ⇒ same start)."""
    with fixed_threads(settings.threads) as threads:
        every = dict(settings.eval_every)
        _warm_up(make_problem())
        methods: dict[str, Any] = {}
        num_params = num_residuals = 0
        for method, steps in settings.steps:
            problem = make_problem()
            num_params = ng.num_params(problem.network.params())
            num_residuals = problem.num_residuals
            history = train(
                method, steps, every[method], problem, lambda p=problem: error_of(p), settings, progress
            )
            methods[method] = {
                **history,
                "final_error": history["error"][-1],
                "best_error": min(history["error"]),
                "steps_taken": history["step"][-1],
                "training_time_s": history["time"][-1],
                "training_cpu_s": history["cpu_time"][-1],
                "time_to": {f"{t:g}": first_reached(history, t, "time") for t in THRESHOLDS},
                "cpu_time_to": {f"{t:g}": first_reached(history, t, "cpu_time") for t in THRESHOLDS},
                "steps_to": {f"{t:g}": first_reached(history, t, "step") for t in THRESHOLDS},
            }
    return {
        "torch_threads": threads,
        "budget": "fixed number of optimizer steps per method (the claims rest on it)",
        "clock": "wall-clock (perf_counter) and process CPU time (process_time, which a machine shared with "
        "other work does not inflate), training steps only, one fixed torch thread count; reported, not claimed",
        "num_params": num_params,
        "num_residuals": num_residuals,
        "steps": dict(settings.steps),
        "rtol": settings.rtol,
        "methods": methods,
    }


def _cutoff(results: dict[str, Any]) -> str:
    rtol = results.get("rtol")
    return "" if rtol is None else f" with cutoff {rtol:g}·λ_max"


def _timing(results: dict[str, Any], name: str) -> str:
    m = results["methods"][name]
    return f"{m['steps_taken']} steps, {m['training_cpu_s']:.1f} s CPU"


def standard_claims(
    results: dict[str, Any], error_target: float, baseline_factors: dict[str, float]
) -> list[Claim]:
    """ENGD reaches ``error_target``; each baseline ``m`` ends at least ``baseline_factors[m]`` above it."""
    methods = results["methods"]
    ngd = methods["ngd"]["final_error"]
    out = [
        Claim(
            "ngd-error",
            f"ENGD (Gauss–Newton on the residuals, Moore–Penrose{_cutoff(results)}, grid line search; route "
            f"{'primal' if results['num_params'] <= results['num_residuals'] else 'dual'}) reaches a relative "
            f"L2 error of at most {error_target:g} after {results['steps']['ngd']} steps "
            f"({_timing(results, 'ngd')} of training, {results['torch_threads']} torch thread(s); times are "
            "reported, not claimed)",
            ngd,
            "<=",
            error_target,
        )
    ]
    for name, factor in baseline_factors.items():
        final = methods[name]["final_error"]
        out.append(
            Claim(
                f"{name}-far-above",
                f"{LABELS[name]}'s final relative L2 error after {results['steps'][name]} steps "
                f"({_timing(results, name)}; ENGD: {_timing(results, 'ngd')}) is at least {factor:g}× "
                f"ENGD's (ratio of final errors; {LABELS[name]} ends at {final:.2e})",
                final / ngd if ngd > 0 else float("inf"),
                ">=",
                factor,
            )
        )
    return out


def error_figure(results: dict[str, Any], out_dir: Path, filename: str, title: str) -> Path:
    """Relative L2 error against training time and against steps, one line per method."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, history in results["methods"].items():
        label = LABELS.get(name, name)
        axes[0].semilogy(history["cpu_time"], history["error"], label=label)
        axes[1].loglog([max(s, 1) for s in history["step"]], history["error"], label=label)
    axes[0].set_xlabel(f"training CPU time (s), {results['torch_threads']} torch thread(s)")
    axes[1].set_xlabel("optimizer steps")
    for ax in axes:
        ax.set_ylabel("relative L2 error")
        for t in THRESHOLDS:
            ax.axhline(t, color="grey", linestyle=":", linewidth=0.8)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: d = {results['num_params']} parameters, N = {results['num_residuals']} residuals")
    return save_figure(fig, Path(out_dir) / filename)


def time_to_table(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """{method: {threshold: seconds or None}} — for the report (not a claim)."""
    return {name: m["time_to"] for name, m in results["methods"].items()}
