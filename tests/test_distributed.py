"""natgrad.distributed on local gloo groups of 1, 2 and 3 processes with uneven shards.

Every answer is compared with the single-process engine on the concatenated batch (block-diagonal metric,
summed loss); failures must end on every rank with an error naming the bad rank, within a bounded time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import _distributed_jobs as jobs
import natgrad as ng
from _spawn import free_port, run_world
from cases import relative_error

TOL = 1e-10
KRYLOV_TOL = 1e-13  # the matrix-free solves' residual; the answers must then agree to TOL


def _raise_worker_errors(results: list) -> None:
    for rank, result in enumerate(results):
        if isinstance(result, dict) and "exception" in result:
            raise AssertionError(f"rank {rank} raised:\n{result['traceback']}")


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_distributed_equals_single_process_engine(world_size):
    """``jobs.plan(world_size)`` × both strategies; world sizes 1 and 2 cover every model × metric × inverse."""
    results = run_world(jobs.agreement_job, world_size, KRYLOV_TOL, timeout=240)
    _raise_worker_errors(results)
    assert results[0]["sizes"] == jobs.SHARDS[world_size]
    failures, systems = [], set()
    for key, entry in results[0]["cases"].items():
        single = entry["single"]
        for strategy in jobs.STRATEGIES:
            per_rank = [r["cases"][key][strategy] for r in results]
            got = per_rank[0]
            pushforward = torch.cat([r["pushforward"] for r in per_rank])
            errors = {
                "direction": relative_error(got["v"], single["v"]),
                "pushforward": relative_error(pushforward, single["pushforward"]),
                "gradient": relative_error(got["gradient"], single["gradient"]),
                "loss": abs(got["loss"] - single["loss"]) / max(1.0, abs(single["loss"])),
            }
            bad = {k: f"{e:.2e}" for k, e in errors.items() if not e <= TOL}
            if not all(torch.equal(r["v"], got["v"]) for r in per_rank):
                bad["identical on every rank"] = False
            if got["strategy"] != strategy:
                bad["strategy"] = got["strategy"]
            if strategy == "kernel" and got["rank"] != single["rank"]:
                bad["rank"] = (got["rank"], single["rank"])
            if strategy == "matrix-free":
                cert = got["certificate"]
                systems.add(cert.system)
                if not (cert.converged and cert.residual <= KRYLOV_TOL and cert.iterations > 0):
                    bad["certificate"] = cert
            if bad:
                failures.append((key, strategy, bad))
    assert not failures, failures
    assert systems == {"kernel", "gram"}  # both Krylov systems were exercised
    low = results[0]["float32"]
    for strategy in jobs.STRATEGIES:
        assert low[strategy].dtype == torch.float32
        assert relative_error(low[strategy], low["single64"]) <= 1e-4, strategy
    mean = results[0]["mean"]
    assert relative_error(mean["v"], mean["single"]["v"]) <= TOL
    assert abs(mean["loss"] - mean["single"]["loss"]) <= TOL * abs(mean["single"]["loss"])


def test_bad_input_on_one_rank_fails_every_rank_naming_it():
    world_size = 2
    results = run_world(jobs.failure_job, world_size, timeout=120)
    _raise_worker_errors(results)
    expected = {
        "nonfinite-loss": "non-finite",
        "bad-metric": "the Dense metric is 3×3",
        "different-params": "differs from rank 0 in the parameter values",
        "bad-strategy": "strategy must be one of",
        "empty-shard": "at least one example per rank",
        "bad-loss-shape": "must return a scalar",
        "fails-mid-solve": "during a matrix-free product (Krylov iteration)",
    }
    for kind, text in expected.items():
        for rank, result in enumerate(results):
            report = result[kind]
            assert report["error"] == "DistributedError", (kind, rank, report)
            assert report["failed_ranks"] == [world_size - 1], (kind, rank, report)
            assert "rank 1" in report["message"] and text in report["message"], (
                kind,
                rank,
                report["message"],
            )
    for result in results:
        assert "strategy='matrix-free'" in result["convergence"]["message"]
        assert result["convergence"]["iterations"] >= 2
        assert result["convergence"]["status"] == "max_iter_reached"
        assert torch.equal(result["after"], results[0]["after"])  # the group still works afterwards


def test_dead_rank_fails_the_others_within_the_timeout():
    pg_timeout = 8.0
    results = run_world(jobs.dead_rank_job, 2, timeout=60, pg_timeout=pg_timeout, allow_exit=True)
    assert results[1] == {"exitcode": 3}
    assert results[0]["error"] is not None, results[0]
    assert results[0]["seconds"] <= pg_timeout + 5.0


def test_example_runs_under_torchrun():
    """examples/distributed_ngd.py, launched as its docstring says, agrees with the one-process engine."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root / "src"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    done = subprocess.run(
        [*command, str(root / "examples" / "distributed_ngd.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    agreements = [
        float(x) for x in re.findall(r"agreement with the single-process engine: (\S+)", done.stdout)
    ]
    assert len(agreements) == 2 and max(agreements) < 1e-10, done.stdout
    assert "parameters identical on every rank: True" in done.stdout
    losses = [float(x) for x in re.findall(r"mean cross-entropy (\S+)", done.stdout)]
    assert len(losses) == 8 and losses[-1] < losses[0] / 5, losses


def test_ngd_hook_on_two_ranks(tmp_path):
    """The optimizer's hook against ng.factorize; 20 NGD steps on two ranks against the one-process trajectory,
    identical ranks, resume from rank 0's checkpoint, DDP refused."""
    results = run_world(jobs.ngd_job, 2, str(tmp_path / "ngd.pt"), timeout=180)
    _raise_worker_errors(results)
    for key, (got, expected) in results[0]["factorize"].items():
        assert relative_error(got, expected) <= TOL, key
    single = results[0]["single"]
    for rank, result in enumerate(results):
        assert len(result["distributed"]) == len(single) == 20
        for step, (got, expected) in enumerate(zip(result["distributed"], single, strict=True)):
            assert relative_error(got, expected) <= 1e-8, (rank, step)
            assert torch.equal(got, results[0]["distributed"][step]), (rank, step)  # identical ranks
        for got, expected in zip(result["resumed"], result["distributed"][10:], strict=True):
            assert torch.equal(got, expected)  # resumed from rank 0's checkpoint: the same steps
        assert "pass the wrapped module (ddp.module)" in result["ddp"]


def test_shard_refuses_half_precision_like_the_engine():
    """A float16 shard is refused before any collective, with the single-process engine's message."""
    from natgrad.distributed._shard import prepare_shard

    net = torch.nn.Linear(3, 2).half()
    phi, params = ng.from_module(net, torch.randn(4, 3).half())
    with pytest.raises(
        ng.InvalidTypeError, match=r"distributed\.natural_gradient: parameters are torch\.float16"
    ):
        prepare_shard(
            "distributed.natural_gradient",
            phi,
            params,
            lambda z: z.float().sum(),
            ng.metrics.Euclidean(),
            None,
        )


def test_shutdown_outside_a_process_group_says_so():
    """natgrad.distributed.shutdown without an initialised group names the call and the fix."""
    import natgrad.distributed as ngd

    with pytest.raises(
        RuntimeError, match=r"natgrad\.distributed\.shutdown: torch\.distributed is not initialised"
    ):
        ngd.shutdown()
