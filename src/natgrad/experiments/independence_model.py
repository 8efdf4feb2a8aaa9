"""A proper submodel of the simplex: the independence model of two binary variables.

p = softmax(α) ⊗ softmax(β) ∈ Δ₃ (parameters α, β ∈ R², d = 4, dim M = 2), Fisher–Rao metric,
L = KL(q‖p) with a dependent q. The pushforward of the natural parameter gradient is the g-projection onto
T M, in closed form (a − a_q) ⊗ b + a ⊗ (b − b_q) (a_q, b_q the marginals of q), and not the ambient
natural gradient p − q of the full simplex. The flow moves the marginals as a(t) = a_q + e^{−t}(a₀ − a_q).

On 2 × 2 tables the gap is explicit: with e = (1, −1), q − a_q ⊗ b_q = δ e⊗e, a − a_q = α e, b − b_q = β e,
(p − q) − J v = −(αβ + δ) e⊗e, of norm 2|αβ + δ|. It vanishes on the surface αβ = −δ, so the points are drawn
with αβδ ≥ 0, where the gap is at least 2|δ|.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import natgrad as ng
from natgrad.diagnostics import pushforward_check, submersion_test
from natgrad.experiments._base import Claim, Experiment, Progress
from natgrad.experiments._figures import pyplot, save_figure
from natgrad.experiments._invariance_common import (
    F64,
    FAILURE_MIN,
    IDENTITY_TOL,
    PAPER,
    figure_path,
    floor_for_log,
    generator,
    kl_loss,
    randn,
    random_distribution,
    rel,
)
from natgrad.flows import natural_gradient_flow

FLOW_TOL = 1e-8


@dataclass(frozen=True)
class IndependenceConfig:
    """Settings: number of random (ξ, q) pairs, flow horizon and tolerances."""

    seed: int = 0
    n_points: int = 6
    horizon: float = 4.0
    n_times: int = 9
    ode_rtol: float = 1e-9
    ode_atol: float = 1e-11


def config(quick: bool = False, seed: int = 0) -> IndependenceConfig:
    if quick:
        return IndependenceConfig(seed=seed, n_points=2, horizon=2.0, n_times=5)
    return IndependenceConfig(seed=seed)


def independence(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """φ(α, β) = softmax(α) ⊗ softmax(β), flattened to (p₀₀, p₀₁, p₁₀, p₁₁)."""
    return torch.outer(torch.softmax(params["alpha"], 0), torch.softmax(params["beta"], 0)).reshape(-1)


def closed_form(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(a − a_q) ⊗ b + a ⊗ (b − b_q) for p = a ⊗ b, a_q, b_q the marginals of q."""
    pm, qm = p.reshape(2, 2), q.reshape(2, 2)
    a, b, aq, bq = pm.sum(1), pm.sum(0), qm.sum(1), qm.sum(0)
    return (torch.outer(a - aq, b) + torch.outer(a, b - bq)).reshape(-1)


def _tangent(p: torch.Tensor) -> torch.Tensor:
    pm = p.reshape(2, 2)
    a, b = pm.sum(1), pm.sum(0)
    e = torch.tensor([1.0, -1.0], dtype=p.dtype)
    return torch.stack([torch.outer(e, b).reshape(-1), torch.outer(a, e).reshape(-1)], dim=1)


def _dependent(gen: torch.Generator) -> torch.Tensor:
    """A distribution far from independence: half a random one, half 'X = Y'."""
    return 0.5 * random_distribution(gen, 4) + 0.5 * torch.tensor([0.5, 0.0, 0.0, 0.5], dtype=F64)


def interaction_gap(p: torch.Tensor, q: torch.Tensor) -> tuple[float, float, float]:
    """(α, β, δ) with a − a_q = α e, b − b_q = β e, q − a_q ⊗ b_q = δ e⊗e, e = (1, −1)."""
    pm, qm = p.reshape(2, 2), q.reshape(2, 2)
    aq, bq = qm.sum(1), qm.sum(0)
    alpha = float(pm.sum(1)[0] - aq[0])
    beta = float(pm.sum(0)[0] - bq[0])
    delta = float(qm[0, 0] - aq[0] * bq[0])
    return alpha, beta, delta


def _away_from_cancellation(gen: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
    """Draw (α, β, q) until αβ·δ ≥ 0; return params, q and the closed-form gap 2|αβ + δ|."""
    while True:
        params = {"alpha": randn(gen, 2), "beta": randn(gen, 2)}
        q = _dependent(gen)
        alpha, beta, delta = interaction_gap(independence(params), q)
        if alpha * beta * delta >= 0:
            return params, q, 2 * abs(alpha * beta + delta)


def run(cfg: IndependenceConfig, progress: Progress) -> dict[str, Any]:
    gen = generator(cfg.seed)
    metric = ng.metrics.FisherRao()
    points = []
    for _ in progress(range(cfg.n_points), description="independence model"):
        params, q, gap = _away_from_cancellation(gen)
        p = independence(params)
        rep = pushforward_check(independence, params, kl_loss(q), metric, model_tangent=_tangent(p))
        points.append(
            {
                "simplex_gap_absolute": float(torch.linalg.vector_norm(rep.pushforward - (p - q))),
                "simplex_gap_closed_form": gap,
                "closed_form_error": rel(rep.pushforward, closed_form(p, q)),
                "model_gradient_error": rep.error_vs_model_gradient,
                "simplex_gap": rel(rep.pushforward, p - q),
                "rank": submersion_test(independence, params, 2).rank,
                "pushforward": rep.pushforward.tolist(),
                "closed_form": closed_form(p, q).tolist(),
                "simplex_gradient": (p - q).tolist(),
            }
        )
    params0 = {"alpha": torch.tensor([1.5, -0.5], dtype=F64), "beta": torch.tensor([-1.0, 0.8], dtype=F64)}
    q = _dependent(gen)
    times = torch.linspace(0.0, cfg.horizon, cfg.n_times, dtype=F64)
    traj = natural_gradient_flow(
        independence,
        params0,
        kl_loss(q),
        metric,
        ng.MoorePenrose(),
        times,
        rtol=cfg.ode_rtol,
        atol=cfg.ode_atol,
    )
    p0 = independence(params0).reshape(2, 2)
    qm = q.reshape(2, 2)
    decay = torch.exp(-times)[:, None]
    a_t = qm.sum(1) + decay * (p0.sum(1) - qm.sum(1))
    b_t = qm.sum(0) + decay * (p0.sum(0) - qm.sum(0))
    exact = torch.einsum("ti,tj->tij", a_t, b_t).reshape(len(times), 4)
    errors = torch.linalg.vector_norm(traj.outputs - exact, dim=1) / torch.linalg.vector_norm(exact[0])
    return {
        "points": points,
        "flow": {
            "times": times.tolist(),
            "p": traj.outputs.tolist(),
            "exact": exact.tolist(),
            "relative_error": errors.tolist(),
            "q": q.tolist(),
        },
    }


def claims(results: dict[str, Any]) -> list[Claim]:
    pts = results["points"]
    return [
        Claim(
            "closed-form",
            "pushforward equals (a − a_q) ⊗ b + a ⊗ (b − b_q) (relative)",
            max(p["closed_form_error"] for p in pts),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "is-projection",
            "pushforward equals grad^M L, the Fisher–Rao projection onto T M (relative)",
            max(p["model_gradient_error"] for p in pts),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "not-ambient",
            "pushforward differs from the full-simplex natural gradient p − q: ‖J v − (p − q)‖/‖p − q‖",
            min(p["simplex_gap"] for p in pts),
            ">=",
            FAILURE_MIN,
        ),
        Claim(
            "gap-closed-form",
            "the gap ‖(p − q) − J v‖ equals 2|αβ + δ| (relative)",
            max(
                abs(p["simplex_gap_absolute"] - p["simplex_gap_closed_form"]) / p["simplex_gap_closed_form"]
                for p in pts
            ),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "rank-is-dim-M",
            "rank J = 2 = dim M at every point (4 parameters): min rank",
            min(p["rank"] for p in pts),
            ">=",
            2,
        ),
        Claim(
            "rank-is-dim-M-upper",
            "rank J = 2 = dim M at every point: max rank",
            max(p["rank"] for p in pts),
            "<=",
            2,
        ),
        Claim(
            "flow-marginals",
            "the flow moves the marginals as a(t) = a_q + e^{−t}(a₀ − a_q): max_t relative model error",
            max(results["flow"]["relative_error"]),
            "<=",
            FLOW_TOL,
        ),
    ]


def figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = pyplot()
    p = results["points"][0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = ["p00", "p01", "p10", "p11"]
    for i, (key, name) in enumerate(
        [("pushforward", "J v"), ("closed_form", "(a−a_q)⊗b + a⊗(b−b_q)"), ("simplex_gradient", "p − q")]
    ):
        ax1.bar([j + 0.27 * i for j in range(4)], p[key], width=0.27, label=name)
    ax1.set_xticks([j + 0.27 for j in range(4)], labels)
    ax1.axhline(0, color="k", lw=0.5)
    ax1.set_title("independence model: pushforward is the projection")
    ax1.legend(fontsize=7)
    flow = results["flow"]
    ax2.semilogy(flow["times"], floor_for_log(flow["relative_error"]), "o-", label="flow vs closed form")
    ax2.axhline(FLOW_TOL, color="k", ls="--", lw=1, label="1e-8")
    ax2.set_xlabel("t")
    ax2.set_title("flow of the marginals")
    ax2.legend(fontsize=7)
    path = save_figure(fig, figure_path(out_dir, "independence_model"))
    return [path]


EXPERIMENT = Experiment(
    name="independence-model",
    title="Independence model of two binary variables: the pushforward is the projection onto T M",
    config=config,
    run=run,
    claims=claims,
    figures=figures,
    paper=PAPER,
    tags=("invariance", "T1", "closed-form"),
)
