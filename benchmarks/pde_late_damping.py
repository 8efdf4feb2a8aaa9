"""Late-phase damping of the 5-D Poisson ENGD run: from one point of the run, the same draws under several λ.

The full setting of ``pinn-poisson-5d`` trains ENGD with λ = 1e-8 and fresh collocation points every step
(``pde.Resampler``). This script trains it for ``--checkpoint`` steps, stores the network (resumed when the
file is there), and continues from that point for ``--steps`` steps with each damping of ``--dampings`` on
the same sequence of draws, recording per step the relative L2 error, the step size the grid line search
chose, the damping used, the loss on the step's own points before and after the step, and the CPU time (one
torch thread). It measures what limits the late phase: the line search cuts the damped Gauss–Newton step to a
few percent (α ≪ 1) when λ leaves long directions in v, and what a step removes from the loss on its own
points is compared with the loss the next, fresh points show. ``--momenta`` runs every damping with each
dual-form momentum μ as well (``NGD(momentum=μ)``: v = μ v_prev + (G + λI)⁻¹(∇ − μ G v_prev), the SPRING
form); ``--sobol`` draws the branches' points as scrambled Sobol points (``pde.sobol``, ``pde.sobol_boundary``)
instead of uniform ones; ``--geodesic`` searches along the geodesically accelerated path
(``NGD(geodesic_acceleration=True)``: θ(α) = θ − α v − ½α² a).

Usage:
    python benchmarks/pde_late_damping.py [--checkpoint 150] [--steps 30] [--dampings 1e-9 1e-8 1e-7 1e-6]
        [--momenta 0] [--sobol] [--geodesic] [--out benchmarks/results/pde_late_damping.json] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from natgrad import pde  # noqa: E402
from natgrad.experiments import _poisson, pinn_poisson_5d  # noqa: E402
from natgrad.optim import NGD, default_grid  # noqa: E402
from natgrad.report import atomic_write_json, collect_environment  # noqa: E402

# λ of the trunk: the straight-search run the stored step-150 checkpoints come from (the full setting's λ then;
# it has moved on to 1e-9 with geodesic acceleration, which the branches can select)
TRUNK_DAMPING = 1e-8


def _grid(grid_size: int, top: float = 1.0) -> tuple[float, ...]:
    """The PDE experiments' grid (`_pde_training.train`) 1, ½, …, 2^(1 − grid_size), scaled by ``top``."""
    return tuple(top * alpha for alpha in default_grid(grid_size))


def _optimizer(
    module: torch.nn.Module,
    damping: float,
    grid: tuple[float, ...],
    momentum: float = 0.0,
    geodesic: bool = False,
) -> NGD:
    """ENGD as the PDE experiments run it, on the step sizes ``grid``."""
    return NGD(
        module.named_parameters(),
        lr=1.0,
        line_search="grid",
        line_search_grid=grid,
        damping=damping,
        momentum=momentum,
        geodesic_acceleration=geodesic,
    )


def _label(damping: float, momentum: float) -> str:
    return f"λ = {damping:g}" if momentum == 0 else f"λ = {damping:g}, μ = {momentum:g}"


def _train(
    problem: Any,
    resampler: Any,
    error_of: Any,
    damping: float,
    grid: tuple[float, ...],
    first: int,
    steps: int,
    momentum: float = 0.0,
    geodesic: bool = False,
    averages: tuple[float, ...] = (),
    search_resampler: Any = None,
) -> list[dict]:
    """``steps`` ENGD steps from step ``first`` on; one record per step.

    ``averages`` are decays β of exponential moving averages of the parameters, θ̄ ← β θ̄ + (1 − β) θ, started at
    the branch's first network; each record carries their errors (the iterate is still what trains).
    """
    module = problem.network.module
    opt = _optimizer(module, damping, grid, momentum, geodesic)
    means = {beta: [p.detach().clone() for p in module.parameters()] for beta in averages}
    # the grid search on the next draw's points: a copy of the problem (same network) one draw ahead
    search = None if search_resampler is None else problem.held_out()
    records = []
    for step in range(first, first + steps):
        resampler.update(problem, step)
        if search is not None:
            search_resampler.update(search, step + 1)
        start = time.process_time()
        opt.step(problem, search=search)
        cpu = time.process_time() - start
        info = opt.last_step
        averaged = {}
        for beta, mean in means.items():
            with torch.no_grad():
                for m, p in zip(mean, module.parameters(), strict=True):
                    m.mul_(beta).add_(p, alpha=1 - beta)
            averaged[f"{beta:g}"] = _error_at(problem, error_of, mean)
        records.append(
            {
                "step": step + 1,
                "error": float(error_of(problem)),
                "averaged_errors": averaged,
                "loss": float(info["loss"]),
                "loss_after": float(info["loss_after"]),  # on the same points
                **(
                    {}
                    if search is None
                    else {"search_loss": info["search_loss"], "search_loss_after": info["search_loss_after"]}
                ),
                "step_size": float(info["step_size"]),
                "damping": float(info["damping"]),
                "cpu_s": cpu,
            }
        )
        print(
            f"{_label(damping, momentum)}: step {step + 1}: relative L2 {records[-1]['error']:.3e}, "
            f"α = {info['step_size']:g}"
            + "".join(f", β = {beta}: {err:.3e}" for beta, err in averaged.items()),
            file=sys.stderr,
            flush=True,
        )
    return records


def _error_at(problem: Any, error_of: Any, values: list[torch.Tensor]) -> float:
    """The error of the problem's network with its parameters set to ``values``; the parameters are restored."""
    params = list(problem.network.module.parameters())
    kept = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v)
        try:
            return float(error_of(problem))
        finally:
            for p, v in zip(params, kept, strict=True):
                p.copy_(v)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", type=int, default=150, help="steps at λ = the setting's before branching"
    )
    parser.add_argument("--steps", type=int, default=30, help="steps of each branch")
    parser.add_argument("--dampings", type=float, nargs="+", default=[1e-9, 1e-8, 1e-7, 1e-6])
    parser.add_argument(
        "--momenta", type=float, nargs="+", default=[0.0], help="dual-form momenta μ in [0, 1)"
    )
    parser.add_argument("--sobol", action="store_true", help="the branches on scrambled Sobol points")
    parser.add_argument(
        "--geodesic", action="store_true", help="the branches with NGD(geodesic_acceleration=True)"
    )
    parser.add_argument(
        "--averages",
        type=float,
        nargs="*",
        default=[],
        help="decays β in (0, 1) of parameter moving averages whose errors are recorded",
    )
    parser.add_argument(
        "--grid-top",
        type=float,
        default=1.0,
        help="the branches' largest step size (the grid halves from it)",
    )
    parser.add_argument(
        "--search-next", action="store_true", help="the branches' grid search on the next draw's points"
    )
    parser.add_argument(
        "--save-final",
        action="store_true",
        help="store a single branch's last network as the checkpoint file of step checkpoint + steps",
    )
    parser.add_argument("--quick", action="store_true", help="the quick setting's problem, 10 + 5 steps")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.checkpoint, args.steps = 10, 5
    if (
        args.checkpoint < 0
        or args.steps < 1
        or not all(lam > 0 for lam in args.dampings)
        or not all(0 <= mu < 1 for mu in args.momenta)
        or not all(0 < beta < 1 for beta in args.averages)
        or not 0 < args.grid_top <= 1
        or (args.save_final and len(args.dampings) * len(args.momenta) != 1)
    ):
        raise SystemExit(
            "pde_late_damping: --checkpoint >= 0, --steps >= 1, dampings > 0, momenta in [0, 1), averages in"
            " (0, 1), --grid-top in (0, 1] and one branch with --save-final expected"
        )
    torch.set_num_threads(1)
    cfg = pinn_poisson_5d.config(args.quick, 0)
    base_damping = TRUNK_DAMPING
    make, error_of = pinn_poisson_5d.problem(cfg)
    draws = pinn_poisson_5d.resampler(cfg) or (lambda: _FixedPoints())
    stem = "pde_late_damping_quick" if args.quick else "pde_late_damping"
    out = args.out or Path(__file__).parent / "results" / f"{stem}.json"
    state_file = out.with_suffix(f".step{args.checkpoint}.pt")

    grid_size = cfg.training.grid_size
    if state_file.exists():  # resume: the network at the checkpoint
        start_state = torch.load(state_file)
        trunk: list[dict] = []
    else:
        problem, resampler = make(), draws()
        trunk = _train(problem, resampler, error_of, base_damping, _grid(grid_size), 0, args.checkpoint)
        start_state = {k: v.clone() for k, v in problem.network.module.state_dict().items()}
        tmp = state_file.with_suffix(".tmp")
        torch.save(start_state, tmp)
        tmp.replace(state_file)

    branches = {}
    for mu in args.momenta:
        for lam in args.dampings:  # each from the checkpoint's network, with the draws replayed up to it
            problem = make()
            problem.network.module.load_state_dict(start_state)
            if args.sobol:  # fresh quasi-random points from the branch's first step on, seeded
                resampler = _sobol_resampler(cfg)
            else:
                resampler = draws()
                for step in range(args.checkpoint):
                    resampler.update(problem, step)
            search_resampler = None
            if args.search_next:  # one draw ahead of the branch's: draws 0, …, checkpoint replayed
                if args.sobol:
                    raise SystemExit("pde_late_damping: --search-next runs on the setting's uniform draws")
                search_resampler = draws()
                for step in range(args.checkpoint + 1):
                    search_resampler(step)
            branches[_label(lam, mu)] = _train(
                problem,
                resampler,
                error_of,
                lam,
                _grid(grid_size, args.grid_top),
                args.checkpoint,
                args.steps,
                mu,
                args.geodesic,
                tuple(args.averages),
                search_resampler,
            )
            if args.save_final:
                final = out.with_suffix(f".step{args.checkpoint + args.steps}.pt")
                tmp = final.with_suffix(".tmp")
                torch.save(problem.network.module.state_dict(), tmp)
                tmp.replace(final)
    summary = {}
    for label, records in branches.items():
        sizes = [r["step_size"] for r in records]
        # what a step removes from the loss on its own points, and what the next fresh points show of it
        own = [1 - r["loss_after"] / r["loss"] for r in records]
        carried = [1 - b["loss"] / a["loss"] for a, b in zip(records, records[1:], strict=False)]
        summary[label] = {
            "first_step": records[0]["step"],
            "last_step": records[-1]["step"],
            "final_error": records[-1]["error"],
            "step_size_min": min(sizes),
            "step_size_max": max(sizes),
            "cpu_s_per_step": sum(r["cpu_s"] for r in records) / len(records),
            "mean_loss_reduction_on_own_points": sum(own) / len(own),
            "mean_loss_reduction_on_next_points": sum(carried) / max(1, len(carried)),
            "final_averaged_errors": records[-1]["averaged_errors"],
        }
    rows = [{"run": f"λ = {base_damping:g} to the checkpoint", **r} for r in trunk]
    rows += [{"run": label, **r} for label, records in branches.items() for r in records]
    path = atomic_write_json(
        out,
        {
            "benchmark": "pde_late_damping",
            "description": (
                "5-D Poisson ENGD (fresh points every step): from the network after the checkpoint's steps, the "
                "same draws under several dampings; error, the step size the grid search chose, CPU per step"
            ),
            "settings": {
                "quick": args.quick,
                "checkpoint": args.checkpoint,
                "steps": args.steps,
                "trunk_damping": base_damping,
                "dampings": args.dampings,
                "momenta": args.momenta,
                "branch_points": "scrambled Sobol" if args.sobol else "the setting's uniform draws",
                "geodesic_acceleration": args.geodesic,
                "averages": args.averages,
                "grid_top": args.grid_top,
                "search_next_points": args.search_next,
                "trunk_resumed": not trunk and args.checkpoint > 0,
            },
            "environment": collect_environment(),
            "summary": summary,
            "steps": rows,
        },
    )
    print(f"wrote {path}")


def _sobol_resampler(cfg: Any) -> pde.Resampler:
    """Scrambled Sobol points of the setting's sizes, fresh every step, from the setting's seed."""

    def draw(generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {
            "interior": pde.sobol(cfg.interior, _poisson.CUBE_5D, generator),
            "boundary": pde.sobol_boundary(cfg.boundary, _poisson.CUBE_5D, generator),
        }

    return pde.Resampler(draw, 1, _poisson.poisson_5d_seed(cfg.seed))


class _FixedPoints:
    """The quick setting keeps its points: a resampler that changes nothing."""

    def __call__(self, step: int) -> None:
        return None

    def update(self, problem: Any, step: int) -> None:
        return None


if __name__ == "__main__":
    main()
