"""What `natgrad.keep_freed_memory()` saves on the 5-D Poisson ENGD step: CPU time, split into user and system.

From a stored network of the full setting's run (``--state``, a state dict; default the late-phase script's
step-150 checkpoint), each of two fresh interpreters takes the same ``--steps`` ENGD steps (λ = the setting's,
geodesic acceleration, fresh points every step, one torch thread): one with glibc's defaults, one after
``natgrad.keep_freed_memory()``. Each reports per step the user and system CPU seconds (``resource.getrusage``)
and the minor page faults, and the parameters after the last step; the two must be bitwise equal (the same
operations on the same numbers). Results: ``benchmarks/results/pde_allocator.json``.

Usage:
    python benchmarks/pde_allocator.py [--steps 6] [--state benchmarks/results/pde_late_damping.step150.pt]
        [--out benchmarks/results/pde_allocator.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from natgrad.report import atomic_write_json, collect_environment  # noqa: E402

RESULTS = Path(__file__).parent / "results"

# One interpreter's run: the steps from the stored network, measured per step.
_WORKER = """
import hashlib, json, resource, sys
sys.path.insert(0, sys.argv[4])
import torch
import natgrad as ng
from natgrad.experiments import pinn_poisson_5d
from natgrad.optim import NGD, default_grid

torch.set_num_threads(1)
kept = ng.keep_freed_memory() if sys.argv[1] == "keep" else None
cfg = pinn_poisson_5d.config(False, 0)
make, error_of = pinn_poisson_5d.problem(cfg)
problem, draws = make(), pinn_poisson_5d.resampler(cfg)()
problem.network.module.load_state_dict(torch.load(sys.argv[3]))
opt = NGD(
    problem.network.module.named_parameters(),
    line_search="grid",
    line_search_grid=default_grid(cfg.training.grid_size),
    damping=cfg.training.damping,
    geodesic_acceleration=cfg.training.geodesic_acceleration,
)
steps = []
for step in range(int(sys.argv[2])):
    draws.update(problem, step)
    before = resource.getrusage(resource.RUSAGE_SELF)
    opt.step(problem)
    after = resource.getrusage(resource.RUSAGE_SELF)
    steps.append({
        "user_s": after.ru_utime - before.ru_utime,
        "system_s": after.ru_stime - before.ru_stime,
        "minor_faults": after.ru_minflt - before.ru_minflt,
    })
flat = ng.flatten_params(problem.network.params()).detach()
print(json.dumps({
    "keeps_freed_memory": kept,
    "steps": steps,
    "error": error_of(problem),
    "parameters_sha256": hashlib.sha256(flat.numpy().tobytes()).hexdigest(),
    "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}))
"""


def _run(mode: str, steps: int, state: Path) -> dict:
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run(
        [sys.executable, "-c", _WORKER, mode, str(steps), str(state), src],
        capture_output=True,
        text=True,
        check=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(run: dict) -> dict:
    later = run["steps"][1:] or run["steps"]  # the first step also faults in what every later one reuses
    n = len(later)
    user = sum(s["user_s"] for s in later) / n
    system = sum(s["system_s"] for s in later) / n
    return {
        "cpu_s_per_step": user + system,
        "user_s_per_step": user,
        "system_s_per_step": system,
        "minor_faults_per_step": sum(s["minor_faults"] for s in later) / n,
        "max_rss_gib": run["max_rss_kib"] / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--state", type=Path, default=RESULTS / "pde_late_damping.step150.pt")
    parser.add_argument("--out", type=Path, default=RESULTS / "pde_allocator.json")
    args = parser.parse_args()
    if args.steps < 2 or not args.state.is_file():
        raise SystemExit(
            f"pde_allocator: --steps >= 2 and an existing --state file expected (got {args.steps}, "
            f"{args.state}); `python benchmarks/pde_late_damping.py` writes the default checkpoint"
        )
    runs = {}
    for mode in ("plain", "keep"):
        print(f"pde_allocator: {mode}: {args.steps} steps ...", file=sys.stderr, flush=True)
        runs[mode] = _run(mode, args.steps, args.state)
    summary = {mode: _summary(run) for mode, run in runs.items()}
    same = runs["plain"]["parameters_sha256"] == runs["keep"]["parameters_sha256"]
    summary["cpu_ratio_keep_to_plain"] = (
        summary["keep"]["cpu_s_per_step"] / summary["plain"]["cpu_s_per_step"]
    )
    summary["bitwise_same_parameters"] = same
    for mode in ("plain", "keep"):
        s = summary[mode]
        print(
            f"{mode:>5}: {s['cpu_s_per_step']:.2f} s CPU a step ({s['user_s_per_step']:.2f} user, "
            f"{s['system_s_per_step']:.2f} system), {s['minor_faults_per_step']:.0f} page faults, "
            f"peak {s['max_rss_gib']:.1f} GiB"
        )
    print(
        f"keep / plain CPU: {summary['keep']['cpu_ratio_to_plain']:.2f}; bitwise the same parameters: {same}"
    )
    path = atomic_write_json(
        args.out,
        {
            "benchmark": "pde_allocator",
            "description": (
                "5-D Poisson ENGD steps (the full setting's) from a stored network in two fresh interpreters, "
                "glibc's malloc defaults against natgrad.keep_freed_memory(); CPU per step (the first left "
                "out of the means), page faults, peak memory, and whether the parameters agree bitwise"
            ),
            "settings": {"steps": args.steps, "state": args.state.name},
            "environment": collect_environment(),
            "summary": summary,
            "runs": runs,
        },
    )
    print(f"wrote {path}")
    if not same:
        raise SystemExit("pde_allocator: the two runs' parameters differ")


if __name__ == "__main__":
    main()
