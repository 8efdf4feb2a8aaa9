"""L1, the projector lemma: J G⁻ Jᵀ g is the g-orthogonal projector onto im J for every G⁻.

A rank-deficient map φ(ξ) = C tanh(Wξ + b) (d = 8 parameters, n = 6 outputs, rank 4) with a dense
non-Euclidean metric g. For Moore–Penrose, two generalized inverses G⁺ + (I − G⁺G)U + V(I − GG⁺) and two
minimum-h-norm rules, P = J G⁻ Jᵀ g is materialised through the engine and checked against P² = P, gP
symmetric, PJ = J and the reference Q(QᵀgQ)⁻¹Qᵀg. Damping (G + λI)⁻¹ gives P_λ with ‖P_λ − P‖ = O(λ); a
Moore–Penrose cutoff that drops a true direction gives an O(1) error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import natgrad as ng
from natgrad.diagnostics import ginverse_independence, projector_check, projector_matrix
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
    loglog_fit,
    randn,
    random_spd,
    rel,
)


@dataclass(frozen=True)
class ProjectorConfig:
    """Settings: model sizes, damping sweep (in units of the smallest non-zero eigenvalue of G)."""

    seed: int = 0
    n_params: int = 8
    n_hidden: int = 4
    n_outputs: int = 6
    n_points: int = 3
    damping_exponents: tuple[float, ...] = (-5.0, -4.0, -3.0, -2.0, -1.0, 0.0)
    # fit the O(λ) slope where 1e-5 ≤ λ/λ_min ≤ 1e-2: below, rounding amplified by 1/λ (about eps·‖A‖/λ)
    # dominates the bias; above, higher orders do
    slope_max_exponent: float = -2.0


def config(quick: bool = False, seed: int = 0) -> ProjectorConfig:
    return ProjectorConfig(seed=seed, n_points=1 if quick else 3)


def _model(cfg: ProjectorConfig, gen: torch.Generator):
    w = randn(gen, cfg.n_hidden, cfg.n_params)
    b = 0.3 * randn(gen, cfg.n_hidden)
    c = randn(gen, cfg.n_outputs, cfg.n_hidden)
    y = randn(gen, cfg.n_outputs)

    def phi(xi: torch.Tensor) -> torch.Tensor:
        return c @ torch.tanh(w @ xi / cfg.n_params**0.5 + b)

    def loss(z: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.cosh(z - y)).sum() + 0.1 * (z**3).sum()

    return phi, loss


def _inverses(cfg: ProjectorConfig, gen: torch.Generator) -> dict[str, Any]:
    d = cfg.n_params
    return {
        "moore-penrose": ng.MoorePenrose(),
        "g-inverse (U, V)": ng.GInverse(randn(gen, d, d), randn(gen, d, d)),
        "g-inverse (U, 0)": ng.GInverse(randn(gen, d, d), torch.zeros(d, d, dtype=F64)),
        "min h-norm (dense h)": ng.MinNorm(random_spd(gen, d)),
        "min h-norm (diag h)": ng.MinNorm(torch.rand(d, generator=gen, dtype=F64) + 0.1),
    }


def run(cfg: ProjectorConfig, progress: Progress) -> dict[str, Any]:
    gen = generator(cfg.seed)
    phi, loss = _model(cfg, gen)
    metric = ng.metrics.Dense(random_spd(gen, cfg.n_outputs))
    inverses = _inverses(cfg, gen)
    points = []
    for _ in progress(range(cfg.n_points), description="projector lemma: points"):
        xi = 0.5 * randn(gen, cfg.n_params)
        jac = ng.jacobian(phi, xi)
        g = metric.matrix(phi(xi).detach())
        eig = torch.linalg.eigvalsh(jac.T @ g @ jac).flip(0)
        rank = int(torch.linalg.matrix_rank(jac))
        lam_min = float(eig[rank - 1])
        checks, projectors = {}, {}
        for name, inverse in inverses.items():
            rep = projector_check(phi, xi, metric, inverse)
            projectors[name] = rep.projector
            checks[name] = {
                "idempotence": rep.idempotence,
                "g_symmetry": rep.g_symmetry,
                "reproduces_image": rep.reproduces_image,
                "vs_reference": rep.vs_reference,
                "trace": rep.trace,
            }
        base = projectors["moore-penrose"]
        spread = max(rel(p, base) for p in projectors.values())
        indep = ginverse_independence(phi, xi, loss, list(inverses.values()), metric)
        lams = [lam_min * 10.0**e for e in cfg.damping_exponents]
        damping = [rel(projector_matrix(phi, xi, metric, ng.Damped(lam)), base) for lam in lams]
        # a cutoff between the two smallest non-zero eigenvalues of G drops one true direction
        cut = float((eig[rank - 1] * eig[rank - 2]).sqrt() / eig[0])
        bad = projector_matrix(phi, xi, metric, ng.MoorePenrose(rtol=cut))
        bad_rank = ng.natural_gradient(phi, xi, loss, metric=metric, inverse=ng.MoorePenrose(rtol=cut)).rank
        points.append(
            {
                "rank": rank,
                "eigenvalues_G": eig.tolist(),
                "checks": checks,
                "projector_spread": spread,
                "pushforward_spread": indep.max_pushforward_gap,
                "kernel_residual": indep.max_kernel_residual,
                "direction_spread": indep.max_direction_gap,
                "dampings": lams,
                "damping_relative": [10.0**e for e in cfg.damping_exponents],
                "damping_bias": damping,
                "bad_cutoff_rtol": cut,
                "bad_cutoff_rank": bad_rank,
                "bad_cutoff_error": rel(bad, base),
            }
        )
    return {"inverses": list(inverses), "slope_max_exponent": cfg.slope_max_exponent, "points": points}


def _damping_slopes(results: dict[str, Any]) -> list[float]:
    slopes = []
    top = 10.0 ** results["slope_max_exponent"] * (1 + 1e-9)
    for p in results["points"]:
        pairs = [(r, b) for r, b in zip(p["damping_relative"], p["damping_bias"], strict=True) if r <= top]
        slopes.append(loglog_fit([r for r, _ in pairs], [b for _, b in pairs])[0])
    return slopes


def claims(results: dict[str, Any]) -> list[Claim]:
    pts = results["points"]

    def worst(key: str) -> float:
        return max(c[key] for p in pts for c in p["checks"].values())

    slopes = _damping_slopes(results)
    return [
        Claim(
            "idempotent",
            "P = J G⁻ Jᵀ g satisfies P² = P for every generalized inverse (relative)",
            worst("idempotence"),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "g-self-adjoint",
            "gP is symmetric for every generalized inverse (relative)",
            worst("g_symmetry"),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "fixes-image",
            "PJ = J for every generalized inverse (relative)",
            worst("reproduces_image"),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "equals-g-projector",
            "P equals the g-orthogonal projector Q(QᵀgQ)⁻¹Qᵀg onto im J (relative)",
            worst("vs_reference"),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "independent-of-inverse",
            "J G⁻ Jᵀ g is the same matrix for all five inverses (relative)",
            max(p["projector_spread"] for p in pts),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "directions-differ-in-kernel",
            "natural parameter gradients of different inverses differ only by ker J: ‖J(v_i − v_0)‖/‖Jv_0‖",
            max(p["kernel_residual"] for p in pts),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "directions-differ",
            "the parameter vectors themselves differ between inverses: max ‖v_i − v_0‖/‖v_0‖",
            min(p["direction_spread"] for p in pts),
            ">=",
            FAILURE_MIN,
        ),
        Claim(
            "damping-fails",
            "damping with λ = λ_min(G) is not a generalized inverse: ‖P_λ − P‖/‖P‖",
            min(p["damping_bias"][-1] for p in pts),
            ">=",
            FAILURE_MIN,
        ),
        Claim(
            "damping-bias-linear-low",
            "damping bias is O(λ): fitted log–log slope of ‖P_λ − P‖ vs λ (lower bound 0.9)",
            min(slopes),
            ">=",
            0.9,
        ),
        Claim(
            "damping-bias-linear-high",
            "damping bias is O(λ): fitted log–log slope (upper bound 1.1)",
            max(slopes),
            "<=",
            1.1,
        ),
        Claim(
            "bad-cutoff-fails",
            "a Moore–Penrose cutoff that drops a true direction gives an O(1) error in the projector",
            min(p["bad_cutoff_error"] for p in pts),
            ">=",
            FAILURE_MIN,
        ),
        Claim(
            "bad-cutoff-drops-one",
            "that cutoff makes the engine use rank J − 1 (rank deficit)",
            min(
                p["rank"] - (p["bad_cutoff_rank"] if p["bad_cutoff_rank"] is not None else p["rank"])
                for p in pts
            ),
            ">=",
            1,
        ),
    ]


def figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = pyplot()
    p = results["points"][0]
    names = results["inverses"]
    keys = ["idempotence", "g_symmetry", "reproduces_image", "vs_reference"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        vals = floor_for_log([p["checks"][n][key] for n in names])
        ax1.bar([j + i * width for j in range(len(names))], vals, width=width, label=key)
    ax1.axhline(IDENTITY_TOL, color="k", ls="--", lw=1, label="1e-10")
    ax1.set_yscale("log")
    ax1.set_xticks([j + 0.3 for j in range(len(names))], names, rotation=20, ha="right", fontsize=8)
    ax1.set_title("projector identities per generalized inverse")
    ax1.legend(fontsize=7)
    ax2.loglog(p["damping_relative"], p["damping_bias"], "o-", label="damping ‖P_λ − P‖/‖P‖")
    ax2.loglog(p["damping_relative"], p["damping_relative"], "k:", label="slope 1")
    ax2.axhline(p["bad_cutoff_error"], color="r", ls="--", label="bad cutoff error")
    ax2.axhline(FAILURE_MIN, color="gray", ls="-.", lw=1, label="1e-2")
    ax2.set_xlabel("λ / λ_min(G)")
    ax2.set_title("damping and cutoff failures")
    ax2.legend(fontsize=7)
    path = save_figure(fig, figure_path(out_dir, "projector_lemma"))
    return [path]


EXPERIMENT = Experiment(
    name="projector-lemma",
    title="Projector lemma: J G⁻ Jᵀ g is the g-projector onto im J for every generalized inverse",
    config=config,
    run=run,
    claims=claims,
    figures=figures,
    paper=PAPER,
    tags=("invariance", "L1"),
)
