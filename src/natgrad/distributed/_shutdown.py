"""Ending a distributed run without the gloo shutdown abort.

Gloo's worker thread releases a finished collective's tensors a moment after the caller has returned. If the
interpreter has begun shutting down by then, that thread cannot take the GIL and the process aborts with
"terminate called without an active exception" (seen under load on a final ``dist.barrier()``). Keeping the
handle of the last collective alive until exit leaves that release to the main thread.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from natgrad.distributed._comm import resolve_group

# Handles of the final barriers, held until the process exits (see the module docstring).
_FINAL_BARRIERS: list[Any] = []


def shutdown(group: Any = None) -> None:
    """Wait for every rank of ``group`` (default: the world), then destroy the process group.

    Use it instead of ``dist.barrier(); dist.destroy_process_group()`` at the end of a script: the barrier's
    handle is kept until the process exits, so that no gloo worker thread frees Python objects while the
    interpreter shuts down. Raises ``RuntimeError`` when torch.distributed is not initialised.
    """
    resolve_group("natgrad.distributed.shutdown", group)  # raises, naming the call, when there is no group
    finished = dist.barrier(group=group, async_op=True)
    if finished is not None:
        finished.wait()
        _FINAL_BARRIERS.append(finished)
    dist.destroy_process_group(group)
