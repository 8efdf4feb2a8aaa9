"""1-D heat equation PINN, d = 257: u_t = u_xx / 4 on (x, t) ∈ (0, 1)², u(x, 0) = sin(πx), u = 0 at x = 0, 1.

u* = exp(−π² t / 4) sin(πx). A tanh network (x, t) → 64 → 1 (257 parameters; quick: → 32 → 1, 129) on
the residuals of u_t − κu_xx on a grid of interior points (30² full, 12² quick), of u − sin(πx) on t = 0
and of u on x ∈ {0, 1} (30 points per edge full, 12 quick). The full setting uses NGD's defaults (for residuals
the Moore–Penrose cutoff 5·eps·λ_max of `natgrad.linalg.residual_rtol`; a step the grid search cuts below 2⁻¹⁰
is also searched along the engine default's direction). The quick setting keeps the cutoff 10⁻¹⁰·λ_max: from a
Glorot initialisation of the small network both default directions keep directions of tiny curvature, are
huge, and the grid line search barely moves for the first 50 steps (0.78 relative error, seed 0), while 10⁻¹⁰
leaves the nonlinear phase by step 40. Seed 0, 1,000 full steps: defaults 7.4·10⁻⁷ (10⁻⁷ is not reached; the
loss stops at 5·10⁻¹² and no grid step lowers it further), 10⁻¹⁵ 3.3·10⁻⁷, the
engine default 1.6·10⁻⁵, 10⁻¹⁰ 1.6·10⁻⁴. The heat operator is a `pde.LinearOperator`
(a Laplacian over x only plus the advection term of t). Relative L2 error by Gauss–Legendre quadrature.
Budgets, methods and timing: see `_pde_training`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from natgrad.experiments import _poisson as problems
from natgrad.experiments._base import Claim, Experiment, Progress
from natgrad.experiments._pde_training import Training, error_figure, run_methods, standard_claims


@dataclass(frozen=True)
class Config:
    """Settings of one run (quick or full)."""

    seed: int
    widths: tuple[int, ...]
    interior_per_side: int
    edge_points: int
    training: Training
    error_target: float
    baseline_factors: tuple[tuple[str, float], ...]  # claimed: each baseline ends this factor above ENGD
    uniform_init: bool = False  # layers drawn as torch's nn.Linear default instead of pde.mlp's Glorot


def config(quick: bool, seed: int = 0) -> Config:
    if quick:
        training = Training(
            steps=(("ngd", 80), ("adam", 500), ("lbfgs", 15)),
            eval_every=(("ngd", 1), ("adam", 50), ("lbfgs", 1)),
            rtol=1e-10,
        )
        return Config(seed, (32,), 12, 12, training, 1e-3, (("adam", 10.0), ("lbfgs", 10.0)))
    training = Training(
        steps=(("ngd", 3000), ("adam", 40000), ("lbfgs", 1000)),
        eval_every=(("ngd", 10), ("adam", 200), ("lbfgs", 5)),
        damping=1e-10,
        gram_average=0.6,
    )
    return Config(seed, (64,), 30, 30, training, 1e-7, (("adam", 100.0), ("lbfgs", 100.0)), True)


def run(cfg: Config, progress: Progress) -> dict[str, Any]:
    make, error_of = problems.heat_1d(
        cfg.widths, cfg.interior_per_side, cfg.edge_points, cfg.seed, cfg.uniform_init
    )
    results = run_methods(make, error_of, cfg.training, progress)
    return {**results, "error_target": cfg.error_target, "baseline_factors": dict(cfg.baseline_factors)}


def claims(results: dict[str, Any]) -> list[Claim]:
    return standard_claims(results, results["error_target"], results["baseline_factors"])


def figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    return [error_figure(results, out_dir, "pinn_heat_error.png", "1-D heat equation PINN")]


EXPERIMENT = Experiment(
    name="pinn-heat",
    title="PINN for the 1-D heat equation (d = 257): energy natural gradient vs Adam and L-BFGS",
    config=config,
    run=run,
    claims=claims,
    figures=figures,
    paper="practice",
)
