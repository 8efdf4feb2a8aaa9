"""T2/P3, reparametrisation ξ = f(η): the pushforward is invariant, the parameter vector in general is not.

Base model: p = softmax(ξ) ∈ Δ₃ (d = 4, ker J = span 1), Fisher–Rao, L = KL(q‖p). Six changes of chart:
diagonal scaling, shear, orthogonal, I + c·11ᵀ, permutation and a nonlinear diffeomorphism. With
Moore–Penrose in both charts F w_η = v_ξ holds exactly when F Fᵀ maps ker J into itself (orthogonal,
permutation, I + c·11ᵀ), and fails otherwise; F w_η − v_ξ ∈ ker J and the pushforwards agree always, also for
arbitrary generalized inverses; the minimum-h-norm rule with h_η = Fᵀ h_ξ F is exactly invariant;
Moore–Penrose in η is the (FFᵀ)⁻¹-minimum-norm solution in ξ; with an invertible G (d = dim M)
F w_η = v_ξ for any f.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import natgrad as ng
from natgrad.diagnostics import chart_jacobian, pullback_metric, reparametrisation_check
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
    random_spd,
    softmax,
)

K = 4
INVARIANT = ("orthogonal", "I + c·11ᵀ", "permutation")


@dataclass(frozen=True)
class ReparametrisationConfig:
    """Settings: number of random (η, q) pairs per change of chart."""

    seed: int = 0
    n_points: int = 4


def config(quick: bool = False, seed: int = 0) -> ReparametrisationConfig:
    return ReparametrisationConfig(seed=seed, n_points=1 if quick else 4)


def _linear(matrix: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda eta: matrix @ eta


def charts(gen: torch.Generator) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The changes of chart η ↦ ξ on R⁴."""
    eye = torch.eye(K, dtype=F64)
    shear = eye.clone()
    shear[0, 1] = 1.5
    orthogonal, _ = torch.linalg.qr(randn(gen, K, K))
    return {
        "diagonal scaling": _linear(torch.diag(torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=F64))),
        "shear": _linear(shear),
        "orthogonal": _linear(orthogonal),
        "I + c·11ᵀ": _linear(eye + 0.7 * torch.ones(K, K, dtype=F64)),
        "permutation": _linear(eye[[2, 0, 3, 1]]),
        "nonlinear": nonlinear,
    }


def nonlinear(eta: torch.Tensor) -> torch.Tensor:
    """ξ = η + h(η), h = 0.5 tanh(η) + 0.2 tanh(roll(η)) is 0.7-Lipschitz: f is a diffeomorphism of R⁴."""
    return eta + 0.5 * torch.tanh(eta) + 0.2 * torch.tanh(torch.roll(eta, 1))


def _check(phi, f, eta, loss, metric, inv_eta=None, inv_xi=None) -> dict[str, float]:
    rep = reparametrisation_check(phi, f, eta, loss, metric, inv_eta, inv_xi)
    return {
        "parameter_gap": rep.parameter_gap,
        "kernel_residual": rep.kernel_residual,
        "pushforward_gap": rep.pushforward_gap,
        "criterion": rep.criterion,
    }


def _full_rank(xi: torch.Tensor) -> torch.Tensor:
    """softmax of (ξ, 0), ξ ∈ R³: d = dim M = 3, G invertible."""
    return softmax(torch.cat([xi, torch.zeros(1, dtype=xi.dtype)]))


def run(cfg: ReparametrisationConfig, progress: Progress) -> dict[str, Any]:
    gen = generator(cfg.seed)
    metric = ng.metrics.FisherRao()
    fs = charts(gen)
    h_xi = random_spd(gen, K)
    out: dict[str, dict[str, list[dict[str, float]]]] = {name: {} for name in fs}
    for name, f in progress(list(fs.items()), description="reparametrisations"):
        rows: dict[str, list[dict[str, float]]] = {"mp": [], "ginverse": [], "minnorm": [], "mp_weighted": []}
        for _ in range(cfg.n_points):
            eta, q = randn(gen, K), random_distribution(gen, K)
            loss = kl_loss(q)
            jac_f = chart_jacobian(f, eta)
            rows["mp"].append(_check(softmax, f, eta, loss, metric))
            u = [randn(gen, K, K) for _ in range(4)]
            rows["ginverse"].append(
                _check(softmax, f, eta, loss, metric, ng.GInverse(u[0], u[1]), ng.GInverse(u[2], u[3]))
            )
            h_eta = pullback_metric(h_xi, jac_f)
            rows["minnorm"].append(_check(softmax, f, eta, loss, metric, ng.MinNorm(h_eta), ng.MinNorm(h_xi)))
            weight = torch.linalg.inv(jac_f @ jac_f.T)
            rows["mp_weighted"].append(
                _check(softmax, f, eta, loss, metric, ng.MoorePenrose(), ng.MinNorm(weight))
            )
        out[name] = rows
    full_rank = []
    for name in ("diagonal scaling", "shear", "nonlinear"):
        f3 = (lambda m: lambda e: m(torch.cat([e, torch.zeros(1, dtype=e.dtype)]))[:3])(fs[name])
        eta, q = randn(gen, 3), random_distribution(gen, K)
        full_rank.append({"chart": name} | _check(_full_rank, f3, eta, kl_loss(q), metric))
    return {"charts": out, "invariant": list(INVARIANT), "full_rank": full_rank}


def claims(results: dict[str, Any]) -> list[Claim]:
    c = results["charts"]
    inv = set(results["invariant"])

    def over(names, rule: str, key: str, agg=max) -> float:
        return agg(row[key] for n in names for row in c[n][rule])

    non_inv = [n for n in c if n not in inv]
    return [
        Claim(
            "pushforward-invariant-mp",
            "Moore–Penrose in both charts: pushforwards agree for all six changes of chart (relative)",
            over(c, "mp", "pushforward_gap"),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "pushforward-invariant-any-ginverse",
            "random generalized inverses in both charts: pushforwards agree (relative)",
            over(c, "ginverse", "pushforward_gap"),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "difference-in-kernel",
            "F w_η − v_ξ ∈ ker J for every chart and inverse: ‖J(F w − v)‖/‖J v‖",
            max(over(c, r, "kernel_residual") for r in ("mp", "ginverse", "minnorm")),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "mp-invariant-charts",
            "orthogonal, permutation, I + c·11ᵀ: F w_η = v_ξ with Moore–Penrose (relative)",
            over(inv, "mp", "parameter_gap"),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "criterion-holds",
            "for those charts F Fᵀ maps ker J into itself: ‖(I − NNᵀ)FFᵀN‖/‖FFᵀ‖",
            over(inv, "mp", "criterion"),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "mp-not-invariant",
            "diagonal scaling, shear, nonlinear: F w_η ≠ v_ξ with Moore–Penrose: min ‖F w − v‖/‖v‖",
            over(non_inv, "mp", "parameter_gap", min),
            ">=",
            FAILURE_MIN,
        ),
        Claim(
            "criterion-fails",
            "for those charts F Fᵀ does not preserve ker J: min criterion",
            over(non_inv, "mp", "criterion", min),
            ">=",
            FAILURE_MIN,
        ),
        Claim(
            "min-h-norm-invariant",
            "minimum-h-norm with h_η = Fᵀ h_ξ F: F w_η = v_ξ for all six charts (relative)",
            over(c, "minnorm", "parameter_gap"),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "mp-is-weighted-min-norm",
            "Moore–Penrose in η equals the (FFᵀ)⁻¹-minimum-norm solution in ξ (relative)",
            over(c, "mp_weighted", "parameter_gap"),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "invertible-G-invariant",
            "with an invertible G (softmax of (ξ, 0), d = dim M) F w_η = v_ξ for "
            "scaling, shear and nonlinear charts (relative)",
            max(r["parameter_gap"] for r in results["full_rank"]),
            "<=",
            IDENTITY_TOL,
        ),
    ]


def figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = pyplot()
    c = results["charts"]
    names = list(c)
    series = [
        ("mp", "parameter_gap", "MP: ‖Fw − v‖/‖v‖"),
        ("mp", "criterion", "criterion FFᵀ(ker J) ⊆ ker J"),
        ("mp", "pushforward_gap", "MP: pushforward gap"),
        ("ginverse", "pushforward_gap", "random G⁻: pushforward gap"),
        ("minnorm", "parameter_gap", "transported min-h-norm: ‖Fw − v‖/‖v‖"),
    ]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(series)
    for i, (rule, key, label) in enumerate(series):
        vals = floor_for_log([max(r[key] for r in c[n][rule]) for n in names])
        ax.bar([j + i * width for j in range(len(names))], vals, width=width, label=label)
    ax.axhline(IDENTITY_TOL, color="k", ls="--", lw=1)
    ax.axhline(FAILURE_MIN, color="gray", ls="-.", lw=1)
    ax.set_yscale("log")
    ax.set_xticks([j + 0.4 for j in range(len(names))], names)
    ax.set_title(
        "softmax + Fisher–Rao: which reparametrisations leave the natural parameter gradient invariant"
    )
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    path = save_figure(fig, figure_path(out_dir, "reparametrisation"))
    return [path]


EXPERIMENT = Experiment(
    name="reparametrisation",
    title="Reparametrisations: pushforward always invariant, Moore–Penrose vector only if FFᵀ(ker J) ⊆ ker J",
    config=config,
    run=run,
    claims=claims,
    figures=figures,
    paper=PAPER,
    tags=("invariance", "T2", "P3"),
)
