"""The residual Jacobian of a Poisson PINN: natgrad.pde's forward Laplacian against plain torch.func.

Residual r_i = Δu_θ(x_i) + f(x_i) on N interior points of (0, 1)^D for tanh MLPs; J = ∂r/∂θ is N × d. Ways
of building J, each timed (process CPU time with one torch thread, medians; wall-clock medians recorded too)
as a multiple of one gradient of the loss ½‖r‖² (through the forward Laplacian) measured in the same run:

* ``forward-laplacian``: ``pde.Problem.jacobian`` — (u, ∂u, Δu) propagated through the layers, per-point
  parameter gradients by ``vmap(jacrev(...))`` over points;
* ``vmap-jacrev-hessian``: the plain torch.func way, ``vmap(jacrev(θ ↦ tr hessian_x u(θ, x)))`` over points;
* ``generic-rows``: ``ng.jacobian`` of the batched residual map (one vector-Jacobian product per row, each
  through the whole batch: what the engine does with a residual map that cannot linearise itself); run only
  where it takes under a minute.

Every J is checked against the forward-Laplacian one (max abs difference recorded).

``--step``: where one ENGD step of the size experiments goes (process CPU time, one thread, median of
``--repeats``), on their own problems — 2-D Poisson 2-64-64-48-48-1 on 900 + 120 points (d = 9,873,
N = 1,020) and 5-D Poisson 5-64-64-48-48-1 on 3,000 + 500 points (d = 10,065, N = 3,500): the residual
Jacobian J; the kernel K = J Jᵀ; its eigendecomposition (the Moore–Penrose solve); J as the engine would
form it from the linearised map without its own J (N vector–Jacobian products, what it did before it took
the map's J); what it spends on the linearised map (an affine map, taken as its value and J); the grid line
search (30 loss evaluations); and one whole ``NGD.step``.

Usage:
    python benchmarks/pde_jacobian.py [--quick] [--step] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call, hessian, jacrev, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _env import cpu_time_call, time_call  # noqa: E402

import natgrad as ng  # noqa: E402
from natgrad import pde  # noqa: E402
from natgrad.linalg._gram import row_gram  # noqa: E402
from natgrad.report import atomic_write_json, collect_environment  # noqa: E402

FULL = [((2, 64, 1), 1020), ((2, 64, 64, 48, 48, 1), 1020), ((5, 64, 64, 48, 48, 1), 500)]
QUICK = [((2, 32, 1), 200), ((2, 16, 16, 12, 12, 1), 200), ((5, 16, 16, 1), 200)]
GENERIC_LIMIT_S = 60.0


def _source(x: torch.Tensor) -> torch.Tensor:
    return math.pi**2 * torch.cos(math.pi * x).sum(-1)


def _case(widths: tuple[int, ...], n: int):
    dim = widths[0]
    net = pde.Network(pde.mlp(list(widths), generator=torch.Generator().manual_seed(0)))
    points = pde.uniform(n, [(0.0, 1.0)] * dim, torch.Generator().manual_seed(1))
    problem = pde.Problem(net, [pde.interior(points, lambda jet, x: jet.laplacian() + _source(x))])
    return net, problem, points


def _torch_func_jacobian(net: pde.Network, params, points: torch.Tensor) -> torch.Tensor:
    module = net.module

    def u(p, x):
        return functional_call(module, p, (x.unsqueeze(0),)).reshape(())

    def residual(p, x):
        return torch.diagonal(hessian(u, argnums=1)(p, x)).sum() + _source(x)

    rows = vmap(jacrev(residual), in_dims=(None, 0))(params, points)
    scale = 1.0 / math.sqrt(points.shape[0])
    return torch.cat([rows[k].reshape(points.shape[0], -1) for k in params], 1) * scale


def measure(widths: tuple[int, ...], n: int, repeats: int) -> dict:
    net, problem, points = _case(widths, n)
    params = net.params()
    d = ng.num_params(params)
    grad_params = {k: v.clone().requires_grad_(True) for k, v in params.items()}

    def one_gradient():
        return torch.autograd.grad(problem.loss(grad_params), list(grad_params.values()), allow_unused=True)

    gradient = time_call(one_gradient, repeats=max(repeats, 5), warmup=2)
    gradient_cpu = cpu_time_call(one_gradient, max(repeats, 5))["median"]
    reference = problem.jacobian(params)
    ways = {
        "forward-laplacian": lambda: problem.jacobian(params),
        "vmap-jacrev-hessian": lambda: _torch_func_jacobian(net, params, points),
    }
    out = {
        "widths": list(widths),
        "input_dim": widths[0],
        "num_points": n,
        "num_params": d,
        "one_gradient_s": gradient["median"],
        "one_gradient_cpu_s": gradient_cpu,
        "ways": {},
    }
    for name, fn in ways.items():
        timing = time_call(fn, repeats=repeats, warmup=1)
        cpu = cpu_time_call(fn, repeats)["median"]
        diff = float((fn() - reference).abs().max())
        out["ways"][name] = {
            "seconds": timing["median"],
            "cpu_seconds": cpu,
            "gradients": cpu / gradient_cpu,
            "max_abs_difference": diff,
        }
    start, start_cpu = time.perf_counter(), time.process_time()
    estimate = out["ways"]["forward-laplacian"]["seconds"] * n  # generic rows cost about N× more
    if estimate < GENERIC_LIMIT_S:
        generic = ng.jacobian(problem.residuals, params)
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        out["ways"]["generic-rows"] = {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "gradients": cpu / gradient_cpu,
            "max_abs_difference": float((generic - reference).abs().max()),
        }
    else:
        out["ways"]["generic-rows"] = {"skipped": f"estimated over {GENERIC_LIMIT_S:g} s"}
    return out


STEP_CASES = {"poisson-2d": ((64, 64, 48, 48), 30, 30), "poisson-5d": ((64, 64, 48, 48), 3000, 500)}
STEP_CASES_QUICK = {"poisson-2d": ((16, 16, 12, 12), 10, 10), "poisson-5d": ((16, 16), 200, 60)}


def step_breakdown(name: str, sizes: tuple, repeats: int) -> dict:
    """CPU seconds of the parts of one ENGD step on one problem, and of two whole steps (grid line search):
    Moore–Penrose (cutoff 1e-15·λ_max, eigh of K) and damped (λ = 1e-8, a Cholesky factorisation of K + λI)."""
    from natgrad.experiments import _poisson
    from natgrad.models import Linearization
    from natgrad.optim import NGD

    widths, first, second = sizes
    build = _poisson.poisson_2d if name == "poisson-2d" else _poisson.poisson_5d
    make, _ = build(widths, first, second, 0)
    problem = make()
    params = problem.network.params()
    jac = problem.jacobian(params)
    kernel = row_gram(jac)
    eye = torch.eye(kernel.shape[0], dtype=kernel.dtype)
    linearised = problem.linearize(params)
    grid = tuple(0.5**k for k in range(30))
    opt = NGD(
        problem.network.module.named_parameters(),
        line_search="grid",
        line_search_grid=grid,
        inverse=ng.MoorePenrose(rtol=1e-15),
    )
    damped = NGD(
        problem.network.module.named_parameters(), line_search="grid", line_search_grid=grid, damping=1e-8
    )
    parts = {
        "residual_jacobian": lambda: problem.jacobian(params),
        "kernel_JJt": lambda: jac @ jac.T,
        "kernel_lower_blocks": lambda: row_gram(jac),  # what the dual route forms
        "eigh_kernel": lambda: torch.linalg.eigh(kernel),
        "eigvalsh_kernel": lambda: torch.linalg.eigvalsh(kernel),
        "cholesky_kernel_plus_1e-8": lambda: torch.linalg.cholesky_ex(kernel + 1e-8 * eye),
        "engine_J_by_vjps": lambda: Linearization(lambda p: linearised(p), params).jacobian(),
        # what the engine spends on the linearised map itself: an AffineMap, taken as z₀ and J
        "engine_takes_affine_map": lambda: Linearization(linearised, params).jacobian(),
        "line_search_30_losses": lambda: [problem.loss(params) for _ in grid],
    }
    out = {
        "problem": name,
        "num_params": ng.num_params(params),
        "num_residuals": problem.num_residuals,
        "cpu_seconds": {k: cpu_time_call(fn, repeats)["median"] for k, fn in parts.items()},
    }
    # no warm-up call: every step moves the parameters
    out["cpu_seconds"]["ngd_step"] = cpu_time_call(lambda: opt.step(problem), repeats, warmup=0)["median"]
    out["cpu_seconds"]["ngd_step_damped"] = cpu_time_call(lambda: damped.step(problem), repeats, warmup=0)[
        "median"
    ]
    return out


def main_step(args: argparse.Namespace) -> None:
    cases = STEP_CASES_QUICK if args.quick else STEP_CASES
    rows = []
    for name, sizes in cases.items():
        row = step_breakdown(name, sizes, args.repeats)
        rows.append(row)
        cells = ", ".join(f"{k} {v:.3f}" for k, v in row["cpu_seconds"].items())
        print(f"{name} d={row['num_params']} N={row['num_residuals']} (CPU s): {cells}")
    stem = "pde_step_quick.json" if args.quick else "pde_step.json"
    path = atomic_write_json(
        args.out or Path(__file__).parent / "results" / stem,
        {"environment": collect_environment(), "threads": args.threads, "steps": rows},
    )
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small networks and point sets")
    parser.add_argument(
        "--step", action="store_true", help="where one ENGD step of the size experiments goes"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.step:
        main_step(args)
        return
    cases = QUICK if args.quick else FULL
    results = []
    for widths, n in cases:
        row = measure(widths, n, args.repeats)
        results.append(row)
        cells = ", ".join(
            f"{k} {v['cpu_seconds']:.3f} s CPU ({v['gradients']:.1f} grads, diff {v['max_abs_difference']:.1e})"
            if "seconds" in v
            else f"{k} {v['skipped']}"
            for k, v in row["ways"].items()
        )
        print(
            f"{'-'.join(map(str, widths))} N={n} d={row['num_params']}: grad {row['one_gradient_cpu_s']:.4f} s CPU; {cells}"
        )
    default = (
        Path(__file__).parent / "results" / ("pde_jacobian_quick.json" if args.quick else "pde_jacobian.json")
    )
    path = atomic_write_json(args.out or default, {"environment": collect_environment(), "cases": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
