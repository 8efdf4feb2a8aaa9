"""T4, flows in two parametrisations: same model trajectory, different parameter trajectories.

Softmax p = softmax(ξ) with Fisher–Rao and L = KL(q‖p). The natural gradient flow ξ̇ = −G⁻∇ is integrated
(torchdiffeq, float64, tight tolerances) (a) in ξ with Moore–Penrose, (b) in a second chart ξ = f(η),
f(η) = s ⊙ η + 0.5 tanh(η) (a nonlinear diffeomorphism that does not preserve ker J) with Moore–Penrose,
(c) in ξ with the minimum-h-norm inverse. The model trajectories agree with each other and with
q + e^{−t}(p₀ − q); the parameter trajectories, compared in the ξ chart, differ by O(1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import natgrad as ng
from natgrad.experiments._base import Claim, Experiment, Progress
from natgrad.experiments._figures import pyplot, save_figure
from natgrad.experiments._invariance_common import (
    F64,
    PAPER,
    figure_path,
    floor_for_log,
    generator,
    kl_loss,
    random_distribution,
    random_spd,
    softmax,
)
from natgrad.flows import compare_parametrisations, natural_gradient_flow

MODEL_TOL = 1e-8
PARAM_MIN = 0.1
SCALES = (0.5, 1.0, 2.0, 3.0)


@dataclass(frozen=True)
class TwoChartsConfig:
    """Settings: start point η₀ (ξ₀ = f(η₀)), horizon, sample times and ODE tolerances."""

    seed: int = 0
    eta0: tuple[float, ...] = (1.2, -0.8, 0.3, 0.5)
    horizon: float = 4.0
    n_times: int = 17
    ode_rtol: float = 1e-9
    ode_atol: float = 1e-11


def config(quick: bool = False, seed: int = 0) -> TwoChartsConfig:
    if quick:
        return TwoChartsConfig(seed=seed, horizon=2.0, n_times=6)
    return TwoChartsConfig(seed=seed)


def chart(eta: torch.Tensor) -> torch.Tensor:
    """ξ = f(η) = s ⊙ η + 0.5 tanh(η): each coordinate strictly increasing, so f is a diffeomorphism."""
    return torch.tensor(SCALES, dtype=eta.dtype) * eta + 0.5 * torch.tanh(eta)


def run(cfg: TwoChartsConfig, progress: Progress) -> dict[str, Any]:
    gen = generator(cfg.seed)
    q = random_distribution(gen, len(SCALES))
    h = random_spd(gen, len(SCALES))
    metric, loss = ng.metrics.FisherRao(), kl_loss(q)
    eta0 = torch.tensor(cfg.eta0, dtype=F64)
    xi0 = chart(eta0)
    times = torch.linspace(0.0, cfg.horizon, cfg.n_times, dtype=F64)
    settings = {"rtol": cfg.ode_rtol, "atol": cfg.ode_atol}

    def in_eta(eta: torch.Tensor) -> torch.Tensor:
        return softmax(chart(eta))

    runs = [
        (
            "xi, Moore-Penrose",
            lambda: natural_gradient_flow(softmax, xi0, loss, metric, None, times, **settings),
        ),
        (
            "eta, Moore-Penrose",
            lambda: natural_gradient_flow(in_eta, eta0, loss, metric, None, times, **settings),
        ),
        (
            "xi, min h-norm",
            lambda: natural_gradient_flow(softmax, xi0, loss, metric, ng.MinNorm(h), times, **settings),
        ),
    ]
    trajs = {name: fn() for name, fn in progress(runs, description="flows in two charts")}
    base = trajs["xi, Moore-Penrose"]
    p0 = softmax(xi0)
    exact = q + torch.exp(-times)[:, None] * (p0 - q)
    out: dict[str, Any] = {"times": times.tolist(), "exact": exact.tolist(), "runs": {}}
    for name, traj in trajs.items():
        mapped = chart if name.startswith("eta") else None
        cmp = compare_parametrisations(base, traj, mapped)
        xi_t = traj.params if mapped is None else torch.stack([chart(e) for e in traj.params])
        out["runs"][name] = {
            "outputs": traj.outputs.tolist(),
            "params_in_xi": xi_t.tolist(),
            "model_gaps": list(cmp.model_gaps),
            "param_gaps": list(cmp.param_gaps),
            "max_model_gap": cmp.max_model_gap,
            "max_param_gap": cmp.max_param_gap,
            "closed_form_error": float(torch.linalg.vector_norm(traj.outputs - exact, dim=1).max()),
        }
    return out


def claims(results: dict[str, Any]) -> list[Claim]:
    r = results["runs"]
    others = [k for k in r if k != "xi, Moore-Penrose"]
    return [
        Claim(
            "model-trajectories-agree",
            "model trajectories of the flows in η (nonlinear chart) and in ξ with "
            "min-h-norm agree with the ξ Moore–Penrose flow: max_t ‖z_a(t) − z_b(t)‖",
            max(r[k]["max_model_gap"] for k in others),
            "<=",
            MODEL_TOL,
        ),
        Claim(
            "model-closed-form",
            "every flow follows q + e^{−t}(p₀ − q): max_t ‖p(t) − closed form‖",
            max(v["closed_form_error"] for v in r.values()),
            "<=",
            MODEL_TOL,
        ),
        Claim(
            "parameter-trajectories-differ",
            "parameter trajectories differ by O(1) in the ξ chart: "
            "min over the two comparisons of max_t ‖ξ_a(t) − ξ_b(t)‖",
            min(r[k]["max_param_gap"] for k in others),
            ">=",
            PARAM_MIN,
        ),
    ]


def figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = pyplot()
    t = results["times"]
    r = results["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    styles = {"xi, Moore-Penrose": "-", "eta, Moore-Penrose": "o", "xi, min h-norm": "x"}
    for name, v in r.items():
        for i, col in enumerate(zip(*v["outputs"], strict=True)):
            axes[0].plot(t, col, styles[name], color=f"C{i}", ms=4, label=name if i == 0 else None)
            axes[1].plot(
                t,
                [row[i] for row in v["params_in_xi"]],
                styles[name],
                color=f"C{i}",
                ms=4,
                label=name if i == 0 else None,
            )
    axes[0].set_title("model trajectories p(t)")
    axes[1].set_title("parameter trajectories, in the ξ chart")
    for name in r:
        if name != "xi, Moore-Penrose":
            axes[2].semilogy(t, floor_for_log(r[name]["model_gaps"]), "-o", ms=3, label=f"model gap: {name}")
            axes[2].semilogy(t, floor_for_log(r[name]["param_gaps"]), "--s", ms=3, label=f"param gap: {name}")
    axes[2].axhline(MODEL_TOL, color="k", ls=":", lw=1)
    axes[2].set_title("gaps to the ξ Moore–Penrose flow")
    for ax in axes:
        ax.set_xlabel("t")
        ax.legend(fontsize=6)
    path = save_figure(fig, figure_path(out_dir, "flows_two_charts"))
    return [path]


EXPERIMENT = Experiment(
    name="flows-two-charts",
    title="Natural gradient flows in two parametrisations: same model trajectory, different parameters",
    config=config,
    run=run,
    claims=claims,
    figures=figures,
    paper=PAPER,
    tags=("invariance", "T4", "flows"),
)
