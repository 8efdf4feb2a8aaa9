"""The rounding error of a PINN's float64 Gauss–Newton kernel: what the residual cutoff of NGD rests on.

For the Poisson and heat problems of the reproduction experiments (2-64-1, N ≈ 1,000, d = 257) at Gauss–Newton
iterates 0, 20, 100 and 400 (NGD, cutoff 10⁻¹⁵), and for a 300-row kernel K = JJᵀ of the 64-64-48-48 network
(d = 9,873), in units of eps₆₄ · λ_max:

* ``assembly``: ‖fl(JᵀJ) − JᵀJ‖₂, the float64 product against the exact product of the same J, computed in
  numpy's extended precision (64-bit mantissa on x86);
* ``jacobian``: ‖J'ᵀJ' − JᵀJ‖₂ with J' from per-point torch.func derivatives instead of the forward Laplacian
  (what J's own rounding does to the kernel);
* ``eigenvalue_floor``: the largest σ(J)² at which eigh's eigenvalue of fl(JᵀJ) is off by more than a factor 2
  (σ from the SVD of J, accurate far below it); ``most_negative``: −λ_min of fl(JᵀJ).

By Weyl's inequality an eigenvalue above ‖Ĝ − G‖₂ belongs to a real direction: the cutoff
``natgrad.linalg.residual_rtol`` (5 · eps₆₄) sits above every number measured here.

Usage:
    python benchmarks/pde_kernel_rounding.py [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import natgrad as ng  # noqa: E402
from natgrad import pde  # noqa: E402
from natgrad.experiments import _poisson as problems  # noqa: E402
from natgrad.optim import NGD  # noqa: E402
from natgrad.report import atomic_write_json, collect_environment  # noqa: E402

EPS = torch.finfo(torch.float64).eps
ITERATES = (0, 20, 100, 400)


def _exact_product(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return a.numpy().astype(np.longdouble) @ b.numpy().astype(np.longdouble)


def _norm_error(computed: torch.Tensor | np.ndarray, exact: np.ndarray, scale: float) -> float:
    diff = (np.asarray(computed, dtype=np.longdouble) - exact).astype(np.float64)
    return float(np.linalg.norm(diff, 2) / scale / EPS)


def _per_point_jacobian(problem: pde.Problem, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """J through per-point torch.func derivatives: the same network wrapped so that forward propagation is off."""
    wrapped = pde.Network(torch.nn.Sequential(problem.network.module), problem.network.input_dim)
    other = pde.Problem(wrapped, problem.conditions)
    return other.jacobian({f"0.{k}": v for k, v in params.items()})


def primal_case(problem: pde.Problem) -> dict[str, float]:
    params = problem.network.params()
    jac = problem.jacobian(params)
    exact = _exact_product(jac.T, jac)
    lam_max = float(np.linalg.eigvalsh(exact.astype(np.float64)).max())
    gram = jac.T @ jac
    other = _per_point_jacobian(problem, params)
    eig = torch.linalg.eigvalsh(gram).flip(0).numpy()
    sigma2 = torch.linalg.svdvals(jac).numpy() ** 2
    off = sigma2[np.abs(eig - sigma2) > 0.5 * sigma2]
    return {
        "assembly": _norm_error(gram.numpy(), exact, lam_max),
        "jacobian": _norm_error(_exact_product(other.T, other), exact, lam_max),
        "eigenvalue_floor": float(off.max() / lam_max / EPS) if off.size else 0.0,
        "most_negative": float(-eig.min() / lam_max / EPS),
    }


def run() -> dict[str, object]:
    cases: dict[str, object] = {}
    builders = {
        "poisson-2d": problems.poisson_2d((64,), 30, 30, 0),
        "heat-1d": problems.heat_1d((64,), 30, 30, 0),
    }
    for name, (make, _) in builders.items():
        problem = make()
        opt = NGD(
            problem.network.module.named_parameters(),
            line_search="grid",
            line_search_grid=tuple(0.5**k for k in range(30)),
            inverse=ng.MoorePenrose(rtol=1e-15),
        )
        for step in range(ITERATES[-1] + 1):
            if step in ITERATES:
                cases[f"{name}@{step}"] = {"N": problem.num_residuals, "d": 257, **primal_case(problem)}
                print(name, step, cases[f"{name}@{step}"], flush=True)
            if step < ITERATES[-1]:
                opt.step(problem)
    make, _ = problems.poisson_2d((64, 64, 48, 48), 30, 30, 0)
    problem = make()
    jac = problem.jacobian(problem.network.params())
    rows = jac[torch.randperm(jac.shape[0], generator=torch.Generator().manual_seed(0))[:300]]
    exact = _exact_product(rows, rows.T)
    lam_max = float(np.linalg.eigvalsh(exact.astype(np.float64)).max())
    kernel = rows @ rows.T
    cases["poisson-2d-9873@0 (300 rows of K = JJᵀ)"] = {
        "N": 300,
        "d": int(jac.shape[1]),
        "assembly": _norm_error(kernel.numpy(), exact, lam_max),
        "most_negative": float(-torch.linalg.eigvalsh(kernel).min() / lam_max / EPS),
    }
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = run()
    default = Path(__file__).resolve().parent / "results" / "pde_kernel_rounding.json"
    payload = {"environment": collect_environment(), "unit": "eps64 * lambda_max", "cases": cases}
    print(atomic_write_json(args.out or default, payload))


if __name__ == "__main__":
    main()
