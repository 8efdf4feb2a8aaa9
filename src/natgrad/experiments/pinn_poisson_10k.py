"""2-D Poisson PINN at d ≈ 10⁴ (64-64-48-48): the size-chosen route against natgrad's own primal d×d ENGD.

Same problem as ``pinn-poisson`` (u* = sin(πx) sin(πy), zero Dirichlet data), with a tanh network
2 → 64 → 64 → 48 → 48 → 1 (d = 9,873) on 900 interior (30² cell centres) + 120 boundary points (quick:
2 → 16 → 16 → 12 → 12 → 1, d = 693, on 100 + 40). With d ≫ N, ``NGD``'s ``auto`` route solves the N×N
kernel system (cost O(N²d) per step); exact ENGD as usually implemented factorises the d×d Gram matrix
(O(d³), 0.78 GB per matrix in float64 at d = 9,873). Both compute the same Moore–Penrose step (up to their
cutoffs), so on an equal step budget (quick) they reach the same errors; on the full setting's equal
CPU-time budget the primal route affords a handful of steps where the dual one takes hundreds. Adam and
L-BFGS get the same budget. The full setting's budget is 200 s of single-threaded CPU time per method, a
fifth of the issue's 1,000 s (which was not run); its claims are stated on that budget. Budgets, methods and
timing: see `_pde_training`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from natgrad import pde
from natgrad.experiments import _poisson as problems
from natgrad.experiments._base import Claim, Experiment, Progress
from natgrad.experiments._pde_training import (
    Training,
    error_figure,
    run_methods,
    standard_claims,
    with_cpu_per_step,
)


@dataclass(frozen=True)
class Config:
    """Settings of one run (quick or full)."""

    seed: int
    widths: tuple[int, ...]
    interior_per_side: int
    boundary_per_edge: int
    training: Training
    error_target: float  # claimed: ENGD (auto route) reaches this relative L2 error within its steps
    baseline_factors: tuple[tuple[str, float], ...]  # claimed: each baseline ends this factor above ENGD
    primal_agreement: (
        float  # claimed (equal step budgets only): primal and auto final errors within this factor
    )


def config(quick: bool, seed: int = 0) -> Config:
    if quick:
        training = Training(
            steps=(("ngd", 25), ("ngd-primal", 25), ("adam", 500), ("lbfgs", 15)),
            eval_every=(("ngd", 1), ("ngd-primal", 1), ("adam", 50), ("lbfgs", 1)),
        )
        return Config(
            seed,
            (16, 16, 12, 12),
            10,
            10,
            training,
            1e-3,
            (("adam", 10.0), ("lbfgs", 10.0)),
            primal_agreement=10.0,
        )
    # Full: an equal budget of 200 s of single-threaded CPU time per method (steps are caps only). The issue's
    # target is 1e-6 within 1,000 s; 1,000 s for each of the four methods was not run (4,000 s of CPU did not
    # fit the share of the shared machine these results were made on), so the claim is the stricter 1e-6
    # within 200 s, with the primal d×d route on the same 200 s (its second step finishes past it, at 380 s).
    # Measured (seed 0): 9.5e-8 at 200 s, 1e-6 after 26 s (step 25); primal 0.66 after 2 steps. The
    # Moore–Penrose cutoff 1e-15·λ_max is set explicitly (natgrad's default stalls near 1e-6 on these kernels).
    training = Training(
        steps=(("ngd", 10**6), ("ngd-primal", 10**6), ("adam", 10**8), ("lbfgs", 10**6)),
        eval_every=(("ngd", 1), ("ngd-primal", 1), ("adam", 100), ("lbfgs", 1)),
        rtol=1e-15,
        cpu_budget_s=200.0,
        parallel_methods=True,
    )
    return Config(
        seed,
        (64, 64, 48, 48),
        30,
        30,
        training,
        1e-6,
        (("ngd-primal", 10.0), ("adam", 10.0), ("lbfgs", 10.0)),
        primal_agreement=10.0,
    )


def problem(cfg: Config) -> tuple[Callable[[], pde.Problem], Callable[[pde.Problem], float]]:
    """(make_problem, error_of) of this setting."""
    return problems.poisson_2d(cfg.widths, cfg.interior_per_side, cfg.boundary_per_edge, cfg.seed)


def run(cfg: Config, progress: Progress) -> dict[str, Any]:
    return finish(cfg, run_methods(*problem(cfg), cfg.training, progress))


def finish(cfg: Config, results: dict[str, Any]) -> dict[str, Any]:
    """The stored results: the methods' (from `run_methods` or `combine_records`) and the claim settings."""
    return {
        **with_cpu_per_step(results),
        "error_target": cfg.error_target,
        "baseline_factors": dict(cfg.baseline_factors),
        "primal_agreement": cfg.primal_agreement,
    }


def claims(results: dict[str, Any]) -> list[Claim]:
    out = standard_claims(results, results["error_target"], results["baseline_factors"])
    methods, steps = results["methods"], results["steps"]
    auto, primal = methods["ngd"], methods["ngd-primal"]
    if results.get("cpu_budget_s") is None and steps["ngd-primal"] == steps["ngd"]:
        ratio = max(auto["final_error"], primal["final_error"]) / min(
            auto["final_error"], primal["final_error"]
        )
        out.append(
            Claim(
                "primal-same-steps",
                f"On the same {steps['ngd']} steps the primal d×d route reaches the same error as the auto route "
                f"(final errors {primal['final_error']:.2e} and {auto['final_error']:.2e}, ratio ≤ "
                f"{results['primal_agreement']:g}); it took {primal['cpu_seconds_per_step']:.3f} CPU s per step against "
                f"{auto['cpu_seconds_per_step']:.3f} s (reported, not claimed)",
                ratio,
                "<=",
                results["primal_agreement"],
            )
        )
    return out


def figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    return [
        error_figure(results, out_dir, "pinn_poisson_10k_error.png", "2-D Poisson PINN, dual vs primal ENGD")
    ]


EXPERIMENT = Experiment(
    name="pinn-poisson-10k",
    title="PINN for 2-D Poisson at d ≈ 10⁴: natgrad's N×N route vs the primal d×d ENGD, Adam and L-BFGS",
    config=config,
    run=run,
    claims=claims,
    figures=figures,
    paper="practice",
)
