"""T4, one finite step: natural gradient steps in two parametrisations land O(ε²) apart on the model.

Softmax p = softmax(ξ) with Fisher–Rao and L = KL(q‖p); the second chart is ξ = f(η) with the nonlinear
diffeomorphism f(η) = s ⊙ η + 0.5 tanh(η). One step of size ε from the same model point: the model points
differ by O(ε²) (fitted log–log slope 2) while the parameter points, compared in ξ, differ by O(ε) (slope 1),
since F w_η ≠ v_ξ. The same holds for two generalized inverses (Moore–Penrose, minimum-h-norm) in one chart
of a model with curved fibres, p = softmax(W tanh ξ) (d = 5, rank 3). (For plain softmax the fibres are
the lines ξ + c·1, so there two inverses give identical model points for every ε.)
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
    generator,
    kl_loss,
    loglog_fit,
    randn,
    random_distribution,
    random_spd,
    softmax,
)
from natgrad.experiments.flows_two_charts import chart
from natgrad.flows import natural_gradient_descent

SLOPE_TOL = 0.1


@dataclass(frozen=True)
class FiniteStepConfig:
    """Settings: start point η₀ and the step sizes ε (log-spaced)."""

    seed: int = 0
    eta0: tuple[float, ...] = (1.2, -0.8, 0.3, 0.5)
    log10_steps: tuple[float, ...] = (-5.0, -4.5, -4.0, -3.5, -3.0, -2.5)


def config(quick: bool = False, seed: int = 0) -> FiniteStepConfig:
    if quick:
        return FiniteStepConfig(seed=seed, log10_steps=(-5.0, -4.0, -3.0))
    return FiniteStepConfig(seed=seed)


def run(cfg: FiniteStepConfig, progress: Progress) -> dict[str, Any]:
    gen = generator(cfg.seed)
    q = random_distribution(gen, 4)
    h = random_spd(gen, 5)
    w_mat = randn(gen, 4, 5)
    metric, loss = ng.metrics.FisherRao(), kl_loss(q)
    eta0 = torch.tensor(cfg.eta0, dtype=F64)
    xi0 = chart(eta0)

    def in_eta(eta: torch.Tensor) -> torch.Tensor:
        return softmax(chart(eta))

    def curved(xi: torch.Tensor) -> torch.Tensor:
        return softmax(w_mat @ torch.tanh(xi))

    xi_curved = 0.5 * randn(gen, 5)

    steps = [10.0**e for e in cfg.log10_steps]
    rows = []
    for eps in progress(steps, description="finite step sizes"):
        a = natural_gradient_descent(softmax, xi0, loss, metric, None, step_size=eps, n_steps=1)
        b = natural_gradient_descent(in_eta, eta0, loss, metric, None, step_size=eps, n_steps=1)
        c0 = natural_gradient_descent(curved, xi_curved, loss, metric, None, step_size=eps, n_steps=1)
        c = natural_gradient_descent(curved, xi_curved, loss, metric, ng.MinNorm(h), step_size=eps, n_steps=1)
        rows.append(
            {
                "step": eps,
                "model_gap_chart": float(torch.linalg.vector_norm(a.outputs[1] - b.outputs[1])),
                "param_gap_chart": float(torch.linalg.vector_norm(a.params[1] - chart(b.params[1]))),
                "model_gap_inverse": float(torch.linalg.vector_norm(c0.outputs[1] - c.outputs[1])),
                "param_gap_inverse": float(torch.linalg.vector_norm(c0.params[1] - c.params[1])),
            }
        )
    fits = {
        key: loglog_fit(steps, [r[key] for r in rows])[0]
        for key in ("model_gap_chart", "param_gap_chart", "model_gap_inverse", "param_gap_inverse")
    }
    return {"rows": rows, "slopes": fits}


def claims(results: dict[str, Any]) -> list[Claim]:
    s = results["slopes"]
    return [
        Claim(
            "model-gap-quadratic-chart",
            "one step in ξ vs in η = f⁻¹(ξ): model gap ∝ ε², |fitted slope − 2|",
            abs(s["model_gap_chart"] - 2.0),
            "<=",
            SLOPE_TOL,
        ),
        Claim(
            "model-gap-quadratic-inverse",
            "softmax(W tanh ξ), one step with Moore–Penrose vs min-h-norm: model gap ∝ ε², "
            "|fitted slope − 2|",
            abs(s["model_gap_inverse"] - 2.0),
            "<=",
            SLOPE_TOL,
        ),
        Claim(
            "param-gap-linear-chart",
            "the parameter points (in ξ) differ at first order: |slope − 1|",
            abs(s["param_gap_chart"] - 1.0),
            "<=",
            SLOPE_TOL,
        ),
        Claim(
            "param-gap-linear-inverse",
            "Moore–Penrose vs min-h-norm parameter points differ at first order: |slope − 1|",
            abs(s["param_gap_inverse"] - 1.0),
            "<=",
            SLOPE_TOL,
        ),
    ]


def figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = pyplot()
    rows = results["rows"]
    eps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for key, label, style in [
        ("model_gap_chart", "model gap, ξ vs η chart", "o-"),
        ("model_gap_inverse", "model gap, MP vs min-h-norm", "s-"),
        ("param_gap_chart", "parameter gap, ξ vs η chart", "o--"),
        ("param_gap_inverse", "parameter gap, MP vs min-h-norm", "s--"),
    ]:
        ax.loglog(eps, [r[key] for r in rows], style, label=f"{label} (slope {results['slopes'][key]:.3f})")
    ax.set_xlabel("step size ε")
    ax.set_title("one natural gradient step: model gap O(ε²), parameter gap O(ε)")
    ax.legend(fontsize=7)
    path = save_figure(fig, figure_path(out_dir, "finite_step"))
    return [path]


EXPERIMENT = Experiment(
    name="finite-step",
    title="One finite natural gradient step: model points in two parametrisations differ by O(ε²)",
    config=config,
    run=run,
    claims=claims,
    figures=figures,
    paper=PAPER,
    tags=("invariance", "T4"),
)
