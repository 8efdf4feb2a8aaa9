"""Choosing the torch default device of a run (torch is imported only here, and only when asked)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

_DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")
VALID_DEVICES = "cpu, cuda, cuda:N"


def validate_device(device: str) -> str:
    """Check that ``device`` names a torch device that exists on this machine.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        The device string, stripped and lower-cased.

    Raises:
        ValueError: the string is malformed, CUDA is not available, or index N is out of range.
    """
    spec = device.strip().lower()
    if not _DEVICE_PATTERN.match(spec):
        raise ValueError(f"--device: expected one of {VALID_DEVICES}, got {device!r}")
    if spec == "cpu":
        return spec
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"--device: {device!r} requested but CUDA is not available here; use --device cpu")
    count = torch.cuda.device_count()
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= count:
        raise ValueError(
            f"--device: {device!r} requested but only {count} CUDA device(s) exist "
            f"(valid: {', '.join(f'cuda:{i}' for i in range(count))})"
        )
    return spec


@contextlib.contextmanager
def default_device(device: str | None) -> Iterator[None]:
    """Make ``device`` torch's default device inside the block and restore the previous one after.

    ``None`` leaves torch (and whether it is imported at all) untouched.
    """
    if device is None:
        yield
        return
    import torch

    previous = torch.get_default_device()
    torch.set_default_device(device)
    try:
        yield
    finally:
        torch.set_default_device(previous)
