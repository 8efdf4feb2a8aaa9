"""Run a function on a local gloo process group of a few processes, with a wall-clock bound.

``run_world(job, world_size, *args)`` starts ``world_size`` processes (torch.multiprocessing; fork by default,
which reuses the test process's imports and saves seconds per process) on a free localhost port; each calls ``job(rank, world_size, *args)`` and its return value comes back
in a list indexed by rank. A rank that raises comes back as ``{"exception": ..., "message": ...}`` so tests can
check failure behaviour; a rank that exits or hangs past ``timeout`` ends the run with an AssertionError.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import natgrad.distributed as ngd


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(
    rank: int,
    world_size: int,
    port: int,
    out_dir: str,
    pg_timeout: float,
    job: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=pg_timeout),
    )
    try:
        result: Any = job(rank, world_size, *args)
    except Exception as exc:  # noqa: BLE001 -- the test inspects it
        result = {"exception": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}
    with open(Path(out_dir) / f"{rank}.pkl", "wb") as fh:
        pickle.dump(result, fh)
    ngd.shutdown()


def run_world(
    job: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 60.0,
    pg_timeout: float = 30.0,
    allow_exit: bool = False,
    start_method: str = "fork",
) -> list[Any]:
    """``job(rank, world_size, *args)`` on each rank of a fresh gloo group; returns the results by rank.

    With ``allow_exit`` a rank may end without a result (it comes back as None, with its exit code
    recorded as ``{"exitcode": code}``); otherwise that fails the run.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        context = mp.start_processes(
            _worker,
            args=(world_size, free_port(), out_dir, pg_timeout, job, args),
            nprocs=world_size,
            join=False,
            start_method=start_method,
        )
        deadline = time.monotonic() + timeout
        while any(p.is_alive() for p in context.processes):
            if time.monotonic() > deadline:
                for p in context.processes:
                    p.kill()
                raise AssertionError(f"distributed job {job.__name__} did not finish within {timeout} s")
            time.sleep(0.05)
        results: list[Any] = []
        for rank, process in enumerate(context.processes):
            path = Path(out_dir) / f"{rank}.pkl"
            if path.exists():
                with open(path, "rb") as fh:
                    results.append(pickle.load(fh))
            elif allow_exit:
                results.append({"exitcode": process.exitcode})
            else:
                raise AssertionError(f"rank {rank} of {job.__name__} exited with code {process.exitcode}")
        return results
