"""The environment record of a run: versions, machine, device and dtype defaults, git commit, time."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def git_commit(directory: str | os.PathLike[str] | None = None) -> str | None:
    """The commit hash of the git checkout holding ``directory`` (default: this package), or None.

    A ``+dirty`` suffix marks uncommitted changes, so a report says whether its code can be checked out.
    """
    cwd = Path(directory) if directory is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if status else commit


def _version(module_name: str) -> str | None:
    try:
        module = __import__(module_name)
    except ImportError:
        return None
    return str(getattr(module, "__version__", "unknown"))


def collect_environment(device: str | None = None) -> dict[str, Any]:
    """Describe the machine and software a run executes on.

    Args:
        device: the torch default device the run uses (``None``: torch's own default).

    Returns:
        A JSON-serialisable dict with python, natgrad, torch and numpy versions, platform, CPU count, device,
        the torch default dtype, CUDA availability and device name, the git commit (or None)
        and the local time with its UTC offset.
    """
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "natgrad": _version("natgrad"),
        "numpy": _version("numpy"),
        "torch": None,
        "device": device or "cpu",
        "git_commit": git_commit(),
        "time": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    try:
        import torch  # lazy: the run framework itself does not need torch
    except ImportError:
        return env
    env["torch"] = torch.__version__
    env["torch_threads"] = torch.get_num_threads()
    env["default_dtype"] = str(torch.get_default_dtype()).removeprefix("torch.")
    env["device"] = device or str(torch.empty(0).device)
    env["cuda_available"] = torch.cuda.is_available()
    if device is not None and device.startswith("cuda") and torch.cuda.is_available():
        env["cuda_device_name"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda_version"] = torch.version.cuda
    return env
