"""The PDE reproduction experiments: quick settings run end to end on fixed step budgets and their claims hold."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from natgrad.experiments import pinn_heat, pinn_poisson_5d, pinn_poisson_10k
from natgrad.experiments._base import config_to_dict, no_progress
from natgrad.experiments._pde_training import (
    THRESHOLDS,
    Training,
    _can_fork,
    combine_records,
    first_reached,
    method_record,
    run_methods,
)
from natgrad.optim import NGD, AveragedGram, default_grid


@pytest.mark.slow
@pytest.mark.parametrize(
    "module", [pinn_poisson_10k, pinn_poisson_5d, pinn_heat], ids=["poisson-10k", "poisson-5d", "heat"]
)
def test_quick_pde_run_claims_hold(module, tmp_path) -> None:
    experiment = module.EXPERIMENT
    cfg = experiment.config(True, 0)
    json.dumps(config_to_dict(cfg))
    results = json.loads(json.dumps(experiment.run(cfg, no_progress)))
    claims = experiment.claims(results)
    failing = [c.to_dict() for c in claims if not c.holds]
    assert claims and not failing, failing
    for name, steps in results["steps"].items():
        method = results["methods"][name]
        assert method["steps_taken"] == steps  # the budget is the step count
        assert set(method["time_to"]) == {"0.0001", "1e-05", "1e-06"}
    paths = experiment.figures(results, tmp_path)
    assert paths and all(p.exists() and p.stat().st_size > 0 for p in paths)


def test_first_reached_reads_the_first_evaluation_at_or_below_the_threshold() -> None:
    history = {"time": [0.0, 1.0, 2.5, 4.0], "step": [0, 10, 20, 30], "error": [1.0, 1e-3, 2e-5, 1e-6]}
    assert first_reached(history, 1e-4, "time") == 2.5
    assert first_reached(history, 1e-6, "step") == 30
    assert first_reached(history, 1e-7, "time") is None


# ---------------------------------------------------------------- budgets and what is read off the histories
def _tiny_poisson():
    """(make_problem, error_of) of a 2-D Poisson problem small enough for sub-second training."""
    from natgrad.experiments import _poisson

    return _poisson.poisson_2d((6,), 4, 4, seed=3)


def _spin(seconds: float) -> None:
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass


def test_cpu_budget_stops_each_method_once_its_steps_have_used_the_budget() -> None:
    make, error_of = _tiny_poisson()
    spent_evaluating = []

    def costly_error(problem) -> float:
        start = time.process_time()
        _spin(0.001)  # evaluation work, which the budget must not charge
        spent_evaluating.append(time.process_time() - start)
        return error_of(problem)

    settings = Training(steps=(("adam", 10**6),), eval_every=(("adam", 1),), cpu_budget_s=0.1)
    record = method_record("adam", 10**6, make, costly_error, settings, no_progress)
    cpu = record["cpu_time"]
    assert cpu[-1] >= 0.1 > cpu[-2]  # stopped at the first step past the budget, not later
    assert record["training_cpu_s"] == cpu[-1] and record["steps_taken"] == record["step"][-1] < 10**6
    assert all(b > a for a, b in zip(cpu, cpu[1:], strict=False))
    # every evaluation spun 1 ms of CPU; had it been charged, the budget would have bought fewer steps
    assert sum(spent_evaluating) >= 0.001 * len(spent_evaluating)
    per_step = cpu[-1] / record["steps_taken"]
    assert cpu[-1] - 0.1 <= 5 * per_step + 0.01  # the overrun is the last step, not the evaluations


def test_step_budget_without_cpu_budget_takes_exactly_the_steps() -> None:
    make, error_of = _tiny_poisson()
    settings = Training(steps=(("lbfgs", 4),), eval_every=(("lbfgs", 3),))
    record = method_record("lbfgs", 4, make, error_of, settings, no_progress)
    assert record["step"] == [0, 3, 4] and record["steps_taken"] == 4  # every 3rd step and the last


def test_times_to_thresholds_are_the_first_evaluations_at_or_below_them() -> None:
    make, error_of = _tiny_poisson()
    settings = Training(steps=(("ngd", 12),), eval_every=(("ngd", 1),))
    record = method_record("ngd", 12, make, error_of, settings, no_progress)
    for key, table in (("time", "time_to"), ("cpu_time", "cpu_time_to"), ("step", "steps_to")):
        for t in THRESHOLDS:
            below = [v for v, e in zip(record[key], record["error"], strict=True) if e <= t]
            assert record[table][f"{t:g}"] == (below[0] if below else None)
    history = {"cpu_time": [0.0, 0.3, 0.9], "error": [1.0, 5e-5, 5e-7]}
    assert first_reached(history, 1e-4, "cpu_time") == 0.3 and first_reached(history, 1e-6, "cpu_time") == 0.9


def test_methods_in_forked_processes_give_the_sequential_results_and_records_combine() -> None:
    make, error_of = _tiny_poisson()
    steps = (("ngd", 3), ("adam", 5))
    every = (("ngd", 1), ("adam", 5))
    sequential = run_methods(make, error_of, Training(steps=steps, eval_every=every), no_progress)
    forked = run_methods(
        make, error_of, Training(steps=steps, eval_every=every, parallel_methods=True), no_progress
    )
    assert forked["parallel_methods"] is _can_fork() and sequential["parallel_methods"] is False
    for name in ("ngd", "adam"):
        assert forked["methods"][name]["error"] == sequential["methods"][name]["error"]
    assert (forked["num_params"], forked["num_residuals"]) == (sequential["num_params"], 32)
    settings = Training(steps=steps, eval_every=every)
    records = {m: {**rec, "num_params": 25, "num_residuals": 32} for m, rec in sequential["methods"].items()}
    assert combine_records(settings, 1, False, records)["methods"].keys() == {"ngd", "adam"}
    with pytest.raises(ValueError, match=r"no record for method\(s\) \['adam'\]"):
        combine_records(settings, 1, False, {"ngd": records["ngd"]})
    with pytest.raises(ValueError, match="different problems"):
        combine_records(settings, 1, False, {**records, "adam": {**records["adam"], "num_params": 7}})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cpu_budget_s": 0.0}, "cpu_budget_s must be a number of seconds > 0"),
        ({"steps": (("sgd", 3),), "eval_every": (("sgd", 1),)}, r"unknown method\(s\) \['sgd'\]"),
        ({"eval_every": ()}, r"method\(s\) \['ngd'\] have a step budget but no eval_every"),
        ({"gram_average": 1.0}, r"gram_average must be None or a decay in \[0, 1\)"),
        ({"geodesic_acceleration": 1}, "geodesic_acceleration must be True or False, got 1"),
        ({"search_next_points": 1}, "search_next_points must be True or False, got 1"),
        ({"search_next_points": True}, "searches on the next draw of points and needs resample_every"),
    ],
)
def test_training_settings_are_checked(options, message) -> None:
    settings = {"steps": (("ngd", 3),), "eval_every": (("ngd", 1),), **options}
    with pytest.raises(ValueError, match=message):
        Training(**settings)


def _grid_ngd(problem, damping: float, grid_size: int, **options) -> NGD:
    """ENGD as `Training` builds it: damping λ and the grid search on 1, ½, …, 2^(1 − grid_size)."""
    return NGD(
        problem.network.module.named_parameters(),
        damping=damping,
        line_search="grid",
        line_search_grid=default_grid(grid_size),
        **options,
    )


def test_gram_average_setting_trains_ngd_with_the_averaged_gram_and_its_damping() -> None:
    make, error_of = _tiny_poisson()
    settings = Training(
        steps=(("ngd", 5),), eval_every=(("ngd", 1),), damping=1e-8, gram_average=0.6, grid_size=12
    )
    record = method_record("ngd", 5, make, error_of, settings, no_progress)
    problem = make()
    opt = _grid_ngd(problem, 1e-8, 12, factorize=AveragedGram(0.6))
    losses = [float(opt.step(problem)) for _ in range(5)]
    assert record["loss"] == losses and record["error"][-1] == error_of(problem)


def test_geodesic_setting_trains_ngd_with_the_accelerated_search_and_leaves_baselines_alone() -> None:
    make, error_of = _tiny_poisson()
    settings = Training(
        steps=(("ngd", 4), ("adam", 3)),
        eval_every=(("ngd", 1), ("adam", 1)),
        damping=1e-8,
        geodesic_acceleration=True,
    )
    record = method_record("ngd", 4, make, error_of, settings, no_progress)
    problem = make()
    opt = _grid_ngd(problem, 1e-8, settings.grid_size, geodesic_acceleration=True)
    losses = [float(opt.step(problem)) for _ in range(4)]
    assert record["loss"] == losses and record["error"][-1] == error_of(problem)
    plain = dataclasses.replace(settings, geodesic_acceleration=False)
    assert (
        method_record("adam", 3, make, error_of, settings, no_progress)["loss"]
        == method_record("adam", 3, make, error_of, plain, no_progress)["loss"]
    )
    assert method_record("ngd", 4, make, error_of, plain, no_progress)["loss"] != losses


@pytest.mark.parametrize("every", [1, 2])
def test_search_on_next_points_takes_each_step_s_factor_from_the_next_draw(every) -> None:
    """Step s of ENGD searches on the points the next draw brings (the draw after the one step s fits)."""
    import torch

    from natgrad import pde
    from natgrad.experiments import _poisson

    make, error_of = _poisson.poisson_5d((4,), 12, 10, seed=0)
    draw = _poisson.poisson_5d_points(12, 10)
    seed = _poisson.poisson_5d_seed(0)
    settings = Training(
        steps=(("ngd", 4), ("adam", 2)),
        eval_every=(("ngd", 1), ("adam", 1)),
        damping=1e-6,
        grid_size=12,
        resample_every=every,
        search_next_points=True,
    )

    def factory():
        return pde.Resampler(draw, every, seed)

    record = method_record("ngd", 4, make, error_of, settings, no_progress, factory)
    generator = torch.Generator().manual_seed(seed)
    draws = [draw(generator) for _ in range(6)]  # the resampler's sequence, one generator in turn
    searched, problem, sizes = _engd_on_draws(make, draws, every, search_next=True)
    assert record["loss"] == searched and record["error"][-1] == error_of(problem)
    assert sizes != _engd_on_draws(make, draws, every, search_next=False)[2]
    plain = dataclasses.replace(settings, search_next_points=False)
    assert (
        method_record("adam", 2, make, error_of, settings, no_progress, factory)["loss"]
        == method_record("adam", 2, make, error_of, plain, no_progress, factory)["loss"]
    )


def _engd_on_draws(make, draws, every, search_next):
    """4 ENGD steps on ``draws[s // every]``, searching on the next draw's points or the step's own: the losses,
    the trained problem and the step sizes."""
    problem = make()
    search = problem.held_out()
    opt = _grid_ngd(problem, 1e-6, 12)
    losses, sizes = [], []
    for step in range(4):
        for condition in problem.conditions:
            problem.set_points(condition.label, draws[step // every][condition.label])
            search.set_points(condition.label, draws[step // every + 1][condition.label])
        losses.append(float(opt.step(problem, search=search if search_next else None)))
        sizes.append(opt.last_step["step_size"])
    return losses, problem, sizes


def test_resampling_hook_feeds_every_method_the_same_seeded_points_every_k_steps() -> None:
    """Steps of the first block see the fixed points (the first draw), later ones fresh draws, reproducibly."""
    import torch

    from natgrad import pde
    from natgrad.experiments import _poisson
    from natgrad.experiments._pde_training import train

    make, error_of = _poisson.poisson_5d((4,), 20, 10, seed=0)
    draw = _poisson.poisson_5d_points(20, 10)
    seed = _poisson.poisson_5d_seed(0)
    settings = Training(steps=(("adam", 5),), eval_every=(("adam", 1),), resample_every=2)

    def history(resampler):
        problem = make()
        out = train("adam", 5, 1, problem, lambda: error_of(problem), settings, no_progress, resampler)
        return out, problem

    fixed, _ = history(None)
    resampled, problem = history(pde.Resampler(draw, 2, seed))
    repeated, _ = history(pde.Resampler(draw, 2, seed))
    assert (resampled["error"], resampled["loss"]) == (repeated["error"], repeated["loss"])
    assert resampled["loss"][:2] == fixed["loss"][:2] and resampled["loss"][2] != fixed["loss"][2]
    last = pde.Resampler(draw, 2, seed)
    for step in range(5):
        expected = last(step)
    for condition in problem.conditions:  # step 4 is the third draw
        assert torch.equal(condition.points, expected[condition.label])

    def factory():
        return pde.Resampler(draw, 2, seed)

    with pytest.raises(ValueError, match="needs a resampler factory"):
        method_record("adam", 5, make, error_of, settings, no_progress)
    fixed_settings = Training(steps=(("adam", 5),), eval_every=(("adam", 1),))
    with pytest.raises(ValueError, match="pass both or neither"):
        method_record("adam", 5, make, error_of, fixed_settings, no_progress, factory)
    record = method_record("adam", 5, make, error_of, settings, no_progress, factory)
    assert record["error"] == resampled["error"]
    combined = combine_records(settings, 1, False, {"adam": {**record}})
    assert combined["resample_every"] == 2 and combined["damping"] == 0.0
    for bad in ({"resample_every": 0}, {"resample_every": 1.5}, {"damping": -1e-3}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Training(steps=(("adam", 5),), eval_every=(("adam", 1),), **bad)


def test_pde_methods_combines_records_made_at_their_own_cpu_budgets(tmp_path) -> None:
    """One job per method; a method run at a smaller budget is accepted only when combine is told so."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "pde_methods.py"
    spec = importlib.util.spec_from_file_location("natgrad_bench_pde_methods", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    budgets = {"ngd": 0.3, "adam": 0.1, "lbfgs": 0.3}
    for method, seconds in budgets.items():
        bench.run_one("pinn-poisson-5d", method, tmp_path, quick=True, cpu_budget=seconds)
    with pytest.raises(SystemExit, match="'adam'.*other settings"):
        bench.combine("pinn-poisson-5d", tmp_path, quick=True, cpu_budget=0.3)
    with pytest.raises(SystemExit, match="does not run"):
        bench.combine("pinn-poisson-5d", tmp_path, True, 0.3, {"sgd": 0.1})
    bench.combine("pinn-poisson-5d", tmp_path, True, 0.3, {"adam": 0.1})
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert {m: r["cpu_budget_s"] for m, r in results["methods"].items()} == budgets
    assert results["budget"].endswith("smaller CPU budgets for adam: 0.1 s")
    for method, seconds in budgets.items():
        assert results["methods"][method]["training_cpu_s"] >= seconds
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert any("within 0.1 s of single-threaded CPU time" in c["statement"] for c in claims)


def test_residual_svd_reaches_the_optimizer_and_the_claim_names_the_route() -> None:
    """Training(residual_svd=True) trains ENGD exactly as NGD(residual_svd=True) does, and the claim says so."""
    import torch

    from natgrad.experiments._pde_training import standard_claims
    from natgrad.optim import NGD

    make, error_of = _tiny_poisson()
    for svd in (False, True):
        settings = Training(steps=(("ngd", 8),), eval_every=(("ngd", 8),), residual_svd=svd)
        results = run_methods(make, error_of, settings, no_progress)
        problem = make()
        opt = NGD(problem.network.module.named_parameters(), line_search="grid", residual_svd=svd)
        for _ in range(8):
            opt.step(problem)
        assert opt.last_step["method"] == ("lstsq" if svd else "primal")
        torch.testing.assert_close(
            results["methods"]["ngd"]["final_error"], error_of(problem), rtol=1e-9, atol=0
        )
        assert results["residual_svd"] is svd
        statement = standard_claims(results, 1.0, {})[0].statement
        assert ("SVD of J" in statement) is svd and ("primal" in statement) is not svd
