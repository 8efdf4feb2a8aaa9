"""A structured-krylov preconditioner carried from one factorisation to the next (an optimizer's steps).

Building the preconditioner P (pivoted Cholesky K ≈ L Lᵀ from a few hundred columns of K, then the
eigendecomposition of LᵀL) is most of a damped solve's cost at large r. Between optimizer steps the
parameters move little, so P built for K(θ_k) still preconditions K(θ_{k+1}): preconditioned CG converges to
(K + λI)⁻¹c with *any* symmetric positive definite P — only the iteration count depends on how well P fits.
So reuse changes the cost, never the answer: every direction is still certified by the pushforward residual
‖A v + λy − c‖/‖c‖ ≤ tol measured with the new A.

A preconditioner is reused only

* for the same batch: the module (by identity), the number of weighted outputs r, the metric's type, and the
  inputs equal entry by entry (`torch.equal` against a copy taken when P was built, so an in-place change of
  the inputs counts as another batch);
* while it stays cheap: a damped solve on a reused P may take ``max(REBUILD_MIN_ITERATIONS, REBUILD_GROWTH ·
  fresh)`` CG iterations, fresh those of the first damped solve after P was built (measured on full-batch
  digits, see `REBUILD_GROWTH`); one that has not converged by then is stopped, P is rebuilt for this K on
  the same pivots (``cholesky_on_pivots``: one block of columns of the new K and an ℓ × ℓ Cholesky, about
  half the cost of the greedy search) and the solve repeated. After such a failure the next factorisation
  skips the attempt and refactorises on the pivots at once (``refresh_first``); the one after tries again.
  Pivots chosen for an earlier K fit later ones less and less: when a factorisation on them needs more
  iterations than that limit (measured against the last greedy build), the next rebuild searches its
  pivots afresh (``pivots_stale``);
* for damped solves. A Moore–Penrose solve relies on range(L) ⊆ range(K) (the Ritz watch keeps the cutoff)
  and on the factorisation's completeness, which hold for the K that P was built from only: such a solve
  rebuilds P first. A damped solve that does not converge on a reused P rebuilds it and solves again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from natgrad.linalg._pivoted_cholesky import LowRankPreconditioner, PartialCholesky
from natgrad.models import ModuleRecord

# Rebuild when a reused P needs more than max(REBUILD_MIN_ITERATIONS, REBUILD_GROWTH × its fresh count) CG
# iterations. Measured on full-batch digits (r = 11,313, rank 256, float32, one thread): a greedy build costs
# 0.2 s (0.12 s pivoted Cholesky, 0.08 s the eigenbasis of P), a CG iteration 3–4 ms with P applied, a fresh
# P needs 5–8 iterations; a build on the old pivots costs about 0.1 s, as much as ~25 iterations.
REBUILD_GROWTH = 2.0
REBUILD_MIN_ITERATIONS = 16


@dataclass(frozen=True)
class BatchKey:
    """What identifies the kernel's batch: the module, r, the metric's type and a copy of the inputs."""

    module: torch.nn.Module
    r: int
    metric: str
    inputs: tuple[Any, ...]

    def same(self, other: BatchKey) -> bool:
        """Whether ``other`` is the same batch (module identity, r, metric type, inputs equal)."""
        return (
            self.module is other.module
            and self.r == other.r
            and self.metric == other.metric
            and len(self.inputs) == len(other.inputs)
            and all(_equal(a, b) for a, b in zip(self.inputs, other.inputs, strict=True))
        )


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (
            isinstance(a, Tensor)
            and isinstance(b, Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and a.device == b.device
            and bool(torch.equal(a, b))
        )
    try:
        return bool(a == b)
    except Exception:  # an input without a usable ==: not known to be the same
        return False


def _flat_inputs(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    items = [*args, *(item for key in sorted(kwargs) for item in (key, kwargs[key]))]
    return tuple(x.detach().clone() if isinstance(x, Tensor) else x for x in items)


def batch_key(record: ModuleRecord, r: int, metric: Any) -> BatchKey:
    """The key of the batch behind ``record`` (inputs copied, so later in-place changes are seen)."""
    return BatchKey(record.module, int(r), type(metric).__name__, _flat_inputs(record.args, record.kwargs))


@dataclass(frozen=True)
class KernelPreconditioner:
    """A structured-krylov preconditioner a later factorisation may start from (``fac.preconditioner``).

    Pass it as ``natgrad.factorize(..., preconditioner=...)``; it is used only when `reuse_refusal` finds no
    reason against it. Reuse never changes the answer (module docstring of ``_preconditioner_reuse``).

    Attributes:
        partial: the pivoted Cholesky factorisation K ≈ L Lᵀ it was built from.
        preconditioner: P (its eigenbasis and σ).
        batch: the batch it was built on.
        greedy_iterations: CG iterations of the first damped solve after the last greedy build (the
            baseline of `iteration_limit`; None: none measured yet).
        last_iterations: those of the first damped solve of the latest factorisation that used it.
        reuses: factorisations that used it after the one that built it.
        refresh_first: the next factorisation refactorises on its pivots at once instead of trying it
            as it is (its last such try did not converge within `iteration_limit`).
        pivots_stale: the next rebuild searches its pivots afresh (a factorisation on these pivots needed
            more than `iteration_limit` iterations).
    """

    partial: PartialCholesky
    preconditioner: LowRankPreconditioner
    batch: BatchKey
    greedy_iterations: int | None
    last_iterations: int | None
    reuses: int
    refresh_first: bool = False
    pivots_stale: bool = False

    @property
    def iteration_limit(self) -> int | None:
        """The iteration count above which it is rebuilt (None until a damped solve measured a greedy build)."""
        return iteration_limit(self.greedy_iterations)


def iteration_limit(greedy_iterations: int | None) -> int | None:
    """max(REBUILD_MIN_ITERATIONS, REBUILD_GROWTH × the iterations on a greedy build), or None unmeasured."""
    if greedy_iterations is None:
        return None
    return max(REBUILD_MIN_ITERATIONS, int(REBUILD_GROWTH * greedy_iterations))


def reuse_refusal(candidate: Any, key: BatchKey) -> str | None:
    """Why ``candidate`` cannot precondition the kernel of batch ``key`` (None: it can be reused)."""
    if candidate is None:
        return "no preconditioner was given"
    if not isinstance(candidate, KernelPreconditioner):
        return f"the given preconditioner is a {type(candidate).__name__}, not a KernelPreconditioner"
    if not candidate.batch.same(key):
        return "it was built on another batch"
    return None
