"""The full settings of the PDE size experiments, one method per job, and their results put together.

``natgrad reproduce pinn-poisson-10k`` trains its methods in forked processes of one job. On a machine whose
scheduler shares the cores between jobs (not processes), one job per method gets each method its share;
this script runs one method of an experiment's setting in this process (one torch thread, the experiment's
own `method_record`) and stores its record, and ``combine`` puts the records together with the experiment's
own `combine_records`, `finish`, claims and figures. The records are those the experiment computes itself —
each method starts from the same seeded network and is charged only the CPU time of its own steps.

Usage:
    python benchmarks/pde_methods.py run pinn-poisson-10k ngd --out DIR [--quick] [--cpu-budget S]
    python benchmarks/pde_methods.py combine pinn-poisson-10k --out DIR [--quick] [--cpu-budget S]
        [--method-budget adam=S ...]

``--cpu-budget S`` replaces the full setting's equal CPU budget per method (the experiments' own full
settings are cut to what one shared machine could give every method); the records store it, and ``combine``
refuses records made with another budget. When the CPU time available cannot give every method the same
budget, ``combine --method-budget METHOD=S`` (repeatable) accepts that method's record at its own smaller
budget; the results then carry each method's ``cpu_budget_s`` and say which methods had less.

``combine`` writes DIR/results.json (with an environment record), DIR/claims.json and the figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from natgrad.experiments import pinn_poisson_5d, pinn_poisson_10k  # noqa: E402
from natgrad.experiments._base import config_to_dict, no_progress  # noqa: E402
from natgrad.experiments._pde_training import (  # noqa: E402
    NGD_ONLY_FIELDS,
    combine_records,
    method_record,
    warm_up,
)
from natgrad.experiments._timing import fixed_threads  # noqa: E402
from natgrad.report import atomic_write_json, collect_environment  # noqa: E402

EXPERIMENTS = {"pinn-poisson-10k": pinn_poisson_10k, "pinn-poisson-5d": pinn_poisson_5d}


def _record_path(out: Path, method: str) -> Path:
    return out / f"method-{method}.json"


def _config(module: Any, quick: bool, cpu_budget: float | None) -> Any:
    cfg = module.config(quick, 0)
    if cpu_budget is None:
        return cfg
    if not cpu_budget > 0:
        raise SystemExit(f"pde_methods: --cpu-budget must be a number of seconds > 0, got {cpu_budget!r}")
    return dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, cpu_budget_s=cpu_budget))


def _reporting(method: str, error_of: Any) -> Any:
    """``error_of`` that also prints each evaluation (the run takes up to hours and stores its record at the end)."""
    start, count = time.monotonic(), [0]

    def error(problem: Any) -> float:
        value = float(error_of(problem))
        count[0] += 1
        print(
            f"{method}: evaluation {count[0]}: relative L2 {value:.3e} ({time.monotonic() - start:.0f} s elapsed)",
            file=sys.stderr,
            flush=True,
        )
        return value

    return error


def run_one(name: str, method: str, out: Path, quick: bool, cpu_budget: float | None = None) -> Path:
    """Train ``method`` of experiment ``name`` (seed 0) and store its record with the settings."""
    module = EXPERIMENTS[name]
    cfg = _config(module, quick, cpu_budget)
    steps = dict(cfg.training.steps)
    if method not in steps:
        raise SystemExit(f"pde_methods: {name} has no method {method!r}; its methods are {sorted(steps)}")
    make, error_of = module.problem(cfg)
    error_of = _reporting(method, error_of)
    # an experiment that resamples its collocation points says how (a factory of seeded resamplers)
    resampler = getattr(module, "resampler", lambda cfg: None)(cfg)
    environment = collect_environment()  # at the start: the checkout the run used, not the one it ended on
    with fixed_threads(cfg.training.threads):
        warm_up(make())
        record = method_record(method, steps[method], make, error_of, cfg.training, no_progress, resampler)
    return atomic_write_json(
        _record_path(out, method),
        {
            "experiment": name,
            "config": config_to_dict(cfg),
            "environment": environment,
            "record": record,
        },
    )


def combine(
    name: str,
    out: Path,
    quick: bool,
    cpu_budget: float | None = None,
    method_budgets: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The experiment's results, claims and figure from the stored records of every method.

    ``method_budgets``: methods whose records were made at their own CPU budget (each must match it).
    """
    module = EXPERIMENTS[name]
    cfg = _config(module, quick, cpu_budget)
    method_budgets = dict(method_budgets or {})
    unknown = sorted(set(method_budgets) - {m for m, _ in cfg.training.steps})
    if unknown:
        raise SystemExit(f"pde_methods: --method-budget names method(s) {unknown} that {name} does not run")
    records, environments = {}, {}
    for method, _ in cfg.training.steps:
        own = _config(module, quick, method_budgets.get(method, cpu_budget))
        stored = json.loads(_record_path(out, method).read_text())
        if _settings_of(method, stored["config"]) != _settings_of(
            method, json.loads(json.dumps(config_to_dict(own)))
        ):
            raise SystemExit(
                f"pde_methods: the record of {method!r} in {out} has other settings; run it again"
            )
        records[method] = {**stored["record"], "cpu_budget_s": own.training.cpu_budget_s}
        environments[method] = stored["environment"]
    results = module.finish(cfg, combine_records(cfg.training, cfg.training.threads, True, records))
    results["jobs"] = "one job per method (benchmarks/pde_methods.py), records combined"
    if method_budgets:
        results["budget"] += "; smaller CPU budgets for " + ", ".join(
            f"{m}: {b:g} s" for m, b in sorted(method_budgets.items())
        )
    claims = [c.to_dict() for c in module.EXPERIMENT.claims(results)]
    atomic_write_json(out / "results.json", {"environment": environments, "results": results})
    atomic_write_json(out / "claims.json", claims)
    figures = module.EXPERIMENT.figures(results, out)
    return {"claims": claims, "figures": [str(p) for p in figures]}


def _settings_of(method: str, config: dict[str, Any]) -> dict[str, Any]:
    """The stored config a method's record depends on: a baseline's without the ENGD-only training fields."""
    if method.startswith("ngd"):
        return config
    training = {k: v for k, v in config["training"].items() if k not in NGD_ONLY_FIELDS}
    return {**config, "training": training}


def _method_budgets(pairs: list[str]) -> dict[str, float]:
    budgets = {}
    for pair in pairs:
        method, _, seconds = pair.partition("=")
        try:
            budgets[method] = float(seconds)
        except ValueError:
            raise SystemExit(
                f"pde_methods: --method-budget takes METHOD=SECONDS, e.g. adam=150, got {pair!r}"
            ) from None
    return budgets


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["run", "combine"])
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("method", nargs="?")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--cpu-budget", type=float, default=None, help="CPU seconds per method (full setting)"
    )
    parser.add_argument(
        "--method-budget",
        action="append",
        default=[],
        metavar="METHOD=S",
        help="combine: a method whose record was made at its own (smaller) CPU budget",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.action == "run":
        if not args.method:
            parser.error("run needs a method (ngd, ngd-primal, adam, lbfgs)")
        print(run_one(args.experiment, args.method, args.out, args.quick, args.cpu_budget))
    else:
        summary = combine(
            args.experiment, args.out, args.quick, args.cpu_budget, _method_budgets(args.method_budget)
        )
        for claim in summary["claims"]:
            print(("holds  " if claim["holds"] else "FAILS  ") + claim["statement"])
        print("\n".join(summary["figures"]))


if __name__ == "__main__":
    main()
