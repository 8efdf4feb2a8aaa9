"""The kernel strategy: the ranks' rows A_p (and their blocks of c) are gathered on rank 0, which solves once.

Rank 0 stacks A = [A_0; A_1; …] (r × d) and factorises it with the single-process engine's dense routes — dual
(K = AAᵀ, r × r, whose blocks are K_pq = A_p A_qᵀ) when r < d, primal (G = AᵀA) when d ≤ r — and applies the
requested inverse with the engine's own code (same cutoff, same rank). The direction (d numbers) and the rank
are broadcast back, so every rank holds bit-for-bit the same answer. Communication: one gather of
r_max·(d + 1) numbers per rank (r_max = the largest r_p; smaller blocks are padded) and one broadcast of d + 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad._routes._dense import DUAL, PRIMAL
from natgrad._routes._inverse import apply_inverse
from natgrad._routes._problem import Problem, RightHandSide
from natgrad.distributed._comm import Communicator
from natgrad.linalg import Inverse


@dataclass
class StackedRows:
    """The whole batch's A (already A S for MinNorm) on rank 0, with what the dense routes read of a problem."""

    a: Tensor
    rtol: float

    def a_dense(self) -> Tensor:
        return self.a


def solve_kernel(
    comm: Communicator,
    problem: Problem,
    inverse: Inverse,
    rhs: RightHandSide,
    rows: list[int],
    route: str,
) -> tuple[Tensor, int]:
    """v = G⁻∇ for the whole batch and the rank of G; ``problem`` holds this rank's rows, ``rows`` every
    rank's r_p, ``rhs`` the global ∇ and this rank's block of c."""
    grad, c = rhs.grad, rhs.c
    d = grad.numel()
    error: BaseException | None = None
    block = torch.zeros(max(rows), d + 1, dtype=grad.dtype, device=grad.device)
    try:
        a_local = problem.a_dense()
        block[: a_local.shape[0], :d] = a_local
        if c is not None:
            block[: c.numel(), d] = c
    except Exception as exc:  # noqa: BLE001 -- reported on every rank by agree()
        error = exc
    comm.agree(error, "the assembly of the rows A_p")
    gathered = comm.gather_to_root(block)

    answer = torch.zeros(d + 2, dtype=grad.dtype, device=grad.device)
    if gathered is not None:
        try:
            a = torch.cat([gathered[p, :r_p, :d] for p, r_p in enumerate(rows)])
            c_all = None if c is None else torch.cat([gathered[p, :r_p, d] for p, r_p in enumerate(rows)])
            dense = PRIMAL if route == "primal" else DUAL
            fac = dense.factorize(StackedRows(a, problem.rtol))  # type: ignore[arg-type]
            solved = apply_inverse(fac, inverse, RightHandSide(rhs.output_grad, grad, c_all), problem.scaling)
            answer[0], answer[1], answer[2:] = 1.0, float(fac.rank or 0), solved.direction
        except Exception as exc:  # noqa: BLE001 -- reported on every rank by agree()
            error = exc
    comm.broadcast_from_root(answer)
    if float(answer[0]) != 1.0:
        comm.agree(error, "the kernel solve on rank 0")
    return answer[2:], int(answer[1])
