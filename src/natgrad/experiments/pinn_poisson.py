"""Physics-informed network for −Δu = f on the unit square: energy natural gradient vs Adam and L-BFGS.

u*(x, y) = sin(πx) sin(πy), zero Dirichlet data. A tanh MLP is trained on the PINN loss ½‖r(θ)‖² (interior PDE
residuals and boundary values, see `_poisson`) by

* NGD on the residuals (Gauss–Newton natural gradient = energy natural gradient for this linear PDE): Euclidean
  metric on r, grid line search over 2⁻ᵏ, k = 0..29, and either the Moore–Penrose inverse with an explicit cutoff
  (``damping = 0``) or Levenberg–Marquardt damping (G + λI)⁻¹ adapted from the reduction ratio, which shrinks λ
  towards 1e-12 as the quadratic model becomes accurate, i.e. towards the Moore–Penrose step (the default:
  from the small initialisation, pure Moore–Penrose stalls on some seeds in the first steps);
* Adam (torch.optim, lr 1e-3) and L-BFGS (torch.optim, strong Wolfe line search),

each for the same time budget (time spent evaluating the test error excluded), all in float64 from the same
initial network. Time is the process CPU time: with one thread it equals wall-clock time on an otherwise idle
machine, and unlike wall-clock time it does not change when other work shares the cores. Reported: relative L2 error on a uniform test grid against time and against steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import natgrad as ng
from natgrad.experiments import _poisson as poisson
from natgrad.experiments._base import Claim, Experiment, Progress
from natgrad.experiments._figures import save_figure
from natgrad.optim import NGD


@dataclass(frozen=True)
class Config:
    """Settings of one run (quick or full)."""

    seed: int
    widths: tuple[int, ...]
    interior_per_side: int  # interior collocation grid: interior_per_side² points
    boundary_per_edge: int
    test_per_side: int
    budget_s: float  # wall-clock training time per method
    rtol: float  # Moore–Penrose cutoff on eigenvalues of G (rtol·λ_max)
    damping: float  # 0: Moore–Penrose; > 0: starting λ of Levenberg–Marquardt damping (G + λI)⁻¹
    grid_size: int
    adam_lr: float
    lbfgs_max_iter: int
    error_target: float  # claimed: NGD reaches this relative L2 error within the budget
    baseline_factor: float  # claimed: Adam and L-BFGS end at least this factor above NGD


def config(quick: bool, seed: int = 0) -> Config:
    if quick:
        return Config(seed, (24,), 12, 12, 48, 15.0, 1e-10, 1e-3, 30, 1e-3, 20, 1e-3, 10.0)
    return Config(seed, (32,), 16, 16, 100, 150.0, 1e-10, 1e-3, 30, 1e-3, 20, 1e-5, 10.0)


def _layers(params: dict[str, torch.Tensor], names: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(params[names[2 * i]], params[names[2 * i + 1]]) for i in range(len(names) // 2)]


class _Clock:
    """Training CPU time only: evaluation runs with the clock paused."""

    def __init__(self) -> None:
        self.elapsed = 0.0
        self._start = time.process_time()

    def pause(self) -> float:
        self.elapsed += time.process_time() - self._start
        return self.elapsed

    def resume(self) -> None:
        self._start = time.process_time()


def _train(method: str, cfg: Config, progress: Progress) -> dict[str, list[float]]:
    dtype = torch.float64
    model = poisson.tanh_mlp(cfg.widths, dtype, cfg.seed)
    names = [name for name, _ in model.named_parameters()]
    interior = poisson.interior_grid(cfg.interior_per_side, dtype)
    boundary = poisson.boundary_points(cfg.boundary_per_edge, dtype)
    test = poisson.interior_grid(cfg.test_per_side, dtype)
    exact = poisson.exact_solution(test)

    def value_and_laplacian(params, points):
        return poisson.tanh_mlp_value_and_laplacian(_layers(params, names), points)

    residual = poisson.residuals_from(value_and_laplacian, interior, boundary)

    def current() -> dict[str, torch.Tensor]:
        return dict(model.named_parameters())

    def loss_of_model() -> torch.Tensor:
        return 0.5 * residual(current()).pow(2).sum()

    def error() -> float:
        with torch.no_grad():
            values = value_and_laplacian({k: v.detach() for k, v in current().items()}, test)[0]
            return float(torch.linalg.vector_norm(values - exact) / torch.linalg.vector_norm(exact))

    history: dict[str, list[float]] = {"time": [0.0], "step": [0], "error": [error()], "loss": []}
    if method == "ngd":
        opt: Any = NGD(
            model.named_parameters(),
            lr=1.0,
            line_search="grid",
            line_search_grid=tuple(0.5**k for k in range(cfg.grid_size)),
            inverse=None if cfg.damping > 0 else ng.MoorePenrose(rtol=cfg.rtol),
            damping=cfg.damping,
            adaptive_damping=cfg.damping > 0,
        )

        def step() -> float:
            return float(opt.step(residual))

        eval_every = 1
    elif method == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.adam_lr)

        def step() -> float:
            opt.zero_grad()
            value = loss_of_model()
            value.backward()
            opt.step()
            return float(value.detach())

        eval_every = 50
    else:
        opt = torch.optim.LBFGS(
            model.parameters(),
            lr=1.0,
            max_iter=cfg.lbfgs_max_iter,
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

        eval_every = 1
    clock = _Clock()
    steps = 0
    ticker = iter(progress(range(10**9), description=f"poisson {method}"))
    while clock.elapsed < cfg.budget_s:
        next(ticker)
        clock.resume()
        try:
            loss_value = step()
        except ValueError:  # a non-finite loss stops this method's run; what it reached so far stands
            clock.pause()
            break
        elapsed = clock.pause()
        steps += 1
        if steps % eval_every == 0 or elapsed >= cfg.budget_s:
            history["time"].append(elapsed)
            history["step"].append(steps)
            history["error"].append(error())
            history["loss"].append(loss_value)
    return history


def run(cfg: Config, progress: Progress) -> dict[str, Any]:
    dtype_params = sum(p.numel() for p in poisson.tanh_mlp(cfg.widths, torch.float64, cfg.seed).parameters())
    results: dict[str, Any] = {
        "num_params": dtype_params,
        "num_residuals": cfg.interior_per_side**2 + 4 * cfg.boundary_per_edge,
        "budget_s": cfg.budget_s,
        "error_target": cfg.error_target,
        "baseline_factor": cfg.baseline_factor,
        "ngd_inverse": (
            f"Levenberg–Marquardt damping from {cfg.damping:g}"
            if cfg.damping > 0
            else f"Moore–Penrose, rtol {cfg.rtol:g}"
        ),
        "methods": {},
    }
    for method in ("ngd", "adam", "lbfgs"):
        history = _train(method, cfg, progress)
        results["methods"][method] = {
            **history,
            "final_error": history["error"][-1],
            "best_error": min(history["error"]),
        }
    return results


def claims(results: dict[str, Any]) -> list[Claim]:
    methods = results["methods"]
    ngd = methods["ngd"]["final_error"]
    budget = results["budget_s"]
    out = [
        Claim(
            "ngd-error",
            f"NGD (Gauss–Newton natural gradient, {results['ngd_inverse']}, grid line search) reaches a relative "
            f"L2 error of at most {results['error_target']:g} within {budget:g} s of training (CPU time)",
            ngd,
            "<=",
            results["error_target"],
        ),
    ]
    for name, label in (("adam", "Adam"), ("lbfgs", "L-BFGS")):
        final = methods[name]["final_error"]
        out.append(
            Claim(
                f"{name}-far-above",
                f"{label}'s final relative L2 error after the same {budget:g} s is at least "
                f"{results['baseline_factor']:g}× NGD's (ratio of final errors; {label} ends at {final:.2e})",
                final / ngd if ngd > 0 else float("inf"),
                ">=",
                results["baseline_factor"],
            )
        )
    return out


def figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = {"ngd": f"NGD ({results['ngd_inverse']})", "adam": "Adam", "lbfgs": "L-BFGS"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, history in results["methods"].items():
        axes[0].semilogy(history["time"], history["error"], label=labels[name])
        axes[1].loglog([max(s, 1) for s in history["step"]], history["error"], label=labels[name])
    axes[0].set_xlabel("training CPU time (s)")
    axes[1].set_xlabel("steps")
    for ax in axes:
        ax.set_ylabel("relative L2 error")
        ax.axhline(results["error_target"], color="grey", linestyle=":", linewidth=1)
        ax.legend()
    fig.suptitle(f"Poisson PINN, {results['num_params']} parameters, {results['num_residuals']} residuals")
    path = save_figure(fig, out_dir / "pinn_poisson_error.png")
    return [path]


EXPERIMENT = Experiment(
    name="pinn-poisson",
    title="PINN for the Poisson equation: energy natural gradient vs Adam and L-BFGS at equal wall-clock time",
    config=config,
    run=run,
    claims=claims,
    figures=figures,
    paper="practice",
)
