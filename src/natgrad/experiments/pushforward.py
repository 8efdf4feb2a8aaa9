"""T1, the pushforward theorem: J v = Π^g_{im J}(g⁻¹∇z L), which is grad^M L exactly when rank J = dim M.

Three parametrisations with a point-dependent, non-Euclidean metric
g(z) = S + zzᵀ/(1 + ‖z‖²) + diag(exp(tanh z)):
a submersion onto an open set of R³ (φ = tanh(Wξ + b), d = 5), a submersion onto a curved surface M ⊂ R³
(φ = S∘a with a: R⁴ → R² and S a graph embedding; grad^M L = Π^g_{T M} g⁻¹∇L is not the ambient natural
gradient), and the rank drop of φ(ξ) = (ξ₁ξ₂, ξ₁ξ₃) at ξ₁ = 0 (M = R², rank J = 1), where the error
J v − grad^M L equals minus the part of grad^M L g-orthogonal to im J.
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
    randn,
    random_spd,
)


@dataclass(frozen=True)
class PushforwardConfig:
    """Settings: number of random points per case."""

    seed: int = 0
    n_points: int = 5


def config(quick: bool = False, seed: int = 0) -> PushforwardConfig:
    return PushforwardConfig(seed=seed, n_points=2 if quick else 8)


def _metric(gen: torch.Generator, n: int):
    base = random_spd(gen, n)

    def matrix(z: torch.Tensor) -> torch.Tensor:
        # bounded in z, so the conditioning of g stays moderate and float64 identities reach 1e-10
        z = z.reshape(-1)
        return base + torch.outer(z, z) / (1 + z @ z) + torch.diag(torch.exp(torch.tanh(z)))

    return ng.metrics.PointDependent(matrix)


def _loss(y: torch.Tensor):
    def loss(z: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.cosh(z - y)).sum() + 0.1 * (z**3).sum()

    return loss


def _record(rep) -> dict[str, Any]:
    return {
        "rank": rep.rank,
        "error_vs_projection": rep.error_vs_projection,
        "error_vs_model_gradient": rep.error_vs_model_gradient,
        "ambient_gap": rep.ambient_gap,
        "outside_image": rep.outside_image,
        "model_gradient_outside_image": rep.model_gradient_outside_image,
        "error_minus_outside": rep.error_minus_outside,
        "pushforward": rep.pushforward.tolist(),
        "model_gradient": rep.model_gradient.tolist(),
        "ambient": rep.ambient.tolist(),
    }


def _open_set(gen: torch.Generator, n_points: int) -> list[dict[str, Any]]:
    w, b = randn(gen, 3, 5) / 5**0.5, 0.3 * randn(gen, 3)
    metric, loss = _metric(gen, 3), _loss(randn(gen, 3))

    def phi(xi: torch.Tensor) -> torch.Tensor:
        return torch.tanh(w @ xi + b)

    out = []
    for _ in range(n_points):
        xi = randn(gen, 5)
        rep = pushforward_check(phi, xi, loss, metric, model_tangent=torch.eye(3, dtype=F64))
        out.append(_record(rep) | {"model_dim": 3, "submersion_rank": submersion_test(phi, xi, 3).rank})
    return out


def _surface(gen: torch.Generator, n_points: int) -> list[dict[str, Any]]:
    a_mat = randn(gen, 2, 4)
    metric = _metric(gen, 3)
    target = torch.tensor([0.0, 0.0, 10.0], dtype=F64)  # far off the surface: a large normal component

    def loss(z: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((z - target) ** 2).sum() + 0.05 * (z**3).sum()

    def embed(u: torch.Tensor) -> torch.Tensor:
        return torch.stack([u[0], u[1], u[0] ** 2 - u[1] ** 2 + 0.5 * u[0] * u[1]])

    def phi(xi: torch.Tensor) -> torch.Tensor:
        return embed(a_mat @ torch.tanh(xi))

    out = []
    for _ in range(n_points):
        xi = 0.7 * randn(gen, 4)
        u = a_mat @ torch.tanh(xi)
        tangent = torch.func.jacfwd(embed)(u)  # 3 × 2, spans T_z M
        rep = pushforward_check(phi, xi, loss, metric, model_tangent=tangent)
        out.append(_record(rep) | {"model_dim": 2, "submersion_rank": submersion_test(phi, xi, 2).rank})
    return out


def _balanced_loss(g0: torch.Tensor, image: torch.Tensor):
    """A loss whose g-gradient at z = 0 has equal g-norm parts along im J and g-orthogonal to it."""

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(x @ g0 @ x)

    rotated = torch.stack([-image[1], image[0]])
    along, across = unit(image), unit(torch.linalg.solve(g0, rotated))  # acrossᵀ g0 image = 0
    c = g0 @ (along + across)  # ∇L(0) = c, so grad^M L(0) = along + across

    def loss(z: torch.Tensor) -> torch.Tensor:
        return (c * z).sum() + torch.log(torch.cosh(z)).sum() + 0.1 * (z**3).sum()

    return loss


def _rank_drop(gen: torch.Generator, n_points: int) -> list[dict[str, Any]]:
    metric = _metric(gen, 2)

    def phi(xi: torch.Tensor) -> torch.Tensor:
        return torch.stack([xi[0] * xi[1], xi[0] * xi[2]])

    out = []
    for _ in range(n_points):
        xi = torch.cat([torch.zeros(1, dtype=F64), randn(gen, 2)])  # exactly on the rank drop ξ₁ = 0
        loss = _balanced_loss(metric.matrix(phi(xi)), xi[1:])
        rep = pushforward_check(phi, xi, loss, metric, model_tangent=torch.eye(2, dtype=F64))
        image = ng.jacobian(phi, xi)[:, 0]  # im J = span(ξ₂, ξ₃) at ξ₁ = 0
        out.append(
            _record(rep)
            | {"model_dim": 2, "submersion_rank": submersion_test(phi, xi, 2).rank, "image": image.tolist()}
        )
    return out


def run(cfg: PushforwardConfig, progress: Progress) -> dict[str, Any]:
    gen = generator(cfg.seed)
    cases = {}
    for name, fn in progress(
        [("open-set", _open_set), ("surface", _surface), ("rank-drop", _rank_drop)], description="pushforward"
    ):
        cases[name] = fn(gen, cfg.n_points)
    return {"cases": cases}


def claims(results: dict[str, Any]) -> list[Claim]:
    c = results["cases"]

    def worst(case: str, key: str) -> float:
        return max(p[key] for p in c[case])

    def least(case: str, key: str) -> float:
        return min(p[key] for p in c[case])

    return [
        Claim(
            "projection-everywhere",
            "J v = Π^g_{im J} g⁻¹∇z L at every point of all three cases (relative)",
            max(worst(k, "error_vs_projection") for k in c),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "submersion-open-set",
            "submersion onto an open set with a point-dependent metric: J v = g⁻¹∇z L = grad^M L (relative)",
            worst("open-set", "error_vs_model_gradient"),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "submersion-surface",
            "submersion onto a curved surface M ⊂ R³: J v = grad^M L (relative)",
            worst("surface", "error_vs_model_gradient"),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "surface-not-ambient",
            "on the surface the pushforward is the projection, not the ambient "
            "natural gradient g⁻¹∇z L: ‖J v − g⁻¹∇L‖/‖g⁻¹∇L‖",
            least("surface", "ambient_gap"),
            ">=",
            FAILURE_MIN,
        ),
        Claim(
            "submersion-ranks",
            "rank J equals dim M in both submersion cases (min of rank − dim M, and the max below)",
            min(p["submersion_rank"] - p["model_dim"] for k in ("open-set", "surface") for p in c[k]),
            ">=",
            0,
        ),
        Claim(
            "submersion-ranks-upper",
            "rank J equals dim M in both submersion cases (max of rank − dim M)",
            max(p["submersion_rank"] - p["model_dim"] for k in ("open-set", "surface") for p in c[k]),
            "<=",
            0,
        ),
        Claim(
            "rank-drop-fails",
            "at the rank drop ξ₁ = 0 the pushforward misses grad^M L: ‖J v − grad^M L‖/‖grad^M L‖",
            least("rank-drop", "error_vs_model_gradient"),
            ">=",
            FAILURE_MIN,
        ),
        Claim(
            "rank-drop-error-is-orthogonal-part",
            "at the rank drop, J v − grad^M L equals minus the part of "
            "grad^M L g-orthogonal to im J (relative)",
            worst("rank-drop", "error_minus_outside"),
            "<=",
            IDENTITY_TOL,
        ),
    ]


def figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = pyplot()
    c = results["cases"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(c)
    keys = ["error_vs_projection", "error_vs_model_gradient", "ambient_gap"]
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        vals = floor_for_log([max(p[key] for p in c[n]) for n in names])
        ax1.bar([j + i * width for j in range(len(names))], vals, width=width, label=key)
    ax1.axhline(IDENTITY_TOL, color="k", ls="--", lw=1)
    ax1.axhline(FAILURE_MIN, color="gray", ls="-.", lw=1)
    ax1.set_yscale("log")
    ax1.set_xticks([j + 0.27 for j in range(len(names))], names)
    ax1.set_title("pushforward vs projection / grad^M L / ambient (max over points)")
    ax1.legend(fontsize=7)
    p = c["rank-drop"][0]
    origin = [0.0, 0.0]
    for vec, label, color in [
        (p["model_gradient"], "grad^M L", "C0"),
        (p["pushforward"], "J v", "C1"),
        (
            [a - b for a, b in zip(p["model_gradient"], p["pushforward"], strict=True)],
            "orthogonal part",
            "C3",
        ),
    ]:
        ax2.quiver(*origin, *vec, angles="xy", scale_units="xy", scale=1, color=color, label=label)
    im = torch.tensor(p["image"])
    im = im / im.norm() * 2 * max(torch.tensor(p["model_gradient"]).norm().item(), 1e-3)
    ax2.plot([-im[0], im[0]], [-im[1], im[1]], "k:", label="im J")
    lim = 1.3 * max(abs(v) for v in p["model_gradient"] + p["pushforward"] + [1e-3])
    ax2.set_xlim(-lim, lim)
    ax2.set_ylim(-lim, lim)
    ax2.set_aspect("equal")
    ax2.set_title("rank drop of (ξ₁ξ₂, ξ₁ξ₃) at ξ₁ = 0")
    ax2.legend(fontsize=7)
    path = save_figure(fig, figure_path(out_dir, "pushforward"))
    return [path]


EXPERIMENT = Experiment(
    name="pushforward",
    title="Pushforward theorem: J v is the g-projection of g⁻¹∇L, = grad^M L on a submersion",
    config=config,
    run=run,
    claims=claims,
    figures=figures,
    paper=PAPER,
    tags=("invariance", "T1"),
)
