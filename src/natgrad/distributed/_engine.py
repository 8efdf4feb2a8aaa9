"""``natgrad.distributed.natural_gradient``: the exact natural gradient of a batch sharded over processes.

Rank p holds the same parameters ξ and its own shard of the batch: ``phi`` maps ξ to the shard's outputs z_p
and ``loss`` maps z_p to the shard's term L_p. The global problem is the concatenated batch with the
block-diagonal metric g = diag(g_0, g_1, …) and the loss

    L(z) = Σ_p L_p(z_p)               (reduction="sum": each term is the shard's sum), or
    L(z) = Σ_p (N_p / N) L_p(z_p)     (reduction="mean": each term is the mean over the shard's N_p examples,
                                       N = Σ_p N_p; the global loss is the mean over the whole batch).

Every rank returns v = G⁻∇ξL for the whole batch: the same vector, to rounding, as ``natgrad.natural_gradient``
on the concatenated batch in one process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import torch
from torch import Tensor

from natgrad._checks import check_real
from natgrad._factorize import default_tolerance
from natgrad._result import NaturalGradient, SolveInfo, Status
from natgrad._routes._inverse import apply_inverse
from natgrad._routes._problem import RightHandSide
from natgrad._tree import Parametrisation, Params, unflatten_like
from natgrad.distributed._comm import CALL, Communicator, DistributedError, resolve_group
from natgrad.distributed._kernel import solve_kernel
from natgrad.distributed._matrix_free import Certificate, ShardedKrylovFactorization, ShardedRows
from natgrad.distributed._shard import STATUS_FIELDS, Shard, failed_status, prepare_shard
from natgrad.exceptions import ConvergenceError, InvalidInputError
from natgrad.linalg import Inverse
from natgrad.metrics import Euclidean, Metric
from natgrad.natural_gradient import DEFAULT_MEMORY_BUDGET, choose_route

STRATEGIES = ("auto", "kernel", "matrix-free")
REDUCTIONS = ("sum", "mean")


@dataclass(frozen=True)
class DistributedNaturalGradient(NaturalGradient):
    """The result of :func:`natural_gradient` on one rank.

    ``direction``, ``gradient``, ``loss`` and ``rank`` are those of the whole batch and identical on every rank;
    ``output`` and ``pushforward`` are this rank's shard (z_p and J_p v). ``method`` is the engine route the
    strategy corresponds to: "primal" or "dual" (kernel strategy, on rank 0), "krylov" (matrix-free).

    Attributes:
        strategy: "kernel" or "matrix-free" (what ran).
        certificate: the matrix-free solves' :class:`Certificate` (None on the kernel strategy).
        communication: collectives this rank ran and the bytes it contributed, by kind.
        shard_examples: N_p of every rank (leading dimension of each shard's outputs).
        shard_rows: r_p of every rank (rows of A = BᵀJ on each shard; r = Σ_p r_p).
    """

    strategy: str = ""
    certificate: Certificate | None = None
    communication: dict[str, Any] = field(default_factory=dict)
    shard_examples: list[int] = field(default_factory=list)
    shard_rows: list[int] = field(default_factory=list)


def _check_options(strategy: str, reduction: str, memory_budget: Any, tol: Any, max_iter: Any) -> int:
    if strategy not in STRATEGIES:
        raise ValueError(
            f"{CALL}: strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}"
        )
    if reduction not in REDUCTIONS:
        raise InvalidInputError(
            f"{CALL}: reduction must be 'sum' (global loss = Σ of the ranks' losses) or 'mean' (each rank's "
            f"loss is its shard's mean; global loss = mean over the whole batch), got {reduction!r}"
        )
    if tol is not None and not (0 < check_real(CALL, "tol", tol) < 1):
        raise InvalidInputError(f"{CALL}: tol must be in (0, 1) (a relative residual), got {tol!r}")
    if max_iter is not None and (
        isinstance(max_iter, bool) or not isinstance(max_iter, Integral) or max_iter < 1
    ):
        raise InvalidInputError(f"{CALL}: max_iter must be a positive int, got {max_iter!r}")
    if memory_budget is None:
        return DEFAULT_MEMORY_BUDGET
    budget = check_real(CALL, "memory_budget", memory_budget)
    if not (budget > 0 and budget < float("inf")):
        raise InvalidInputError(
            f"{CALL}: memory_budget must be a finite number of bytes > 0, got {memory_budget!r}"
        )
    return int(budget)


def _settings_record(strategy: str, reduction: str) -> list[float]:
    """Options every rank must pass identically, as numbers for the status gather."""
    return [float(STRATEGIES.index(strategy)), float(REDUCTIONS.index(reduction))]


def _ranks(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def _check_agreement(comm: Communicator, table: dict[str, Tensor], settings: Tensor) -> None:
    """Raise the same error on every rank if the ranks disagree on what must be shared."""
    checks = [
        ("d", "the number of parameters d", "pass the same model on every rank"),
        ("dtype", "the parameters' dtype", "convert the parameters on every rank to one dtype"),
        (
            "param_fingerprint",
            "the parameter values",
            "every rank must hold the same parameters: broadcast them from rank 0 (torch.distributed.broadcast) "
            "or seed the initialisation identically",
        ),
        ("param_square_sum", "the parameter values", "broadcast the parameters from rank 0"),
        (
            "trailing_shape_fingerprint",
            "the per-example output shape z.shape[1:]",
            "every shard must be a batch of the same kind of example",
        ),
    ]
    for key, what, fix in checks:
        column = table[key]
        differ = [p for p in range(comm.size) if float(column[p]) != float(column[0])]
        if differ:
            raise DistributedError(
                f"{CALL}: {_ranks(differ)} differ{'s' if len(differ) == 1 else ''} from rank 0 in {what}; {fix}",
                differ,
                {p: f"{what} differs from rank 0" for p in differ},
            )
    differ = [p for p in range(comm.size) if not torch.equal(settings[p], settings[0])]
    if differ:
        raise DistributedError(
            f"{CALL}: {_ranks(differ)} passed a different strategy or reduction than rank 0; "
            "pass the same options on every rank",
            differ,
            {p: "strategy or reduction differs from rank 0" for p in differ},
        )


def _consistent(table: dict[str, Tensor], weights: Tensor, dtype: torch.dtype) -> bool:
    """Whether ∇z L = B c holds to rounding for the whole batch, by the engine's rule on the stacked metric.

    The engine accepts c = B⁺∇z L when ‖Bc − ∇z L‖ ≤ √eps·‖∇z L‖ and ‖B‖·‖c‖·√eps ≤ ‖∇z L‖; for the block
    diagonal B, ‖B‖ is the largest block norm and the squared vector norms add over ranks.
    """
    w2 = weights**2
    scale = float((w2 * table["grad_sq"]).sum()) ** 0.5
    if scale == 0.0:
        return True
    tol = torch.finfo(dtype).eps ** 0.5
    mismatch = float((w2 * table["mismatch_sq"]).sum()) ** 0.5
    amplification = float(table["factor_norm"].max()) * float((w2 * table["coeff_sq"]).sum()) ** 0.5
    return mismatch <= tol * scale and amplification * tol <= scale


def natural_gradient(
    phi: Parametrisation,
    params: Params,
    loss: Callable[[Tensor], Tensor],
    metric: Metric | None = None,
    inverse: Inverse | None = None,
    *,
    group: Any = None,
    strategy: str = "auto",
    reduction: str = "sum",
    memory_budget: int | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    throw: bool = True,
) -> DistributedNaturalGradient:
    """The natural gradient v = G⁻∇ξL of the whole batch, for a batch sharded over the ranks of ``group``.

    Call it on every rank of the group with the same parameters, metric type, inverse and options, and with
    this rank's shard in ``phi`` (ξ ↦ z_p) and ``loss`` (z_p ↦ L_p). The metric acts on each shard separately
    (g = diag(g_0, g_1, …)): ``Dense``/``Factor``/``PointDependent`` metrics are this shard's block.

    Args:
        phi: this rank's parametrisation, params -> outputs (N_p, ...) with N_p ≥ 1 examples.
        params: the point ξ, identical on every rank (checked through a fingerprint).
        loss: this rank's term of the global loss (see ``reduction``).
        metric: output metric on this shard (default ``Euclidean()``).
        inverse: ``MoorePenrose`` (default), ``GInverse``, ``MinNorm`` or ``Damped``, identical on every rank.
        group: a ``torch.distributed`` process group (default: the world group; torch.distributed must be
            initialised).
        strategy: "kernel" (rank 0 gathers the rows A_p and solves densely, with a rank cutoff and the rank
            reported), "matrix-free" (conjugate gradients with one all-reduce of d numbers per product, a
            certificate, no rank), or "auto": "kernel" when A (r × d) and its Gram matrix fit
            ``memory_budget`` on rank 0, else "matrix-free".
        reduction: "sum": the global loss is Σ_p loss_p(z_p); "mean": each loss_p is the mean over its shard
            and the global loss is Σ_p (N_p/N)·loss_p(z_p), the mean over all N examples.
        memory_budget: bytes rank 0 may allocate for the kernel strategy (default 1 GiB).
        tol: relative residual each matrix-free solve must reach (default 1e-12 in float64, 1e-6 in float32).
        max_iter: operator products allowed per matrix-free solve (default 10·min(r, d) + 50).
        throw: raise ``natgrad.ConvergenceError`` when a matrix-free solve stops above ``tol`` (False: return
            the result with ``status == "max_iter_reached"``).

    Returns:
        :class:`DistributedNaturalGradient`; ``info`` has the engine's keys (``consistent``, ``rtol`` on the
        kernel strategy, ``iterations``/``residual``/``converged`` on the matrix-free one).

    Raises:
        DistributedError: on every rank, when any rank's input was bad or its local work raised (the message
            names the ranks and their errors), or when the ranks disagree on the parameters.
        natgrad.ConvergenceError: on every rank, when the matrix-free solves do not reach ``tol``; its
            ``result`` holds the unconverged answer and its certificate.
    """
    comm = Communicator(resolve_group(CALL, group))
    error: BaseException | None = None
    shard: Shard | None = None
    budget = DEFAULT_MEMORY_BUDGET
    try:
        budget = _check_options(strategy, reduction, memory_budget, tol, max_iter)
        shard = prepare_shard(CALL, phi, params, loss, Euclidean() if metric is None else metric, inverse)
        local_record = shard.status(comm.device)
        settings = _settings_record(strategy, reduction)
    except Exception as exc:  # noqa: BLE001 -- every rank raises it below
        error, local_record, settings = exc, failed_status(comm.device), [-1.0, -1.0]
    record = torch.cat([local_record, torch.tensor(settings, dtype=torch.float64, device=comm.device)])
    gathered = comm.all_gather(record)  # phase 1: every rank's status in one collective
    if bool((gathered[:, 0] == 0).any()):
        comm.agree(error, "input validation")
    table = {name: gathered[:, k] for k, name in enumerate(STATUS_FIELDS)}
    _check_agreement(comm, table, gathered[:, len(STATUS_FIELDS) :])
    assert shard is not None

    rows = [int(x) for x in table["r"].tolist()]
    examples = [int(x) for x in table["examples"].tolist()]
    r, d = sum(rows), shard.lin.d
    dtype, device = shard.lin.flat.dtype, shard.lin.flat.device
    total = sum(examples)
    weights = (
        torch.ones(comm.size, dtype=torch.float64) if reduction == "sum" else table["examples"].cpu() / total
    )
    weight = float(weights[comm.rank])
    consistent = _consistent({k: v.cpu() for k, v in table.items()}, weights, dtype)

    # Phase 2: the global gradient and loss, Σ_p w_p J_pᵀ∇L_p and Σ_p w_p L_p, in one all-reduce.
    summed = torch.cat([weight * shard.grad, (weight * shard.loss).reshape(1).to(dtype)])
    comm.all_reduce(summed)
    grad, loss_value = summed[:d], summed[d]
    rhs = RightHandSide(weight * shard.output_grad, grad, weight * shard.coefficients if consistent else None)

    itemsize = shard.lin.flat.element_size()
    route = choose_route(r, d, itemsize, budget)
    chosen = strategy if strategy != "auto" else ("matrix-free" if route == "krylov" else "kernel")
    solve_tol = default_tolerance(dtype) if tol is None else float(tol)
    limit = 10 * min(r, d) + 50 if max_iter is None else int(max_iter)
    problem = shard.problem(r, solve_tol, limit, budget)
    info: SolveInfo = {"consistent": consistent}
    certificate = None
    status: Status = "success"
    if chosen == "kernel":
        method = "primal" if d <= r else "dual"
        v, rank = solve_kernel(comm, problem, shard.inverse, rhs, rows, method)
        info["rtol"] = problem.rtol
        result_rank: int | None = rank
    else:
        method, result_rank = "krylov", None
        fac = ShardedKrylovFactorization(
            ShardedRows(comm, problem), "kernel" if r <= d else "gram", solve_tol, limit
        )
        v = apply_inverse(fac, shard.inverse, rhs, problem.scaling).direction
        comm.broadcast_from_root(v)  # bit-for-bit the same direction on every rank
        certificate = fac.certificate()
        info.update(fac.info())
        status = "success" if certificate.converged else "max_iter_reached"
    pushforward = shard.lin.jvp(v).reshape(shard.z.shape)
    result = DistributedNaturalGradient(
        direction=unflatten_like(v.to(device), params),
        pushforward=pushforward,
        gradient=unflatten_like(grad, params),
        rank=result_rank,
        method=method,  # type: ignore[arg-type]
        output=shard.z,
        loss=loss_value,
        info=info,
        status=status,
        strategy=chosen,
        certificate=certificate,
        communication=comm.summary(),
        shard_examples=examples,
        shard_rows=rows,
    )
    if certificate is not None and not certificate.converged and throw:
        raise ConvergenceError(
            f"{CALL}: strategy='matrix-free' ({certificate.system} system) stopped after "
            f"{certificate.iterations} products at relative residual {certificate.residual:.3g} > tol "
            f"{solve_tol:.3g}; raise max_iter, loosen tol, use strategy='kernel' (dense, with a rank cutoff), "
            "or pass throw=False to get the result with status 'max_iter_reached'",
            result,
        )
    return result
