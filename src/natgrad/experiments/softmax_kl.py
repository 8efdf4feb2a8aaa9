"""Closed forms on the simplex: softmax with Fisher–Rao and L = KL(q‖p).

For p = softmax(ξ) and g = diag(1/p), the ambient natural gradient is g⁻¹∇p L = −q; its g-projection onto
the tangent space {Σ δ = 0} is p − q, so the pushforward of the natural parameter gradient is p − q, and
the natural gradient flow ξ̇ = −G⁺∇ moves the model point along p(t) = q + e^{−t}(p₀ − q).
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
    IDENTITY_TOL,
    PAPER,
    figure_path,
    floor_for_log,
    generator,
    kl_loss,
    randn,
    random_distribution,
    rel,
    softmax,
)
from natgrad.flows import natural_gradient_flow

FLOW_TOL = 1e-8


@dataclass(frozen=True)
class SoftmaxKLConfig:
    """Settings: simplex sizes, points per size, flow horizon and ODE tolerances."""

    seed: int = 0
    sizes: tuple[int, ...] = (3, 5, 10)
    n_points: int = 4
    flow_size: int = 4
    horizon: float = 4.0
    n_times: int = 17
    ode_rtol: float = 1e-9
    ode_atol: float = 1e-11


def config(quick: bool = False, seed: int = 0) -> SoftmaxKLConfig:
    if quick:
        return SoftmaxKLConfig(seed=seed, sizes=(3, 6), n_points=2, horizon=2.5, n_times=6)
    return SoftmaxKLConfig(seed=seed)


def run(cfg: SoftmaxKLConfig, progress: Progress) -> dict[str, Any]:
    gen = generator(cfg.seed)
    metric = ng.metrics.FisherRao()
    pushforward = []
    for k in progress(cfg.sizes, description="softmax KL: pushforward"):
        for _ in range(cfg.n_points):
            xi, q = randn(gen, k), random_distribution(gen, k)
            res = ng.natural_gradient(softmax, xi, kl_loss(q), metric=metric, inverse=ng.MoorePenrose())
            p = softmax(xi)
            pushforward.append({"k": k, "error": rel(res.pushforward, p - q), "rank": res.rank})
    xi0, q = 1.5 * randn(gen, cfg.flow_size), random_distribution(gen, cfg.flow_size)
    times = torch.linspace(0.0, cfg.horizon, cfg.n_times, dtype=torch.float64)
    traj = natural_gradient_flow(
        softmax, xi0, kl_loss(q), metric, ng.MoorePenrose(), times, rtol=cfg.ode_rtol, atol=cfg.ode_atol
    )
    p0 = softmax(xi0)
    exact = q + torch.exp(-times)[:, None] * (p0 - q)
    errors = torch.linalg.vector_norm(traj.outputs - exact, dim=1) / torch.linalg.vector_norm(p0 - q)
    return {
        "pushforward": pushforward,
        "flow": {
            "times": times.tolist(),
            "p": traj.outputs.tolist(),
            "exact": exact.tolist(),
            "relative_error": errors.tolist(),
            "loss": traj.losses.tolist(),
        },
    }


def claims(results: dict[str, Any]) -> list[Claim]:
    flow = results["flow"]
    losses = flow["loss"]
    increase = max(b - a for a, b in zip(losses[:-1], losses[1:], strict=True))
    return [
        Claim(
            "pushforward-is-p-minus-q",
            "softmax, Fisher–Rao, KL(q‖p): the pushforward J G⁺∇ equals p − q "
            "(relative, all sizes and points)",
            max(p["error"] for p in results["pushforward"]),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "rank-k-minus-1",
            "the engine sees rank J = k − 1 (overparametrised by one); min of rank − (k − 1)",
            min(p["rank"] - (p["k"] - 1) for p in results["pushforward"]),
            ">=",
            0,
        ),
        Claim(
            "flow-closed-form",
            "the natural gradient flow follows p(t) = q + e^{−t}(p₀ − q): "
            "max_t ‖p(t) − closed form‖/‖p₀ − q‖",
            max(flow["relative_error"]),
            "<=",
            FLOW_TOL,
        ),
        Claim(
            "loss-decreases",
            "KL(q‖p(t)) decreases strictly along the flow: largest increment between "
            "consecutive sample times",
            increase,
            "<",
            0.0,
        ),
    ]


def figures(results: dict[str, Any], out_dir: Path) -> list[Path]:

    plt = pyplot()
    flow = results["flow"]
    t = flow["times"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    p = list(zip(*flow["p"], strict=True))
    ex = list(zip(*flow["exact"], strict=True))
    for i, (a, b) in enumerate(zip(p, ex, strict=True)):
        ax1.plot(t, a, "o", color=f"C{i}", ms=4, label=f"p_{i}(t) flow")
        ax1.plot(t, b, "-", color=f"C{i}", lw=1)
    ax1.set_xlabel("t")
    ax1.set_title("natural gradient flow (dots) vs q + e^{-t}(p₀ − q) (lines)")
    ax1.legend(fontsize=7)
    ax2.semilogy(t, floor_for_log(flow["relative_error"]), "o-", label="flow vs closed form")
    ax2.axhline(FLOW_TOL, color="k", ls="--", lw=1, label="1e-8")
    ax2.set_xlabel("t")
    ax2.set_title("relative model error along the flow")
    ax2.legend(fontsize=7)
    path = save_figure(fig, figure_path(out_dir, "softmax_kl"))
    return [path]


EXPERIMENT = Experiment(
    name="softmax-kl",
    title="Softmax with Fisher–Rao and KL: pushforward p − q, flow q + e^{−t}(p₀ − q)",
    config=config,
    run=run,
    claims=claims,
    figures=figures,
    paper=PAPER,
    tags=("invariance", "closed-form"),
)
