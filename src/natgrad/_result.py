"""The result type of every natural gradient computation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypedDict, TypeVar, cast

from torch import Tensor

from natgrad._tree import Params

Method = Literal["primal", "dual", "lstsq", "krylov", "structured", "structured-krylov", "reference"]
Status = Literal["success", "max_iter_reached", "at_rounding_floor"]
ParamsT = TypeVar("ParamsT", bound=Params)  # the structure of the caller's params: a Tensor or a dict


class SolveInfo(TypedDict, total=False):
    """Route details of one solve (``NaturalGradient.info``); each route fills the keys that apply to it.

    Keys:
        consistent: ∇z L lies in the range of g, so the c-forms (v = A⁺c) were used.
        rtol: the eigenvalue cutoff applied (absent for ``Damped`` and on the krylov route).
        iterations, residual, converged: Krylov solves (summed iterations, worst relative residual, all met
            the tolerance).
        kernel_routes: structured route, module name -> layer formula.
        kernel_solve: structured route, how K⁺ was applied: "cholesky" (certified full rank) or "eigh";
            absent after a damped solve, which factorises K + λI only (see damped_solve).
        damped_solve: dual and structured routes, how (K + λI)⁻¹ was applied: "cholesky" (of K + λI), or
            "eigh" when K + λI does not factorise in float64 — λ is below the rounding of K (its computed
            eigenvalues reach about −eps·λ_max) and the eigendecomposition, several times the cost, clamps
            K's negative eigenvalues to 0.
        fallback: the route that actually ran when it differs (structured + MinNorm runs "dual").
        structured_refused: ``method="auto"``: why the structured route was abandoned.
        near_singular: krylov route, LSQR stopped before resolving a direction below the Moore–Penrose cutoff.
        certificate: structured-krylov route: pushforward residual ‖Av − c‖/‖c‖, refinements, products with K,
            column blocks read, preconditioner rank, whether its factorisation was complete, and the rounding
            floor eps·‖A‖‖v‖/‖c‖ below which the measured residual certifies nothing smaller.
        kernel_solves: structured-krylov route, one record per kernel solve (method, iterations, why it stopped,
            preconditioner extensions).
        jvp: how products J t were formed: "forward" (forward-mode AD) or "reverse" (double VJP, for phi
            with operations that lack forward-mode AD).
        spectral_fallback: present only when an eigh/SVD of G, K or A failed in the model's dtype (LAPACK did
            not converge, or non-finite factors): the attempt that succeeded, "float64" or "float64-shifted".
        coupled_examples: phi from ``from_module`` with BatchNorm using batch statistics: which layers.
        auto: ``method="auto"``: the route it chose at (r, d), the rule that chose it, and every preferred route
            passed over with the reason (not supported, handed on, over the memory budget, refused).
        chunked: structured route, present when K was assembled over chunks of examples because the per-layer
            factors of all examples exceed the memory budget: ``chunks``, ``examples_per_chunk`` and
            ``emissions`` (chunk factor emissions, c + (c − 1)(c − 2)/2 for c chunks).
    """

    consistent: bool
    rtol: float
    iterations: int
    residual: float
    converged: bool
    kernel_routes: dict[str, str]
    kernel_solve: str
    damped_solve: str
    fallback: str
    structured_refused: str
    near_singular: bool
    certificate: dict[str, Any]
    kernel_solves: list[dict[str, Any]]
    jvp: str
    coupled_examples: str
    spectral_fallback: str
    auto: str
    chunked: dict[str, int]


@dataclass(frozen=True)
class NaturalGradient(Generic[ParamsT]):
    """The result of :func:`natgrad.natural_gradient` (and of a :class:`natgrad.GramFactorization` solve).

    Attributes:
        direction: v = G⁻ ∇ξ(L∘φ), structured like ``params``.
        pushforward: J v, shaped like ``phi(params)``.
        gradient: the Euclidean gradient ∇ξ(L∘φ) = Jᵀ ∇z L, structured like ``params``.
        rank: numerical rank of G (= of g^{1/2} J) retained by the solve; None on the krylov route. The kernel
            routes compute it on first read when the solve itself did not need it (a damped solve).
        method: the route that ran: "primal", "dual", "lstsq", "krylov" or "structured" ("reference" for
            :func:`natgrad.reference.natural_gradient`).
        output: z = phi(params).
        loss: L(z); None when the solve was given ∇z L only (``solve_output_gradient`` without a loss value).
        info: route details, a :class:`SolveInfo` (cutoff used, whether ∇z L lies in the range of g, Krylov
            iterations, the structured kernel's formulas).
        status: "success", or "max_iter_reached" when a Krylov solve stopped above its tolerance (returned
            only with ``throw=False``; otherwise :class:`natgrad.ConvergenceError` is raised), or
            "at_rounding_floor" when the structured-krylov certificate's measured residual met the tolerance
            but the model dtype's rounding floor (``info["certificate"]["rounding_floor"]``) lies above it, so
            the tolerance is not certified (a warning says so; a float64 model certifies it).
    """

    direction: ParamsT
    pushforward: Tensor
    gradient: ParamsT
    rank: int | None
    method: Method
    output: Tensor
    loss: Tensor | None
    info: SolveInfo = field(default_factory=lambda: SolveInfo())
    status: Status = "success"


class _DeferredRank:
    """A rank computed when first read; pickled or copied as its value."""

    def __init__(self, compute: Callable[[], int | None]) -> None:
        self.compute = compute

    def __reduce__(self) -> tuple[Callable[[int | None], int | None], tuple[int | None]]:
        return _identity, (self.compute(),)


def _identity(value: int | None) -> int | None:
    return value


def deferred_rank(compute: Callable[[], int | None]) -> int | None:
    """A ``rank`` for :class:`NaturalGradient` that ``compute`` gives when the field is first read.

    The kernel routes find the rank from the eigenvalues of K (O(r³), several times a Cholesky solve), which
    a damped solve does not otherwise need.
    """
    return cast("int | None", _DeferredRank(compute))


def known_rank(result: NaturalGradient[Any]) -> int | None:
    """The result's rank if it is already computed, else None (without computing it)."""
    value = result.__dict__["_rank"]
    return None if isinstance(value, _DeferredRank) else cast("int | None", value)


class _RankField:
    """``NaturalGradient.rank``: stored as given; a deferred rank is computed on first read, once."""

    def __get__(self, obj: NaturalGradient[Any] | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__["_rank"]
        if isinstance(value, _DeferredRank):
            value = value.compute()
            obj.__dict__["_rank"] = value
        return value

    def __set__(self, obj: NaturalGradient[Any], value: int | None) -> None:
        obj.__dict__["_rank"] = value  # only the dataclass __init__ gets here: the class is frozen


# after the dataclass is made, so that the field keeps no default; __init__ stores through __set__
setattr(NaturalGradient, "rank", _RankField())  # noqa: B010
