"""Singular points: where rank J drops, the pushforward depends on the parametrisation and the preimage.

Euclidean metric, losses with a known gradient c = ∇z L at the singular model point:
- φ₁(ξ) = ξ and φ₂(η) = η³ at the model point 0: J v = L′(0) versus 0 (and L′ again at η = 10⁻³);
- φ(ξ) = ξ₁ξ₂ on the fibre over 0: preimage (0, 0) gives 0, (1, 0) and (0, 2) give L′(0);
- the figure-eight γ(t) = (sin 2t, sin t), crossing itself at 0 for t = 0 and t = π: two tangents, two
  pushforwards (the projections of c onto (2, 1) and (2, −1));
- the cusp γ(t) = (t², t³): J = 0 at t = 0 gives 0, while t = ±10⁻³ gives ≈ the projection onto (1, 0);
- near a rank drop, φ(ξ) = (ξ₁ξ₂, ξ₁ξ₃) at ξ₁ = 10⁻⁵ (a submersion there), the Moore–Penrose cutoff
  decides: cutoffs below λ_min/λ_max ≈ 10⁻¹⁰ give g⁻¹∇L, larger ones an O(1) error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import natgrad as ng
from natgrad.diagnostics import cutoff_sensitivity
from natgrad.experiments._base import Claim, Experiment, Progress
from natgrad.experiments._figures import pyplot, save_figure
from natgrad.experiments._invariance_common import (
    F64,
    FAILURE_MIN,
    IDENTITY_TOL,
    PAPER,
    figure_path,
    floor_for_log,
    rel,
)

C2 = (1.0, 0.3)  # ∇z L at the singular model point 0 ∈ R² (the 2-D cases)
C1 = -1.0  # L′(0) in the 1-D cases


@dataclass(frozen=True)
class SingularConfig:
    """Settings: the near-rank-drop point and the cutoff sweep."""

    seed: int = 0
    near_drop_xi: tuple[float, float, float] = (1e-5, 0.8, -0.6)
    log10_rtols: tuple[float, ...] = (-15.0, -14.0, -13.0, -12.0, -11.0, -10.0, -9.0, -8.0, -6.0, -4.0, -2.0)
    good_rtol: float = 1e-13
    bad_rtol: float = 1e-8
    cusp_t: float = 1e-3


def config(quick: bool = False, seed: int = 0) -> SingularConfig:
    if quick:
        return SingularConfig(seed=seed, log10_rtols=(-15.0, -13.0, -11.0, -9.0, -8.0, -4.0))
    return SingularConfig(seed=seed)


def loss_1d(z: torch.Tensor) -> torch.Tensor:
    """L(z) = C1·z + z²/2 + z³/10 summed; L′(0) = C1."""
    return (C1 * z + 0.5 * z**2 + 0.1 * z**3).sum()


def loss_2d(z: torch.Tensor) -> torch.Tensor:
    """L(z) = ⟨c, z⟩ + ‖z‖²/2 + Σ z³/10; ∇L(0) = c = C2."""
    c = torch.tensor(C2, dtype=z.dtype)
    return (c * z).sum() + 0.5 * (z**2).sum() + 0.1 * (z**3).sum()


def _pushforward(phi: Callable[[torch.Tensor], torch.Tensor], xi: torch.Tensor, loss) -> torch.Tensor:
    return ng.natural_gradient(phi, xi, loss).pushforward.detach().reshape(-1)


def _projection(tangent: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of c onto span(tangent) (0 for a zero tangent)."""
    nn = float(tangent @ tangent)
    return tangent * (tangent @ c) / nn if nn > 0 else torch.zeros_like(c)


def _t(x: float) -> torch.Tensor:
    return torch.tensor([x], dtype=F64)


def run(cfg: SingularConfig, progress: Progress) -> dict[str, Any]:
    c = torch.tensor(C2, dtype=F64)
    out: dict[str, Any] = {}
    # η³ versus ξ at the model point 0
    ident = _pushforward(lambda x: x, _t(0.0), loss_1d)
    cube0 = _pushforward(lambda x: x**3, _t(0.0), loss_1d)
    cube_near = _pushforward(lambda x: x**3, _t(1e-3), loss_1d)
    grad_near = C1 + 1e-9 + 0.3 * 1e-18  # L′(z) = C1 + z + 0.3 z² at z = (1e-3)³
    out["cube"] = {
        "identity": ident.tolist(),
        "cube_at_0": cube0.tolist(),
        "cube_near_0": cube_near.tolist(),
        "identity_error": abs(float(ident[0]) - C1) / abs(C1),
        "cube_at_0_abs": abs(float(cube0[0])),
        "cube_near_error": abs(float(cube_near[0]) - grad_near) / abs(grad_near),
        "discrepancy": abs(float(ident[0] - cube0[0])) / abs(C1),
    }

    # the fibre of ξ₁ξ₂ over 0
    def product(x: torch.Tensor) -> torch.Tensor:
        return (x[0] * x[1]).reshape(1)

    fibre = {}
    for label, point in [("(0,0)", (0.0, 0.0)), ("(1,0)", (1.0, 0.0)), ("(0,2)", (0.0, 2.0))]:
        fibre[label] = float(_pushforward(product, torch.tensor(point, dtype=F64), loss_1d)[0])
    out["fibre"] = {
        "pushforwards": fibre,
        "regular_error": max(abs(fibre[k] - C1) / abs(C1) for k in ("(1,0)", "(0,2)")),
        "singular_abs": abs(fibre["(0,0)"]),
        "discrepancy": abs(fibre["(1,0)"] - fibre["(0,0)"]) / abs(C1),
    }

    # the figure-eight crossing
    def eight(t: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.sin(2 * t[0]), torch.sin(t[0])])

    branches = {}
    for label, t0 in [("t=0", 0.0), ("t=pi", math.pi)]:
        tt = _t(t0)
        tangent = torch.func.jacfwd(eight)(tt)[:, 0]
        pf = _pushforward(eight, tt, loss_2d)
        z = eight(tt)
        expected = _projection(tangent, c + z + 0.3 * z**2)
        branches[label] = {
            "pushforward": pf.tolist(),
            "expected": expected.tolist(),
            "error": rel(pf, expected),
            "point": z.tolist(),
        }
    pf0, pf1 = (torch.tensor(branches[k]["pushforward"]) for k in ("t=0", "t=pi"))
    out["figure_eight"] = {
        "branches": branches,
        "same_point": float(torch.linalg.vector_norm(eight(_t(0.0)) - eight(_t(math.pi)))),
        "discrepancy": rel(pf0, pf1),
    }

    # the cusp
    def cusp(t: torch.Tensor) -> torch.Tensor:
        return torch.stack([t[0] ** 2, t[0] ** 3])

    at0 = _pushforward(cusp, _t(0.0), loss_2d)
    near = {}
    for label, t0 in [("+", cfg.cusp_t), ("-", -cfg.cusp_t)]:
        tt = _t(t0)
        z = cusp(tt)
        expected = _projection(torch.func.jacfwd(cusp)(tt)[:, 0], c + z + 0.3 * z**2)
        pf = _pushforward(cusp, tt, loss_2d)
        near[label] = {"pushforward": pf.tolist(), "error": rel(pf, expected)}
    out["cusp"] = {
        "at_0": at0.tolist(),
        "at_0_abs": float(torch.linalg.vector_norm(at0)),
        "near": near,
        "near_error": max(v["error"] for v in near.values()),
        "discrepancy": min(
            float(torch.linalg.vector_norm(torch.tensor(v["pushforward"]) - at0)) / float(c.norm())
            for v in near.values()
        ),
    }

    # cutoff sensitivity near the rank drop of (ξ₁ξ₂, ξ₁ξ₃)
    def pair(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[0] * x[1], x[0] * x[2]])

    xi = torch.tensor(cfg.near_drop_xi, dtype=F64)
    z = pair(xi)
    reference = c + z + 0.3 * z**2  # grad^M L = g⁻¹∇L on M = R² (φ is a submersion at ξ₁ ≠ 0)
    rtols = [10.0**e for e in progress(cfg.log10_rtols, description="cutoff sweep")]
    # the SVD of A (lstsq route) keeps ~eps·cond(A) accuracy; the automatic route here is the dual one
    # (eigh of K = AAᵀ, 2 outputs < 3 parameters), which loses ~eps·cond(A)² ≈ 1e-6: recorded, not claimed
    rep = cutoff_sensitivity(pair, xi, loss_2d, rtols, reference=reference, method="lstsq")
    auto = cutoff_sensitivity(pair, xi, loss_2d, rtols, reference=reference, method="auto")
    jac = ng.jacobian(pair, xi)
    eig = torch.linalg.eigvalsh(jac.T @ jac).flip(0)
    good = cutoff_sensitivity(pair, xi, loss_2d, [cfg.good_rtol], reference=reference, method="lstsq")
    bad = cutoff_sensitivity(pair, xi, loss_2d, [cfg.bad_rtol], reference=reference, method="lstsq")
    out["cutoff"] = {
        "rtols": list(rep.rtols),
        "ranks": list(rep.ranks),
        "errors": list(rep.pushforward_errors),
        "errors_auto_route": list(auto.pushforward_errors),
        "eigenvalue_ratio": float(eig[1] / eig[0]),
        "good_rtol": cfg.good_rtol,
        "good_error": good.pushforward_errors[0],
        "bad_rtol": cfg.bad_rtol,
        "bad_error": bad.pushforward_errors[0],
    }
    return out


def claims(results: dict[str, Any]) -> list[Claim]:
    cube, fibre, eight, cusp, cut = (results[k] for k in ("cube", "fibre", "figure_eight", "cusp", "cutoff"))
    return [
        Claim(
            "identity-chart",
            "φ₁(ξ) = ξ at 0: pushforward = L′(0) (relative)",
            cube["identity_error"],
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "cube-at-0",
            "φ₂(η) = η³ at η = 0: J = 0, pushforward = 0 (absolute)",
            cube["cube_at_0_abs"],
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "cube-discrepancy",
            "ξ versus η³ at the same model point 0: |difference| / |L′(0)|",
            cube["discrepancy"],
            ">=",
            FAILURE_MIN,
        ),
        Claim(
            "cube-near-0",
            "η³ at η = 10⁻³ (regular): pushforward = L′(z) again (relative)",
            cube["cube_near_error"],
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "fibre-regular",
            "ξ₁ξ₂ at the preimages (1, 0) and (0, 2) of 0: pushforward = L′(0) (relative)",
            fibre["regular_error"],
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "fibre-singular",
            "ξ₁ξ₂ at the preimage (0, 0): pushforward = 0 (absolute)",
            fibre["singular_abs"],
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "fibre-discrepancy",
            "the pushforward at model point 0 depends on the preimage: relative gap",
            fibre["discrepancy"],
            ">=",
            FAILURE_MIN,
        ),
        Claim(
            "eight-branches",
            "figure-eight crossing: each branch gives the projection onto its own tangent (relative)",
            max(b["error"] for b in eight["branches"].values()),
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "eight-same-point",
            "both branches sit at the same model point: ‖γ(0) − γ(π)‖",
            eight["same_point"],
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "eight-discrepancy",
            "the two branches give two different pushforwards: relative gap",
            eight["discrepancy"],
            ">=",
            FAILURE_MIN,
        ),
        Claim(
            "cusp-at-0",
            "cusp (t², t³) at t = 0: pushforward = 0 (absolute)",
            cusp["at_0_abs"],
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "cusp-near",
            "cusp at t = ±10⁻³: pushforward = projection onto (2t, 3t²) (relative)",
            cusp["near_error"],
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "cusp-discrepancy",
            "the pushforward jumps at the cusp: ‖J v(±10⁻³) − J v(0)‖ / ‖∇L(0)‖",
            cusp["discrepancy"],
            ">=",
            FAILURE_MIN,
        ),
        Claim(
            "cutoff-small-correct",
            f"near the rank drop (λ_min/λ_max ≈ {cut['eigenvalue_ratio']:.1e}) a "
            f"cutoff rtol = {cut['good_rtol']:g} gives grad^M L = g⁻¹∇L (relative; SVD route)",
            cut["good_error"],
            "<=",
            IDENTITY_TOL,
        ),
        Claim(
            "cutoff-large-fails",
            f"a cutoff rtol = {cut['bad_rtol']:g} above λ_min/λ_max treats the point as "
            "singular: relative error",
            cut["bad_error"],
            ">=",
            FAILURE_MIN,
        ),
    ]


def figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ts = torch.linspace(0, 2 * math.pi, 400)
    ax = axes[0]
    ax.plot(torch.sin(2 * ts), torch.sin(ts), "k-", lw=0.8)
    for i, (label, b) in enumerate(results["figure_eight"]["branches"].items()):
        ax.quiver(
            0,
            0,
            *b["pushforward"],
            angles="xy",
            scale_units="xy",
            scale=1,
            color=f"C{i}",
            label=f"J v at {label}",
        )
    ax.quiver(0, 0, *C2, angles="xy", scale_units="xy", scale=1, color="gray", label="∇L(0)")
    ax.set_aspect("equal")
    ax.set_title("figure-eight crossing: two pushforwards")
    ax.legend(fontsize=7)
    ax = axes[1]
    tc = torch.linspace(-1.1, 1.1, 400)
    ax.plot(tc**2, tc**3, "k-", lw=0.8)
    cusp = results["cusp"]
    ax.quiver(
        0,
        0,
        *cusp["near"]["+"]["pushforward"],
        angles="xy",
        scale_units="xy",
        scale=1,
        color="C0",
        label="J v at t = ±1e-3",
    )
    ax.plot([0], [0], "ro", label=f"J v at t = 0: {cusp['at_0']}")
    ax.set_aspect("equal")
    ax.set_title("cusp (t², t³)")
    ax.legend(fontsize=7)
    ax = axes[2]
    cut = results["cutoff"]
    ax.loglog(cut["rtols"], floor_for_log(cut["errors"]), "o-", label="pushforward error (lstsq route)")
    ax.loglog(cut["rtols"], floor_for_log(cut["errors_auto_route"]), "s--", label="automatic (dual) route")
    ax.axvline(cut["eigenvalue_ratio"], color="r", ls="--", label="λ_min/λ_max of G")
    ax.axhline(IDENTITY_TOL, color="k", ls=":", lw=1)
    ax.set_xlabel("Moore–Penrose rtol")
    ax.set_title("cutoff near the rank drop of (ξ₁ξ₂, ξ₁ξ₃), ξ₁ = 1e-5")
    ax.legend(fontsize=7)
    path = save_figure(fig, figure_path(out_dir, "singular_points"))
    return [path]


EXPERIMENT = Experiment(
    name="singular-points",
    title="Singular points: η³, the ξ₁ξ₂ fibre, a figure-eight crossing, a cusp, and the rank cutoff",
    config=config,
    run=run,
    claims=claims,
    figures=figures,
    paper=PAPER,
    tags=("invariance", "singular"),
)
