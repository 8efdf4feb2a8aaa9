"""Training a `natgrad.pde.Problem` by several methods on equal budgets, and what the PDE experiments report.

Methods, each from the same initial network (a fresh copy per method) on the same collocation points — fixed,
or with ``resample_every`` = k fresh ones every k steps, the same seeded sequence for every method (a
`pde.Resampler` per method, made by the experiment's ``resampler`` factory; the points of step s are drawn
before step s, so step 0 sees the first draw):

* ``ngd``: `natgrad.optim.NGD` on the residuals — Gauss–Newton natural gradient (= energy natural gradient for
  a linear PDE), Moore–Penrose inverse (cutoff ``rtol``·λ_max, natgrad's default when None), grid line search
  α ∈ {2⁻ᵏ, k < grid_size}; the route is natgrad's ``auto`` (the d×d primal system when d ≤ N, the N×N dual
  system when d > N); with ``damping`` λ > 0 instead the Levenberg–Marquardt step (G + λI)⁻¹∇, on the dual
  route Jᵀ(K + λI)⁻¹r, one Cholesky factorisation of K + λI;
  with ``gram_average`` = β the step solves with the moving average Ḡ_t = β Ḡ_{t−1} + (1 − β) JᵀJ instead
  (`natgrad.optim.AveragedGram`, damped by ``damping``);
* ``ngd-primal``: the same step forced onto the primal route (factorising the d×d Gram matrix, as the exact
  ENGD implementations of the literature do), to show what the size-chosen route avoids;
* ``adam``: torch.optim.Adam; ``lbfgs``: torch.optim.LBFGS with a strong Wolfe line search (one step = one
  ``optimizer.step`` of at most ``lbfgs_max_iter`` inner iterations).

Two kinds of budget:

* step counts (``steps``): the same seed gives the same errors whatever else the machine runs; the quick
  settings and their claims use them;
* CPU time (``cpu_budget_s``): every method trains until the process CPU time of its steps
  (``time.process_time``, one torch thread, error evaluations not charged) reaches the same number of
  seconds; ``steps`` is then only a cap. With one thread, CPU time measures the work a method does, which
  other jobs on a shared machine do not inflate (wall-clock time they do); the step that crosses the budget
  is finished and counted, so a method may overrun by less than one of its steps (recorded).

Wall-clock training time (paused while the error is evaluated) is recorded next to the CPU time. Time to
10⁻⁴, 10⁻⁵, 10⁻⁶ is read off the evaluations (`first_reached`) and reported, never claimed. With
``parallel_methods`` each method trains in its own forked single-threaded process (CPU only): the budgets
and histories are per process, so this changes the elapsed time of the whole run, not the results.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import natgrad as ng
from natgrad import pde
from natgrad.experiments._base import Claim, Progress, no_progress
from natgrad.experiments._figures import pyplot, save_figure
from natgrad.experiments._timing import TrainingClock, fixed_threads
from natgrad.optim import NGD, AveragedGram, default_grid

THRESHOLDS = (1e-4, 1e-5, 1e-6)
LABELS = {
    "ngd": "ENGD (natgrad auto route)",
    "ngd-primal": "ENGD, primal d×d route",
    "adam": "Adam",
    "lbfgs": "L-BFGS",
}


# Training fields read only by the ENGD methods ("ngd", "ngd-primal"): a baseline's record does not depend on them
NGD_ONLY_FIELDS = frozenset(
    {
        "rtol",
        "primal_rtol",
        "residual_svd",
        "primal_memory_budget",
        "gram_average",
        "damping",
        "geodesic_acceleration",
        "search_next_points",
    }
)


@dataclass(frozen=True)
class Training:
    """Optimizer settings shared by the PDE experiments."""

    steps: tuple[tuple[str, int], ...]  # (method, optimizer steps): the budget, or a cap under cpu_budget_s
    eval_every: tuple[tuple[str, int], ...]  # (method, steps between error evaluations)
    grid_size: int = 30
    adam_lr: float = 1e-3
    lbfgs_max_iter: int = 20
    rtol: float | None = None  # Moore–Penrose cutoff on eigenvalues (rtol·λ_max); None: NGD's default for
    # residuals, natgrad.linalg.residual_rtol
    # the primal route's cutoff: None is MoorePenrose's plain default 10·min(N, d)·eps. A cutoff below the
    # rounding floor of the d×d Gram matrix JᵀJ (its d − N zero eigenvalues come out at a few eps·λ_max when
    # d > N) would invert rounding noise
    primal_rtol: float | None = None
    residual_svd: bool = False  # ngd: NGD(residual_svd=True), the SVD of J for float64 residuals with d ≤ N
    primal_memory_budget: int = 2**34  # bytes the forced primal route may allocate (its d×d matrices)
    # ngd: β of natgrad.optim.AveragedGram — the step solves with Ḡ_t = β Ḡ_{t−1} + (1 − β) JᵀJ, Ḡ_0 = 0
    gram_average: float | None = None
    threads: int = 1
    resample_every: int | None = None  # fresh collocation points every k steps (None: fixed points)
    damping: float = 0.0  # ngd: λ > 0 for (G + λI)⁻¹∇ instead of the Moore–Penrose inverse
    geodesic_acceleration: bool = (
        False  # ngd: NGD(geodesic_acceleration=True), the grid search on θ − αd − ½α²a
    )
    # ngd: the grid search of step s on the points of the next draw (``NGD.step(problem, search=...)``), so α
    # is chosen by a loss the step did not fit; needs resample_every
    search_next_points: bool = False
    cpu_budget_s: float | None = None  # equal CPU-time budget per method (process_time of its steps)
    parallel_methods: bool = (
        False  # one forked process per method (CPU only; same results, less elapsed time)
    )

    def __post_init__(self) -> None:
        if self.cpu_budget_s is not None and not (
            isinstance(self.cpu_budget_s, int | float) and self.cpu_budget_s > 0
        ):
            raise ValueError(
                f"Training: cpu_budget_s must be a number of seconds > 0 or None, got {self.cpu_budget_s!r}"
            )
        if self.resample_every is not None and not (
            isinstance(self.resample_every, int) and self.resample_every >= 1
        ):
            raise ValueError(
                f"Training: resample_every must be a number of steps >= 1 or None, got {self.resample_every!r}"
            )
        if not (isinstance(self.damping, int | float) and self.damping >= 0):
            raise ValueError(f"Training: damping must be a number >= 0, got {self.damping!r}")
        if not isinstance(self.geodesic_acceleration, bool):
            raise ValueError(
                f"Training: geodesic_acceleration must be True or False, got {self.geodesic_acceleration!r}"
            )
        if not isinstance(self.search_next_points, bool):
            raise ValueError(
                f"Training: search_next_points must be True or False, got {self.search_next_points!r}"
            )
        if self.search_next_points and self.resample_every is None:
            raise ValueError(
                "Training: search_next_points=True searches on the next draw of points and needs "
                "resample_every (fixed points have no next draw)"
            )
        if self.gram_average is not None and not (
            isinstance(self.gram_average, int | float) and 0 <= self.gram_average < 1
        ):
            raise ValueError(
                f"Training: gram_average must be None or a decay in [0, 1), got {self.gram_average!r}"
            )
        unknown = sorted({m for m, _ in self.steps} - set(LABELS))
        if unknown:
            raise ValueError(
                f"Training: unknown method(s) {unknown} in steps; expected names from {sorted(LABELS)}"
            )
        missing = sorted({m for m, _ in self.steps} - {m for m, _ in self.eval_every})
        if missing:
            raise ValueError(f"Training: method(s) {missing} have a step budget but no eval_every entry")


def train(
    method: str,
    steps: int,
    eval_every: int,
    problem: pde.Problem,
    error: Callable[[], float],
    settings: Training,
    progress: Progress,
    resampler: pde.Resampler | None = None,
    search_resampler: pde.Resampler | None = None,
) -> dict[str, list[float]]:
    """Train ``problem.network`` in place by ``method`` for ``steps`` steps; the error / loss / time history.

    With a ``resampler`` (a sampler of {condition label: points}) the problem gets the points of step s
    before step s; drawing them is charged to neither clock (it is the same work for every method). A
    ``search_resampler`` (a second resampler with the same seed, ENGD only) keeps a copy of the problem on the
    next draw's points, and step s's grid search minimises the loss there (``NGD.step(problem, search=...)``).
    """
    module = problem.network.module
    named = dict(module.named_parameters())
    grid = default_grid(settings.grid_size)
    search: pde.Problem | None = None  # ENGD's grid search on the next draw's points (search_resampler)

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
            damping=settings.damping if method == "ngd" else 0.0,
            inverse=(
                ng.MoorePenrose(rtol=settings.primal_rtol)
                if method == "ngd-primal"
                else None
                if settings.rtol is None or settings.damping > 0
                else ng.MoorePenrose(rtol=settings.rtol)
            ),
            method="auto" if method == "ngd" else "primal",
            factorize=(
                primal_factorize
                if method == "ngd-primal"
                else AveragedGram(settings.gram_average)
                if settings.gram_average is not None
                else None
            ),
            residual_svd=settings.residual_svd and method == "ngd",
            geodesic_acceleration=settings.geodesic_acceleration and method == "ngd",
        )

        if search_resampler is not None:
            if resampler is None:
                raise ValueError("train: a search_resampler needs the resampler it runs one draw ahead of")
            search = problem.held_out()
            search_resampler(0)  # the training points' first draw: from here on one draw ahead

        def step() -> float:
            return float(opt.step(problem, search=search))

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
    budget = settings.cpu_budget_s
    for taken in progress(range(1, steps + 1), description=method, total=steps):
        if resampler is not None:
            resampler.update(problem, taken - 1)
        if search is not None and search_resampler is not None and resampler is not None:
            search_resampler.update(search, taken - 1 + resampler.every)
        clock.resume()
        cpu_start = time.process_time()
        try:
            loss_value = step()
        except ValueError:  # a non-finite loss stops this method's run; what it reached so far stands
            clock.pause()
            break
        cpu += time.process_time() - cpu_start
        elapsed = clock.pause()
        spent = budget is not None and cpu >= budget
        if taken % eval_every == 0 or taken == steps or spent:
            history["time"].append(elapsed)
            history["cpu_time"].append(cpu)
            history["step"].append(taken)
            history["error"].append(error())
            history["loss"].append(loss_value)
        if spent:
            break
    return history


def first_reached(history: dict[str, list[float]], threshold: float, key: str) -> float | None:
    """The first recorded ``key`` ("time", "cpu_time" or "step") at which the error is ≤ threshold; None if never."""
    for value, err in zip(history[key], history["error"], strict=True):
        if err <= threshold:
            return value
    return None


def warm_up(problem: pde.Problem) -> None:
    """One small Jacobian: the first torch.func transform of a process pays one-off imports (seconds)."""
    first = problem.conditions[0]
    small = pde.Problem(problem.network, [pde.Condition(first.kind, first.points[:2], first.residual)])
    small.jacobian(problem.network.params())


def method_record(
    method: str,
    steps: int,
    make_problem: Callable[[], pde.Problem],
    error_of: Callable[[pde.Problem], float],
    settings: Training,
    progress: Progress,
    resampler: Callable[[], pde.Resampler] | None = None,
) -> dict[str, Any]:
    """Train one method on a fresh problem; its history and what is read off it (one entry of `run_methods`).

    `run_methods` calls it for every method; it can also run alone (one method per job) and the records be
    put together by `combine_records`: the results are the same, since every method starts afresh.

    Args:
        resampler: makes a fresh seeded `pde.Resampler` of {condition label: points} (one per method, so
            every method sees the same sequence); required exactly when ``settings.resample_every`` is set.
    """
    if (resampler is None) != (settings.resample_every is None):
        raise ValueError(
            f"method_record: resample_every={settings.resample_every!r} needs a resampler factory and a "
            "resampler factory needs resample_every; pass both or neither"
        )
    problem = make_problem()
    searches = settings.search_next_points and method == "ngd"
    history = train(
        method,
        steps,
        dict(settings.eval_every)[method],
        problem,
        lambda: error_of(problem),
        settings,
        progress,
        None if resampler is None else resampler(),
        None if resampler is None or not searches else resampler(),
    )
    return {
        **history,
        "num_params": ng.num_params(problem.network.params()),
        "num_residuals": problem.num_residuals,
        "final_error": history["error"][-1],
        "best_error": min(history["error"]),
        "steps_taken": history["step"][-1],
        "training_time_s": history["time"][-1],
        "training_cpu_s": history["cpu_time"][-1],
        "time_to": {f"{t:g}": first_reached(history, t, "time") for t in THRESHOLDS},
        "cpu_time_to": {f"{t:g}": first_reached(history, t, "cpu_time") for t in THRESHOLDS},
        "steps_to": {f"{t:g}": first_reached(history, t, "step") for t in THRESHOLDS},
    }


def _can_fork() -> bool:
    """Forked workers only where fork exists and no CUDA context would be inherited (CUDA breaks on fork)."""
    return "fork" in multiprocessing.get_all_start_methods() and not torch.cuda.is_initialized()


def _forked_records(jobs: list[tuple[str, int]], record: Callable[[str, int], dict[str, Any]]) -> list[Any]:
    """``record(method, steps)`` for every job, each in its own forked process; results in job order."""
    context = multiprocessing.get_context("fork")
    running = []
    for method, steps in jobs:
        receive, send = context.Pipe(duplex=False)

        def work(method: str = method, steps: int = steps, send: Any = send) -> None:
            try:
                send.send(("ok", record(method, steps)))
            except BaseException as error:  # reported to the parent, which raises
                send.send(("error", f"{type(error).__name__}: {error}"))
            finally:
                send.close()

        process = context.Process(target=work, name=f"pde-{method}")
        process.start()
        send.close()
        running.append((method, process, receive))
    out = []
    for method, process, receive in running:
        try:
            status, payload = receive.recv()
        except EOFError:
            status, payload = "error", "the worker process died without a result"
        process.join()
        if status != "ok":
            raise RuntimeError(f"run_methods: method {method!r} failed in its worker process: {payload}")
        out.append(payload)
    return out


def run_methods(
    make_problem: Callable[[], pde.Problem],
    error_of: Callable[[pde.Problem], float],
    settings: Training,
    progress: Progress,
    resampler: Callable[[], pde.Resampler] | None = None,
) -> dict[str, Any]:
    """Every method of ``settings.steps`` on a fresh problem from ``make_problem`` (same seed ⇒ same start).

    ``resampler``: as in `method_record` (fresh points every ``settings.resample_every`` steps).
    """
    jobs = list(settings.steps)
    parallel = settings.parallel_methods and len(jobs) > 1 and _can_fork()
    with fixed_threads(settings.threads) as threads:
        warm_up(make_problem())

        def record(method: str, steps: int, progress: Progress = progress) -> dict[str, Any]:
            return method_record(method, steps, make_problem, error_of, settings, progress, resampler)

        if parallel:
            records = _forked_records(jobs, lambda m, s: record(m, s, no_progress))
        else:
            records = [record(method, steps) for method, steps in jobs]
    return combine_records(settings, threads, parallel, dict(zip((m for m, _ in jobs), records, strict=True)))


def combine_records(
    settings: Training, threads: int, parallel: bool, records: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The results of `run_methods` from one `method_record` per method of ``settings.steps``.

    Raises:
        ValueError: a method of ``settings.steps`` has no record, or the records disagree on the problem size.
    """
    missing = [m for m, _ in settings.steps if m not in records]
    if missing:
        raise ValueError(f"combine_records: no record for method(s) {missing}; run each with method_record")
    methods = {m: dict(records[m]) for m, _ in settings.steps}
    sizes = {(rec.pop("num_params"), rec.pop("num_residuals")) for rec in methods.values()}
    if len(sizes) != 1:
        raise ValueError(f"combine_records: the records are of different problems (d, N) = {sorted(sizes)}")
    ((num_params, num_residuals),) = sizes
    budget = (
        f"equal CPU time per method: {settings.cpu_budget_s:g} s of process_time of its training steps, "
        f"{threads} torch thread(s) (step caps {dict(settings.steps)})"
        if settings.cpu_budget_s is not None
        else "fixed number of optimizer steps per method (the claims rest on it)"
    )
    return {
        "torch_threads": threads,
        "budget": budget,
        "cpu_budget_s": settings.cpu_budget_s,
        "parallel_methods": parallel,
        "clock": "wall-clock (perf_counter) and process CPU time (process_time, which a machine shared with "
        "other work does not inflate), training steps only, one fixed torch thread count; reported, not claimed",
        "num_params": num_params,
        "num_residuals": num_residuals,
        "steps": dict(settings.steps),
        "rtol": settings.rtol,
        "gram_average": settings.gram_average,
        "residual_svd": settings.residual_svd,
        "primal_rtol": settings.primal_rtol,
        "resample_every": settings.resample_every,
        "damping": settings.damping,
        "geodesic_acceleration": settings.geodesic_acceleration,
        "search_next_points": settings.search_next_points,
        "methods": methods,
    }


def with_cpu_per_step(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with each method's training CPU seconds per step added (the size experiments report it)."""
    for m in results["methods"].values():
        m["cpu_seconds_per_step"] = m["training_cpu_s"] / max(m["steps_taken"], 1)
    return results


def _solve(results: dict[str, Any]) -> str:
    """How the ENGD direction is solved, and on which points, for the claim's statement."""
    damping, rtol, every = results.get("damping", 0.0), results.get("rtol"), results.get("resample_every")
    average = results.get("gram_average")
    inverse = (
        f"damping λ = {damping:g}"
        if damping
        else "Moore–Penrose" + ("" if rtol is None or average is not None else f" with cutoff {rtol:g}·λ_max")
    )
    if average is not None:
        inverse += f" on the moving average G_t = {average:g}·G_(t−1) + {1 - average:g}·JᵀJ, G_0 = 0"
    if results.get("geodesic_acceleration"):
        inverse += ", geodesic acceleration (search along θ − αd − ½α²a)"
    if results.get("search_next_points"):
        inverse += ", α chosen on the next draw's points"
    return inverse + ("" if every is None else f", fresh collocation points every {every} step(s)")


def _route(results: dict[str, Any]) -> str:
    if results["num_params"] > results["num_residuals"]:
        return "dual"
    return "SVD of J, NGD(residual_svd=True)" if results.get("residual_svd") else "primal"


def _timing(results: dict[str, Any], name: str) -> str:
    m = results["methods"][name]
    return f"{m['steps_taken']} steps, {m['training_cpu_s']:.1f} s CPU"


def _budget_of(results: dict[str, Any], name: str) -> str:
    """ "after 300 steps" on step budgets, "within 1000 s of CPU time (712 steps)" on CPU-time budgets."""
    method = results["methods"][name]
    budget = method.get("cpu_budget_s", results.get("cpu_budget_s"))  # a method may have had its own
    taken = method["steps_taken"]
    if budget is None:
        return f"after {results['steps'][name]} steps"
    return f"within {budget:g} s of single-threaded CPU time ({taken} steps)"


def _reported(results: dict[str, Any]) -> str:
    if results.get("cpu_budget_s") is None:
        return "times are reported, not claimed"
    return "CPU-time budget; the errors depend on the machine's speed, not on its load"


def standard_claims(
    results: dict[str, Any], error_target: float, baseline_factors: dict[str, float]
) -> list[Claim]:
    """ENGD reaches ``error_target``; each baseline ``m`` ends at least ``baseline_factors[m]`` above it."""
    methods = results["methods"]
    ngd = methods["ngd"]["final_error"]
    out = [
        Claim(
            "ngd-error",
            f"ENGD (Gauss–Newton on the residuals, {_solve(results)}, grid line search; route "
            f"{_route(results)}) reaches a relative "
            f"L2 error of at most {error_target:g} {_budget_of(results, 'ngd')} "
            f"({_timing(results, 'ngd')} of training, {results['torch_threads']} torch thread(s); "
            f"{_reported(results)})",
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
                f"{LABELS[name]}'s final relative L2 error {_budget_of(results, name)} "
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
