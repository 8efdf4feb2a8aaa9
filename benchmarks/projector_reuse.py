"""The projector diagnostic before and after factorisation reuse: n engine calls vs one factorisation.

``natgrad.diagnostics.projector_matrix`` builds P = J G⁻ Jᵀ g column by column (n columns). It used to call
``natural_gradient`` once per column, which re-linearises φ and re-factorises G every time; it now factorises
G once (``ng.factorize``) and solves n output gradients against it. This script runs both on the same points
and reports deterministic counts — Python calls of φ (forward passes and JVPs), forward passes of the module itself (the structured route's kernel
assembly) and matrix decompositions
(eigh, svd, Cholesky) — plus the median wall-clock time (informative only), and checks that the two
matrices agree.

Usage:
    python benchmarks/projector_reuse.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import REPO, time_call  # noqa: E402

try:
    import natgrad as ng
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(REPO / "src"))
    import natgrad as ng
from natgrad.diagnostics import projector_matrix  # noqa: E402
from natgrad.report import atomic_write_json, collect_environment  # noqa: E402

DECOMPOSITIONS = ("eigh", "svd", "cholesky", "cholesky_ex")


def per_column_projector(phi: Callable, params: Any, metric: Any, inverse: Any) -> torch.Tensor:
    """The former implementation: one ``natural_gradient`` call per column of P."""
    z = phi(params).detach()
    g = metric.matrix(z)
    columns = []
    for k in range(z.numel()):
        c = g[:, k].reshape(z.shape).to(z)
        res = ng.natural_gradient(phi, params, lambda x, c=c: (c * x).sum(), metric=metric, inverse=inverse)
        columns.append(res.pushforward.detach().reshape(-1))
    return torch.stack(columns, dim=1)


class Counter:
    """Counts Python calls of φ and of torch.linalg decompositions while active."""

    def __init__(self) -> None:
        self.counts = {"phi_calls": 0, "module_forwards": 0, **{name: 0 for name in DECOMPOSITIONS}}
        self._saved: dict[str, Any] = {}

    def count(self, key: str) -> None:
        self.counts[key] += 1

    def wrap_phi(self, phi: Callable) -> Callable:
        def counted(p: Any) -> torch.Tensor:
            self.counts["phi_calls"] += 1
            return phi(p)

        counted.natgrad_module = getattr(phi, "natgrad_module", None)  # type: ignore[attr-defined]
        if counted.natgrad_module is None:  # type: ignore[attr-defined]
            del counted.natgrad_module  # type: ignore[attr-defined]
        return counted

    def __enter__(self) -> Counter:
        for name in DECOMPOSITIONS:
            original = getattr(torch.linalg, name)
            self._saved[name] = original

            def counted(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
                self.counts[_name] += 1
                return _original(*args, **kwargs)

            setattr(torch.linalg, name, counted)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved.items():
            setattr(torch.linalg, name, original)


def _cases(quick: bool) -> list[tuple[str, Callable, Any, Any]]:
    torch.manual_seed(0)
    batch = 6 if quick else 16
    mlp = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).double().eval()
    phi_mlp, params_mlp = ng.from_module(mlp, torch.randn(batch, 4, dtype=torch.float64))
    a = torch.randn(3 * batch, 8, dtype=torch.float64)

    def poly(x: torch.Tensor) -> torch.Tensor:
        return a @ x + (a @ x) ** 2 / 4

    return [
        ("mlp-categorical", phi_mlp, params_mlp, ng.metrics.Categorical()),
        ("mlp-euclidean", phi_mlp, params_mlp, ng.metrics.Euclidean()),
        ("polynomial-euclidean", poly, torch.linspace(-1, 1, 8, dtype=torch.float64), ng.metrics.Euclidean()),
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batch, fewer repeats")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "projector_reuse.json")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    rows = []
    for name, phi, params, metric in _cases(args.quick):
        row: dict[str, Any] = {"case": name, "n": int(phi(params).numel()), "d": ng.num_params(params)}
        matrices = {}
        for label, build in (("per_column", per_column_projector), ("one_factorisation", projector_matrix)):
            counter = Counter()
            counted_phi = counter.wrap_phi(phi)
            record = getattr(phi, "natgrad_module", None)
            hook = None
            if record is not None:  # the structured route runs the module itself, not phi
                hook = record.module.register_forward_pre_hook(
                    lambda *_, c=counter: c.count("module_forwards")
                )
            with counter:
                matrices[label] = build(counted_phi, params, metric, ng.MoorePenrose())
            if hook is not None:
                hook.remove()
            timing = time_call(
                lambda b=build, f=phi, p=params, m=metric: b(f, p, m, ng.MoorePenrose()), repeats=repeats
            )
            row[label] = {**counter.counts, "seconds_median": timing["median"]}
        diff = torch.linalg.matrix_norm(matrices["per_column"] - matrices["one_factorisation"])
        row["relative_difference"] = float(diff / torch.linalg.matrix_norm(matrices["per_column"]))
        rows.append(row)
        print(row)
    result = {
        "benchmark": "projector_reuse",
        "quick": args.quick,
        "rows": rows,
        "environment": collect_environment(),
    }
    atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
