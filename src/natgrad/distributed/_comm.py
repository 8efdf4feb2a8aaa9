"""Collectives on one process group, counted, and the error agreement that keeps ranks from hanging.

Every collective a distributed call makes goes through :class:`Communicator`, which records how many calls of
each kind ran and how many bytes this rank contributed (the payload). Before each collective phase the ranks
agree on an error flag (:meth:`Communicator.agree`): a rank whose local work raised contributes the flag
instead of data, so every rank leaves the phase together and raises the same error naming the failed ranks.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from natgrad.exceptions import NatgradError

CALL = "natgrad.distributed.natural_gradient"


class DistributedError(NatgradError, RuntimeError):
    """A distributed natural-gradient call failed on at least one rank; raised on every rank of the group.

    Attributes:
        failed_ranks: the ranks (in the group) whose local work raised.
        messages: the error message of each failed rank, by rank.
    """

    def __init__(self, message: str, failed_ranks: list[int], messages: dict[int, str]) -> None:
        super().__init__(message)
        self.failed_ranks = failed_ranks
        self.messages = messages


def resolve_group(call: str, group: Any) -> Any:
    """The process group to use: ``group`` itself, or the world group when torch.distributed is initialised."""
    if not dist.is_available():
        raise RuntimeError(f"{call}: this torch build has no torch.distributed; use natgrad.natural_gradient")
    if not dist.is_initialized():
        raise RuntimeError(
            f"{call}: torch.distributed is not initialised; call torch.distributed.init_process_group "
            "(torchrun sets the environment for it) or use natgrad.natural_gradient in a single process"
        )
    return dist.group.WORLD if group is None else group


def collective_device(group: Any) -> torch.device:
    """Where the group's collectives run: the current CUDA device for NCCL, the CPU otherwise."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Communicator:
    """Counted collectives on ``group``. Ranks are group ranks; ``root`` is group rank 0.

    Attributes:
        rank, size: this process's rank in the group and the group's size.
        calls: collectives run, by kind.
        payload_bytes: bytes this rank handed to collectives, by kind (the tensors it contributed).
    """

    def __init__(self, group: Any, call: str = CALL) -> None:
        self.group = group
        self.call = call
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.root = dist.get_global_rank(group, 0) if group is not dist.group.WORLD else 0
        self.device = collective_device(group)
        self.calls: Counter[str] = Counter()
        self.payload_bytes: Counter[str] = Counter()

    def _count(self, kind: str, tensor: Tensor) -> None:
        self.calls[kind] += 1
        self.payload_bytes[kind] += tensor.numel() * tensor.element_size()

    def _staged(self, tensor: Tensor) -> Tensor:
        """``tensor`` on the backend's device (gloo: CPU, so CUDA parameters work over gloo too)."""
        return tensor.contiguous() if tensor.device == self.device else tensor.to(self.device)

    def all_reduce(self, tensor: Tensor, op: Any = dist.ReduceOp.SUM) -> Tensor:
        """Reduce ``tensor`` in place over the group (sum by default) and return it."""
        self._count("all_reduce", tensor)
        staged = self._staged(tensor)
        dist.all_reduce(staged, op=op, group=self.group)
        if staged is not tensor:
            tensor.copy_(staged)
        return tensor

    def all_gather(self, tensor: Tensor) -> Tensor:
        """Stack every rank's ``tensor`` (same shape on all ranks): (size, *tensor.shape)."""
        self._count("all_gather", tensor)
        staged = self._staged(tensor)
        out = [torch.empty_like(staged) for _ in range(self.size)]
        dist.all_gather(out, staged, group=self.group)
        return torch.stack(out).to(tensor.device)

    def gather_to_root(self, tensor: Tensor) -> Tensor | None:
        """Every rank's ``tensor`` (same shape) stacked on the root, None elsewhere."""
        self._count("gather", tensor)
        staged = self._staged(tensor)
        out = [torch.empty_like(staged) for _ in range(self.size)] if self.rank == 0 else None
        dist.gather(staged, out, dst=self.root, group=self.group)
        return torch.stack(out).to(tensor.device) if out is not None else None

    def broadcast_from_root(self, tensor: Tensor) -> Tensor:
        """The root's ``tensor`` on every rank (in place)."""
        self._count("broadcast", tensor)
        staged = self._staged(tensor)
        dist.broadcast(staged, src=self.root, group=self.group)
        if staged is not tensor:
            tensor.copy_(staged)
        return tensor

    def agree(self, error: BaseException | None, phase: str) -> None:
        """Raise :class:`DistributedError` on every rank if ``error`` is set on any rank.

        One all-reduce of one number when no rank failed; the failed ranks' messages are gathered only when
        one did. The failed rank's own error is chained as the cause.
        """
        flag = torch.tensor([0.0 if error is None else 1.0], dtype=torch.float64, device=self.device)
        if float(self.all_reduce(flag, dist.ReduceOp.MAX)) == 0.0:
            return
        messages: list[Any] = [None] * self.size
        mine = None if error is None else f"{type(error).__name__}: {error}"
        dist.all_gather_object(messages, mine, group=self.group)
        raise self.failure(phase, {r: m for r, m in enumerate(messages) if m is not None}) from error

    def failure(self, phase: str, messages: dict[int, str]) -> DistributedError:
        """The error every rank raises when ``messages`` (rank -> message) came from failed ranks."""
        ranks = sorted(messages)
        lines = "; ".join(f"rank {r}: {messages[r]}" for r in ranks)
        who = "rank" if len(ranks) == 1 else "ranks"
        text = (
            f"{self.call}: {who} {', '.join(map(str, ranks))} of {self.size} failed during {phase} "
            f"(this is rank {self.rank}); {lines}"
        )
        return DistributedError(text, ranks, messages)

    def summary(self) -> dict[str, Any]:
        """Calls and payload bytes by kind, and their totals."""
        return {
            "calls": dict(self.calls),
            "payload_bytes": dict(self.payload_bytes),
            "total_calls": sum(self.calls.values()),
            "total_payload_bytes": sum(self.payload_bytes.values()),
        }
