"""The kernel strategy: the ranks' rows A_p (and their blocks of c) are gathered on rank 0, which solves once.

Rank 0 stacks A = [A_0; A_1; …] (r × d) and runs the single-process engine's dense solve on it — the dual route
(K = AAᵀ, r × r, whose blocks are K_pq = A_p A_qᵀ) when r < d, the primal route (G = AᵀA) when d ≤ r — with
every generalized inverse and the same rank cutoff. The direction (d numbers) and the rank are broadcast back,
so every rank holds bit-for-bit the same answer. Communication: one gather of r_max·(d + 1) numbers per rank
(r_max = the largest r_p; smaller blocks are padded) and one broadcast of d + 2 numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad._routes._dense import solve_dense
from natgrad.distributed._comm import Communicator
from natgrad.linalg import Inverse


@dataclass
class StackedRows:
    """The whole batch's A on rank 0, shaped like the engine's problem for its dense routes."""

    A: Tensor
    grad: Tensor
    c: Tensor | None

    @property
    def r(self) -> int:
        return self.A.shape[0]

    @property
    def d(self) -> int:
        return self.A.shape[1]

    def a_dense(self, chunk: int) -> Tensor:
        return self.A


def solve_kernel(
    comm: Communicator,
    problem,
    inverse: Inverse,
    grad: Tensor,
    c: Tensor | None,
    rows: list[int],
    route: str,
    chunk: int,
) -> tuple[Tensor, int, dict]:
    """v = G⁻∇ for the whole batch; ``problem`` holds this rank's rows, ``rows`` every rank's r_p."""
    d = grad.numel()
    r_max = max(rows)
    error: BaseException | None = None
    block = torch.zeros(r_max, d + 1, dtype=grad.dtype, device=grad.device)
    try:
        a_local = problem.a_dense(chunk)
        block[: a_local.shape[0], :d] = a_local
        if c is not None:
            block[: c.numel(), d] = c
    except Exception as exc:  # noqa: BLE001 -- reported on every rank by agree()
        error = exc
    comm.agree(error, "the assembly of the rows A_p")
    gathered = comm.gather_to_root(block)

    answer = torch.zeros(d + 2, dtype=grad.dtype, device=grad.device)
    info: dict = {}
    if gathered is not None:
        try:
            A = torch.cat([gathered[p, :r_p, :d] for p, r_p in enumerate(rows)])
            c_all = None if c is None else torch.cat([gathered[p, :r_p, d] for p, r_p in enumerate(rows)])
            v, rank, info = solve_dense(StackedRows(A, grad, c_all), inverse, route, chunk)
            answer[0], answer[1], answer[2:] = 1.0, float(rank), v
        except Exception as exc:  # noqa: BLE001 -- reported on every rank by agree()
            error = exc
    comm.broadcast_from_root(answer)
    if float(answer[0]) != 1.0:
        comm.agree(error, "the kernel solve on rank 0")
    info = {**info, "route": route}
    return answer[2:], int(answer[1]), info
