"""The result type of every natural gradient computation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from torch import Tensor

from natgrad._tree import Params

Method = Literal["primal", "dual", "lstsq", "krylov", "structured", "reference"]
Status = Literal["success", "max_iter_reached"]
ParamsT = TypeVar("ParamsT", bound=Params)  # the structure of the caller's params: a Tensor or a dict


@dataclass(frozen=True)
class NaturalGradient(Generic[ParamsT]):
    """The result of :func:`natgrad.natural_gradient` (and of a :class:`natgrad.GramFactorization` solve).

    Attributes:
        direction: v = G⁻ ∇ξ(L∘φ), structured like ``params``.
        pushforward: J v, shaped like ``phi(params)``.
        gradient: the Euclidean gradient ∇ξ(L∘φ) = Jᵀ ∇z L, structured like ``params``.
        rank: numerical rank of G (= of g^{1/2} J) retained by the solve; None on the krylov route.
        method: the route that ran: "primal", "dual", "lstsq", "krylov" or "structured" ("reference" for
            :func:`natgrad.reference.natural_gradient`).
        output: z = phi(params).
        loss: L(z); None when the solve was given ∇z L only (``solve_output_gradient`` without a loss value).
        info: route details (see ``natgrad._routes.SolveInfo``: cutoff used, whether ∇z L lies in the range
            of g, Krylov iterations, the structured kernel's formulas).
        status: "success", or "max_iter_reached" when a Krylov solve stopped above its tolerance (returned
            only with ``throw=False``; otherwise :class:`natgrad.ConvergenceError` is raised).
    """

    direction: ParamsT
    pushforward: Tensor
    gradient: ParamsT
    rank: int | None
    method: Method
    output: Tensor
    loss: Tensor | None
    info: dict[str, Any] = field(default_factory=dict)
    status: Status = "success"
