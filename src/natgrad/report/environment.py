"""The environment record of a run or benchmark: versions, machine, threads, device, git commit, time."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def _git(directory: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_state(directory: str | os.PathLike[str] | None = None) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout holding ``directory`` (default: this package), or Nones.

    ``dirty`` says whether tracked files have uncommitted changes, i.e. whether the commit alone reproduces
    the code that ran.
    """
    cwd = Path(directory) if directory is not None else Path(__file__).resolve().parent
    commit = _git(cwd, "rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def _version(module_name: str) -> str | None:
    try:
        module = __import__(module_name)
    except ImportError:
        return None
    return str(getattr(module, "__version__", "unknown"))


def collect_environment(device: Any = None) -> dict[str, Any]:
    """Describe the machine and software a run or a benchmark executes on.

    The one environment record of the project: ``natgrad reproduce`` stores it as ``environment.json`` and
    every benchmark embeds it in its JSON output.

    Args:
        device: the torch device used (a string or ``torch.device``; ``None``: torch's own default).

    Returns:
        A JSON-serialisable dict: python, natgrad, torch and numpy versions, platform, processor, CPU count
        and the CPUs usable by this process, thread settings, device, default dtype, CUDA availability (and
        the GPU's name when a CUDA device is used), the git commit and whether the checkout was dirty, the
        command line, and the local time with its UTC offset.
    """
    from natgrad.report.threads import usable_cpus

    commit, dirty = git_state()
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "natgrad": _version("natgrad"),
        "numpy": _version("numpy"),
        "torch": None,
        "device": None if device is None else str(device),
        "git_commit": commit,
        "git_dirty": dirty,
        "argv": sys.argv[1:],
        "recorded_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    try:
        import torch  # lazy: the run framework itself does not need torch
    except ImportError:
        env["device"] = env["device"] or "cpu"
        return env
    dev = torch.device(device) if device is not None else torch.empty(0).device
    env["torch"] = torch.__version__
    env["torch_threads"] = torch.get_num_threads()
    env["torch_interop_threads"] = torch.get_num_interop_threads()
    env["default_dtype"] = str(torch.get_default_dtype()).removeprefix("torch.")
    env["device"] = str(dev)
    env["cuda_available"] = torch.cuda.is_available()
    if dev.type == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(dev)
        env["cuda_version"] = torch.version.cuda
    return env
