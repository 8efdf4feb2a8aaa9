"""``natgrad.optim.NGD`` on sharded batches: its solves go through :func:`natgrad.distributed.natural_gradient`.

The optimizer factorises G at θ through an injected ``factorize(forward, θ, metric, inverse, method)`` whose
result answers ``solve(loss, inverse=...)``. :class:`DistributedFactorize` is that function for a process
group: each solve is the exact natural gradient of the whole batch, identical on every rank, so every rank
applies the same update and the parameters stay identical.

What stays local in a step are the loss values on the rank's shard. The optimizer's safeguard, adaptive
damping and line searches accept or reject steps by those values, which differ between ranks, so
:func:`NGD` refuses them: plain steps θ ← θ − lr·v (with constant damping, momentum or a generalized inverse)
are the ones whose decisions are the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from natgrad._tree import Parametrisation
from natgrad.distributed._engine import DistributedNaturalGradient, natural_gradient
from natgrad.exceptions import InvalidInputError, InvalidTypeError
from natgrad.optim import NGD as LocalNGD

CALL = "natgrad.distributed.NGD"


@dataclass
class ShardFactorization:
    """G at θ for the sharded batch: ``solve(loss, inverse=...)`` runs the distributed natural gradient."""

    forward: Parametrisation
    theta: dict[str, Tensor]
    metric: Any
    inverse: Any
    options: dict[str, Any]

    def solve(self, loss: Callable[[Tensor], Tensor], *, inverse: Any = None) -> DistributedNaturalGradient:
        """The natural gradient of the whole batch for this rank's loss term ``loss``."""
        chosen = self.inverse if inverse is None else inverse
        return natural_gradient(self.forward, self.theta, loss, self.metric, chosen, **self.options)


@dataclass(frozen=True)
class DistributedFactorize:
    """The ``factorize`` of ``natgrad.optim.NGD`` for a process group (see :func:`NGD`).

    Args:
        group: process group (default: the world group).
        strategy: "auto", "kernel" or "matrix-free", as in :func:`natgrad.distributed.natural_gradient`.
        reduction: "sum" or "mean", as there.
        memory_budget: bytes rank 0 may allocate for the kernel strategy.
        tol: relative residual of the matrix-free solves.
        max_iter: operator products per matrix-free solve.
    """

    group: Any = None
    strategy: str = "auto"
    reduction: str = "sum"
    memory_budget: int | None = None
    tol: float | None = None
    max_iter: int | None = None

    def __call__(
        self,
        forward: Callable[[dict[str, Tensor]], Tensor],
        theta: dict[str, Tensor],
        metric: Any,
        inverse: Any,
        method: str,
    ) -> ShardFactorization:
        # ``method`` (the engine route) is replaced by ``strategy``: rank 0's dense route or the matrix-free one.
        options = {
            "group": self.group,
            "strategy": self.strategy,
            "reduction": self.reduction,
            "memory_budget": self.memory_budget,
            "tol": self.tol,
            "max_iter": self.max_iter,
        }
        return ShardFactorization(forward, theta, metric, inverse, options)


def refuse_ddp(call: str, module: Any) -> None:
    """DistributedDataParallel wraps the module to all-reduce gradients, which natgrad does itself."""
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        raise InvalidTypeError(
            f"{call}: got a DistributedDataParallel module; pass the wrapped module (ddp.module): natgrad "
            "computes the whole batch's natural gradient with its own collectives and never uses DDP's "
            "gradient all-reduce"
        )


_LOCAL_DECISIONS = {
    "safeguard": "the safeguard rejects steps by this rank's loss",
    "adaptive_damping": "adaptive damping moves λ by this rank's loss",
    "line_search": "a line search picks the step length by this rank's loss",
}


class NGD(LocalNGD):
    """``natgrad.optim.NGD`` whose every direction is the natural gradient of the whole sharded batch.

    Build it identically on every rank (same parameters, same settings) and call ``opt.step(forward, loss)``
    with this rank's shard in ``forward`` and its loss term in ``loss`` (``reduction="sum"``: use the
    optimizer's losses with ``reduction="sum"``, e.g. ``CrossEntropy(y_shard, reduction="sum")``, so that the
    global loss is the sum over ranks). Parameters stay identical on every rank; save ``opt.state_dict()``
    from rank 0 and load it on every rank to resume.

    Args:
        params: as for ``natgrad.optim.NGD`` (of the module itself, not of a ``DistributedDataParallel``
            wrapper: pass ``ddp.module``).
        lr: step length.
        group: process group (default: the world group).
        strategy: "auto", "kernel" or "matrix-free", as in :func:`natgrad.distributed.natural_gradient`.
        reduction: "sum" (use the losses with ``reduction="sum"``) or "mean", as there.
        memory_budget: bytes rank 0 may allocate for the kernel strategy.
        tol: relative residual of the matrix-free solves.
        max_iter: operator products per matrix-free solve.
        **settings: the other settings of ``natgrad.optim.NGD`` (damping, momentum, metric, inverse, ...).

    Raises:
        InvalidInputError: ``safeguard``, ``adaptive_damping`` or ``line_search`` requested (they decide by
            the rank's local loss, so the ranks could take different steps).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1.0,
        *,
        group: Any = None,
        strategy: str = "auto",
        reduction: str = "sum",
        memory_budget: int | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
        **settings: Any,
    ) -> None:
        settings.setdefault("safeguard", False)
        for key, why in _LOCAL_DECISIONS.items():
            if settings.get(key):
                off = "None" if key == "line_search" else "False"
                raise InvalidInputError(
                    f"{CALL}: {key}={settings[key]!r} is not supported across processes ({why}, so the ranks "
                    f"could take different steps); pass {key}={off} (constant damping or a generalized inverse "
                    "give every rank the same step)"
                )
        settings["factorize"] = DistributedFactorize(group, strategy, reduction, memory_budget, tol, max_iter)
        super().__init__(params, lr, **settings)

    def functional(self, model: torch.nn.Module) -> Callable[..., Tensor]:
        """As ``natgrad.optim.NGD.functional``; refuses a ``DistributedDataParallel`` wrapper."""
        refuse_ddp(f"{CALL}.functional", model)
        return super().functional(model)
