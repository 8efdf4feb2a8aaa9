"""The functional core of one NGD step: (state, problem, settings, factorize) → (update, new state, info).

Nothing here mutates parameters or optimizer state; `NGD` (the torch.optim facade) applies the update and
stores the new state. The invariants of a step live here, once:

* the loss enters the engine once, as L/s (+ the momentum shift): s is the scale of the loss's curvature
  s·JᵀgJ, so (sG + λI)⁻¹∇ = (G + (λ/s)I)⁻¹ ∇/s and lr = 1 is a Gauss–Newton step for the loss as written;
* the step is d = lr · v with v = p + G⁻(∇ − G p), p = μ v_prev; J d comes from the solve's pushforward
  (J G⁻(∇ − Gp)) plus J p, so the line search and the damping rule need no extra Jacobian product;
* a step that cannot be computed (solver failure, non-finite direction, zero Jacobian, zero curvature) or
  whose update would make a parameter non-finite raises `NGDStepError` before anything changes.

``factorize`` is injected: any function with the signature of `engine_factorize` returning an object with
``solve(loss, inverse=...)`` (a distributed solve, a cached factorisation) can replace `natgrad.factorize`.
One factorisation serves the step's first solve and every retry with more damping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.func import jvp, vjp

import natgrad as ng
from natgrad._loss import output_gradient
from natgrad._result import known_rank
from natgrad.exceptions import NatgradError
from natgrad.linalg import residual_rtol

from ._curvature import Curvature, resolve_curvature
from ._damping import LevenbergMarquardt, reduction_ratio
from ._errors import NGDStepError
from ._line_search import FullStep, LineProblem, LineSearch
from ._momentum import add_prior, shifted_loss
from ._residuals import SVD_RESIDUAL_RTOL, SVD_ROUTE, residual_method
from ._routing import RecordingForward, damped_goes_matrix_free, step_factorization

Forward = Callable[[dict[str, Tensor]], Tensor]
Loss = Callable[[Tensor], Tensor]

_TRACE_PROBES = 2  # Hutchinson probes for the precision floor; an order of magnitude is all it needs


@dataclass(frozen=True)
class StepState:
    """What one step carries to the next.

    Attributes:
        damping: the current λ (acts on the loss's curvature sG).
        momentum: v_prev by parameter name, for the parameters whose group uses momentum.
        preconditioner: the matrix-free route's preconditioner of the last step that ran it (``_routing``),
            offered to the next step's factorisation; None when there is none (a resumed optimizer).
        steps: steps taken before this one.
    """

    damping: float
    momentum: Mapping[str, Tensor] = field(default_factory=dict)
    preconditioner: Any = None
    steps: int = 0


@dataclass(frozen=True)
class StepSettings:
    """The optimizer's settings that shape a step (everything except lr and μ, which are per group).

    Attributes:
        resting_damping: the configured λ the safeguard returns to (0: the generalized inverse).
        adaptive_damping: adapt λ by the Levenberg–Marquardt ratio rule and reject loss increases.
        safeguard: without adaptive damping and without a line search, reject a step that increases the loss
            and adapt λ by `LevenbergMarquardt.update_from_zero` between ``resting_damping`` and the rule's
            maximum.
        damping_rule: the `LevenbergMarquardt` rule.
        line_search: the step-size strategy.
        metric: ``"auto"`` or a natgrad metric.
        inverse: generalized inverse used when λ = 0 (None: Moore–Penrose, with the cutoff
            `natgrad.linalg.residual_rtol` when the metric is Euclidean — G = JᵀJ of residuals — else the
            engine's default).
        mc_samples: Monte-Carlo Fisher sample count, or None.
        method: engine route.
        max_attempts: solves per step when rejected steps are retried with more damping (≥ 1).
        residual_svd: solve NGD's residual default by the SVD of J (``_residuals``) where it applies.
        geodesic_acceleration: search along θ(α) = θ − α d − ½α² a with the second-order correction a
            (`_geodesic_correction`) instead of the straight line θ − α d.
    """

    resting_damping: float = 0.0
    adaptive_damping: bool = False
    safeguard: bool = True
    damping_rule: LevenbergMarquardt = field(default_factory=LevenbergMarquardt)
    line_search: LineSearch | None = None
    metric: Any = "auto"
    inverse: Any = None
    mc_samples: int | None = None
    method: str = "auto"
    max_attempts: int = 8
    residual_svd: bool = False
    geodesic_acceleration: bool = False


@dataclass(frozen=True)
class StepProblem:
    """One step's data: the model at θ and the loss.

    Attributes:
        forward: ``params -> z`` (dict of tensors by name).
        theta: the current parameters by name (detached).
        loss: ``z -> scalar``.
        lr: learning rate of every parameter (its group's).
        momentum: μ of every parameter (its group's).
        generator: generator of the Monte-Carlo labels (None without Monte Carlo).
        search: ``params -> z`` the line search evaluates the loss of instead of ``forward`` (held-out points);
            None searches on ``forward``. The direction always comes from ``forward``.
    """

    forward: Forward
    theta: dict[str, Tensor]
    loss: Loss
    lr: Mapping[str, float]
    momentum: Mapping[str, float]
    generator: torch.Generator | None = None
    search: Forward | None = None


@dataclass(frozen=True)
class Solved:
    """What a solve returns: v = G⁻∇ (by name), J v, the gradient, rank, route and a matrix-free certificate."""

    direction: dict[str, Tensor]
    pushforward: Tensor
    gradient: dict[str, Tensor]
    rank: int | None
    method: str
    certificate: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class StepOutcome:
    """The result of `ngd_step`: θ ← θ − update (None: no move), the next state, and what happened."""

    update: dict[str, Tensor] | None
    state: StepState
    info: dict[str, Any]


class Factorized(Protocol):
    """What a factorisation offers the step: ``solve(loss, inverse=...)`` (like `natgrad.GramFactorization`)."""

    def solve(self, loss: Loss, *, inverse: Any = None) -> Any:
        """The natural gradient of ``loss`` (direction, pushforward, gradient, rank, method)."""
        ...


Factorize = Callable[[Forward, dict[str, Tensor], Any, Any, str], Factorized]


def engine_factorize(
    forward: Forward,
    theta: dict[str, Tensor],
    metric: Any,
    inverse: Any,
    method: str,
    *,
    preconditioner: Any = None,
) -> Factorized:
    """The default: `natgrad.factorize` of G = JᵀgJ at θ, reused by every solve of the step.

    With ``method="auto"``, a damped step on a large module problem is factorised by the matrix-free
    ``structured-krylov`` route (see ``natgrad.optim._routing``), starting from ``preconditioner`` (the last
    such step's) when it fits; otherwise ``auto`` chooses as everywhere.
    """
    preferred = step_factorization(forward, theta, metric, inverse, method, preconditioner)
    return preferred if preferred is not None else ng.factorize(forward, theta, metric, inverse, method)


def ngd_step(
    state: StepState,
    problem: StepProblem,
    settings: StepSettings,
    factorize: Factorize = engine_factorize,
) -> StepOutcome:
    """One natural gradient step, computed without changing anything.

    G is factorised once. When the damping rule rejects a step (the loss went up) and λ grows, the step is
    solved again on the same factorisation with the new λ (Damped inverses of any λ reuse it), up to
    ``settings.max_attempts`` solves, so a rejection costs a solve and a forward, not a step.

    Raises:
        ValueError: the loss is not finite at θ or not a scalar.
        NGDStepError: the step cannot be computed or would make a parameter non-finite.
    """
    # the first call tells whether forward is one module call (the structured routes' problem, ``_routing``)
    forward, theta, loss = RecordingForward(problem.forward), problem.theta, problem.loss
    z0 = _outputs(forward, theta)
    loss0 = scalar_loss(loss, z0)
    curvature = resolve_curvature(settings.metric, loss, z0, settings.mc_samples, problem.generator)

    # a residual map that can linearise itself (natgrad.pde.Problem) gives a cheaper model with the same value
    # and Jacobian at θ for every Jacobian product and the factorisation; trial points still use forward
    linearize = getattr(forward, "linearize", None)
    model: Forward = linearize(theta) if callable(linearize) else forward

    prior = _momentum_prior(state, problem)
    engine_loss = _scaled(loss, curvature.scale)
    jp = None
    if prior is not None:
        jp = jvp(model, (theta,), (prior,))[1]
        engine_loss = shifted_loss(engine_loss, curvature.matvec(jp))
    line_search = settings.line_search or FullStep()
    search = forward if problem.search is None else problem.search
    # the loss the search must beat: L at θ on the search's outputs (the step's own loss when it has none)
    search_loss0 = loss0 if problem.search is None else _search_loss(loss, _outputs(search, theta))
    # a line search guards the step by itself (it never accepts a larger loss); the safeguard guards α = 1
    safeguarded = settings.safeguard and isinstance(line_search, FullStep)
    adapts = settings.adaptive_damping or safeguarded
    needs_model = adapts or line_search.needs_model
    grad_z = output_gradient("NGD.step", loss, z0)[1] if needs_model else None
    cached: dict[str, float] = {}

    def floor() -> float:  # eps·tr(sG): two JVPs, computed once per step and only when the rule needs it
        if "floor" not in cached:
            cached["floor"] = precision_floor(model, theta, curvature, z0.dtype)
        return cached["floor"]

    start = state.damping
    starts_damped = (
        safeguarded
        and start == 0.0
        and state.steps == 0
        and settings.resting_damping == 0.0
        and settings.inverse is None
        and settings.method == "auto"
        and damped_goes_matrix_free(model, theta, curvature.metric)
    )
    if starts_damped:  # the safeguard's level after a rejected λ = 0 step, without the dense solve (above)
        assert grad_z is not None
        q = output_gradient_curvature(model, theta, curvature, grad_z)
        start = max(settings.damping_rule.start_fraction * q, floor(), settings.damping_rule.minimum)
    inverse = _inverse(start, curvature, settings.inverse, z0, theta)
    # the residual cutoff of NGD's default inverse, under a line search that can tell a step it does not trust
    refined = (
        settings.inverse is None
        and isinstance(inverse, ng.MoorePenrose)
        and inverse != ng.MoorePenrose()
        and not isinstance(line_search, FullStep)
    )
    # residual_svd: NGD's residual default in float64 with d ≤ r by the SVD of J, not eigh of JᵀJ (``_residuals``)
    method = settings.method
    if settings.residual_svd:
        residual_default = settings.inverse is None and isinstance(inverse, ng.MoorePenrose)
        rows, cols = z0.numel(), ng.num_params(theta)
        method = residual_method(method, curvature.metric, residual_default, rows, cols, z0.dtype)
        if method == SVD_ROUTE:
            inverse = ng.MoorePenrose(rtol=SVD_RESIDUAL_RTOL)
    with _solver_errors(loss0):
        if factorize is engine_factorize:  # the default knows the route's preconditioner; others keep theirs
            fac = engine_factorize(
                model, theta, curvature.metric, inverse, method, preconditioner=state.preconditioner
            )
        else:
            fac = factorize(model, theta, curvature.metric, inverse, method)

    def attempt(fac: Factorized, damping: float, first: bool) -> _Attempt:
        """Solve on ``fac`` with ``damping`` (its own inverse when ``first``) and search along the direction."""
        with _solver_errors(loss0):
            solved = _solve(fac, engine_loss, damping, curvature, first)
        direction = add_prior(solved.direction, prior)
        _check_direction(direction, solved, model, theta, loss0)
        _check_update(theta, direction, problem.lr)
        step_vec = {name: problem.lr[name] * v for name, v in direction.items()}
        accel = None
        if settings.geodesic_acceleration:
            with _solver_errors(loss0):
                accel = _geodesic_correction(forward, theta, step_vec, fac, damping, curvature, first)
        slope = curvature_term = math.nan
        if grad_z is not None:
            jd = _step_pushforward(model, theta, step_vec, solved, jp, problem.lr, z0)
            slope = float((grad_z * jd).sum())  # ⟨∇L, d⟩ = ⟨∇_z L, J d⟩
            curvature_term = curvature.scale * float((jd * curvature.matvec(jd)).sum())  # dᵀ (sG) d

        def loss_at(alpha: float) -> float:
            return float(loss(search(_moved(theta, step_vec, accel, alpha))).detach())

        alpha, loss_new = line_search.search(LineProblem(loss_at, search_loss0, slope, curvature_term))
        return _Attempt(solved, direction, step_vec, slope, curvature_term, loss_at, alpha, loss_new, accel)

    damping, attempts = start, 0
    while True:
        attempts += 1
        tried = attempt(fac, damping, attempts == 1)
        if not adapts and refined and tried.alpha < SHORT_STEP:
            # v keeps directions of curvature down to the rounding of JᵀJ, and the search had to cut it short:
            # the linearisation does not hold that far yet (a PINN's nonlinear phase). Also search along the
            # direction of the engine's default cutoff, and keep whichever lowers the loss more.
            with _solver_errors(loss0):
                coarse = factorize(model, theta, curvature.metric, ng.MoorePenrose(), method)
            other = attempt(coarse, damping, True)
            attempts += 1
            if other.loss_new is not None and (tried.loss_new is None or other.loss_new < tried.loss_new):
                tried = other
        solved, direction, step_vec = tried.solved, tried.direction, tried.step_vec
        alpha, loss_new = tried.alpha, tried.loss_new
        if not adapts:
            next_damping, ratio, trial_loss = state.damping, None, loss_new
            break
        trial_loss = loss_new = _finite_or_inf(tried.loss_at(alpha)) if loss_new is None else loss_new
        predicted = alpha * tried.slope - 0.5 * alpha**2 * tried.curvature_term
        ratio = reduction_ratio(loss0 - loss_new, predicted) if alpha > 0 else -math.inf
        poor = not math.isfinite(ratio) or ratio < settings.damping_rule.lower
        lowest = floor() if (settings.adaptive_damping or damping > 0 or poor) else 0.0
        next_damping = _next_damping(settings, damping, ratio, lowest, model, theta, curvature, solved)
        accepted = math.isfinite(loss_new) and loss_new <= loss0
        retry = (
            attempts < settings.max_attempts
            and next_damping > damping
            and _reuses(fac, next_damping, curvature)
        )
        if accepted or not retry:
            if not accepted:
                alpha, loss_new = 0.0, loss0  # a step that increases the loss is rejected
            break
        damping = next_damping  # rejected: solve again with more damping on the same factorisation

    momentum = {name: direction[name].detach().clone() for name in direction if problem.momentum[name] > 0}
    update = None if alpha == 0.0 else _update(step_vec, tried.accel, alpha)
    searched: dict[str, float | None] = {}
    if problem.search is not None:  # the search saw held-out losses; the step's own one costs one more call
        searched = {"search_loss": search_loss0, "search_loss_after": loss_new}
        loss_new = (
            loss0
            if alpha == 0.0
            else float(loss(forward(_moved(theta, step_vec, tried.accel, alpha))).detach())
        )
        trial_loss = loss_new
    info = {
        "loss": loss0,
        "loss_after": loss_new,
        "trial_loss": trial_loss,
        "step_size": alpha,
        "damping": damping,
        "next_damping": next_damping,
        "attempts": attempts,
        "ratio": ratio,
        "rank": solved.rank,
        "method": solved.method,
        "certificate": solved.certificate,
        "started_damped": starts_damped,
        **searched,
    }
    if tried.accel is not None:  # ‖a‖ / ‖d‖: the correction against the step (small: a nearly straight path)
        size = float(ng.flatten_params(step_vec).norm())
        info["acceleration_ratio"] = float(ng.flatten_params(tried.accel).norm()) / max(
            size, torch.finfo(z0.dtype).tiny
        )
    preconditioner = getattr(fac, "preconditioner", None)
    if preconditioner is None:  # a dense step: the last matrix-free one's stays on offer
        preconditioner = state.preconditioner
    return StepOutcome(update, StepState(next_damping, momentum, preconditioner, state.steps + 1), info)


# A searched step shorter than this fraction of v: v leaves the region where the linearisation holds by orders
# of magnitude (the nonlinear phase of a PINN, with directions of tiny curvature kept).
SHORT_STEP = 2.0**-10


@dataclass(frozen=True)
class _Attempt:
    """One solve and the line search along it."""

    solved: Solved
    direction: dict[str, Tensor]
    step_vec: dict[str, Tensor]
    slope: float
    curvature_term: float
    loss_at: Callable[[float], float]
    alpha: float
    loss_new: float | None
    accel: dict[str, Tensor] | None = None  # the geodesic correction a, when the step uses it


def _update(step_vec: dict[str, Tensor], accel: dict[str, Tensor] | None, alpha: float) -> dict[str, Tensor]:
    """α d, or α d + ½α² a on the geodesic path (θ moves to θ − update)."""
    if accel is None:
        return {name: alpha * s for name, s in step_vec.items()}
    return {name: alpha * s + 0.5 * alpha**2 * accel[name] for name, s in step_vec.items()}


def _moved(
    theta: dict[str, Tensor], step_vec: dict[str, Tensor], accel: dict[str, Tensor] | None, alpha: float
) -> dict[str, Tensor]:
    """The trial point θ − update (exactly the parameters a step of this α leaves)."""
    update = _update(step_vec, accel, alpha)
    return {name: t - update[name] for name, t in theta.items()}


def second_directional_derivative(forward: Forward, theta: dict[str, Tensor], d: dict[str, Tensor]) -> Tensor:
    """D²φ(θ)[d, d] = d²/dt² φ(θ + t d) at t = 0, by forward-mode over forward-mode differentiation."""

    def along(t: dict[str, Tensor]) -> Tensor:
        return jvp(forward, (t,), (d,))[1]

    return jvp(along, (theta,), (d,))[1]


def _geodesic_correction(
    forward: Forward,
    theta: dict[str, Tensor],
    step_vec: dict[str, Tensor],
    fac: Factorized,
    damping: float,
    curvature: Curvature,
    first: bool,
) -> dict[str, Tensor]:
    """a with θ(α) = θ − α d − ½α² a following φ to second order (geodesic acceleration).

    Along θ(α), φ(θ(α)) = φ − α J d + ½α² (D²φ[d, d] − J a) + O(α³); a is the least-squares solution, in the
    step's metric and with its damping, of J a = D²φ[d, d]: a = (JᵀgJ + λI)⁻¹ Jᵀ g D²φ[d, d] (G⁻ of the
    step's inverse when λ = 0), one more solve on the step's factorisation. The second-order term of the
    model's move then vanishes where J can represent it, so the path bends with the model instead of
    leaving the region where the linearisation holds.
    """
    curve = second_directional_derivative(forward, theta, step_vec).detach()
    weight = curvature.matvec(curve)

    def linear(z: Tensor) -> Tensor:
        return (weight * z).sum()

    solved = _solve(fac, linear, damping, curvature, first)
    return {name: v.detach() for name, v in solved.direction.items()}


def _next_damping(
    settings: StepSettings,
    damping: float,
    ratio: float,
    floor: float,
    forward: Forward,
    theta: dict[str, Tensor],
    curvature: Curvature,
    solved: Solved,
) -> float:
    rule = settings.damping_rule
    if settings.adaptive_damping:
        return rule.update(damping, ratio, floor)
    return rule.update_from_zero(
        damping,
        ratio,
        floor,
        lambda: gradient_curvature(forward, theta, curvature, solved),
        settings.resting_damping,
    )


def _reuses(fac: Factorized, damping: float, curvature: Curvature) -> bool:
    """Whether a retry with damping λ can reuse ``fac`` (a MinNorm factorisation factors another matrix)."""
    refuses = getattr(fac, "refuses", None)  # natgrad.GramFactorization says why not; others are trusted
    return refuses is None or refuses(ng.Damped(damping / curvature.scale)) is None


def _solve(fac: Factorized, loss: Loss, damping: float, curvature: Curvature, first: bool) -> Solved:
    # the first solve uses the inverse the factorisation was made for; retries override the damping
    result = fac.solve(loss) if first else fac.solve(loss, inverse=ng.Damped(damping / curvature.scale))
    info = getattr(result, "info", None) or {}
    return Solved(
        dict(result.direction),
        result.pushforward,
        dict(result.gradient),
        # not computed here when the solve did not need it (a damped kernel solve: eigenvalues cost O(r³))
        known_rank(result) if isinstance(result, ng.NaturalGradient) else result.rank,
        result.method,
        info.get("certificate"),
    )


@contextmanager
def _solver_errors(loss0: float) -> Iterator[None]:
    """Solver failures as `NGDStepError`: an eigh that does not converge, a non-finite solve, every spectral
    fallback failing (``FactorizationError``), a Krylov solve that cannot certify its tolerance
    (``ConvergenceError``)."""
    try:
        yield
    except (ValueError, torch.linalg.LinAlgError, NatgradError) as error:
        kind = (
            "torch.linalg.LinAlgError"
            if isinstance(error, torch.linalg.LinAlgError)
            else type(error).__name__
        )
        raise NGDStepError(
            f"NGD.step: the natural gradient could not be computed at loss {loss0:.6g} "
            f"({kind}: {error}); the step was not taken and the parameters and optimizer "
            "state are unchanged (try damping > 0, adaptive_damping=True, or float64)"
        ) from error


# ---------------------------------------------------------------------------------------------- pieces
def scalar_loss(loss: Loss, z: Tensor) -> float:
    """L(z) as a float; ValueError when it is not a scalar tensor or not finite."""
    value = loss(z)
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"NGD.step: loss(z) must return a scalar tensor, got {shape}")
    number = float(value.detach())
    if not math.isfinite(number):
        raise ValueError(
            f"NGD.step: the loss is not finite ({number}) at the current parameters; the step was not "
            "taken and the parameters are unchanged (check the data and the model outputs, or lower the "
            "learning rate)"
        )
    return number


def precision_floor(
    forward: Forward, theta: dict[str, Tensor], curvature: Curvature, dtype: torch.dtype
) -> float:
    """eps(dtype) · tr(sG), tr by Hutchinson: E_u[(Ju)ᵀ s g (Ju)] over Rademacher u (fixed seed)."""
    first = next(iter(theta.values()))
    generator = torch.Generator(device=first.device).manual_seed(0)
    total = 0.0
    for _ in range(_TRACE_PROBES):
        probe = {
            name: torch.randint(0, 2, t.shape, generator=generator, device=t.device).to(t.dtype) * 2 - 1
            for name, t in theta.items()
        }
        ju = jvp(forward, (theta,), (probe,))[1]
        total += float((ju * curvature.matvec(ju)).sum())
    trace = curvature.scale * total / _TRACE_PROBES
    return torch.finfo(dtype).eps * max(trace, 0.0)


def output_gradient_curvature(
    forward: Forward, theta: dict[str, Tensor], curvature: Curvature, grad_z: Tensor
) -> float:
    """q of `gradient_curvature` for ∇ = Jᵀ ∇z L before any solve (one VJP and one JVP)."""
    pullback = vjp(forward, theta)[1]
    (grad,) = pullback(grad_z)
    return _curvature_along(forward, theta, curvature, grad)


def gradient_curvature(
    forward: Forward, theta: dict[str, Tensor], curvature: Curvature, solved: Solved
) -> float:
    """q = ∇ᵀ(sG)∇ / ‖∇‖²: the loss's curvature along its gradient (near the top of G's spectrum)."""
    grad = {name: g.to(theta[name].dtype) for name, g in solved.gradient.items()}
    return _curvature_along(forward, theta, curvature, grad)


def _curvature_along(
    forward: Forward, theta: dict[str, Tensor], curvature: Curvature, grad: dict[str, Tensor]
) -> float:
    """gᵀ(sG)g / ‖g‖² by one JVP (0 for g = 0)."""
    norm2 = sum(float(g.pow(2).sum()) for g in grad.values())
    if not norm2 > 0:
        return 0.0
    jg = jvp(forward, (theta,), (grad,))[1]
    return curvature.scale * float((jg * curvature.matvec(jg)).sum()) / norm2


def _search_loss(loss: Loss, z: Tensor) -> float:
    """L at θ on the line search's own outputs; ValueError (naming them) when it is not a finite scalar."""
    try:
        return scalar_loss(loss, z)
    except ValueError as error:
        raise ValueError(
            f"NGD.step: the line search's forward (search=...) at the current parameters: {error}"
        ) from None


def _outputs(forward: Forward, theta: dict[str, Tensor]) -> Tensor:
    z0 = forward(theta)
    if not isinstance(z0, Tensor):
        raise TypeError(
            f"NGD.step: forward(params) must return a Tensor of model outputs, got {type(z0).__name__}"
        )
    return z0.detach()


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def _scaled(loss: Loss, scale: float) -> Loss:
    if scale == 1.0:
        return loss
    return lambda z: loss(z) / scale


def _inverse(damping: float, curvature: Curvature, inverse: Any, z0: Tensor, theta: dict[str, Tensor]) -> Any:
    # damping λ acts on the loss's own curvature s·G: (sG + λI)⁻¹ ∇ = (G + λ/s I)⁻¹ ∇/s
    if damping > 0:
        return ng.Damped(damping / curvature.scale)
    if inverse is not None:
        return inverse
    if isinstance(curvature.metric, ng.metrics.Euclidean):  # G = JᵀJ: the cutoff of its measured rounding
        return ng.MoorePenrose(rtol=residual_rtol(z0.dtype, z0.numel(), ng.num_params(theta)))
    return ng.MoorePenrose()


def _momentum_prior(state: StepState, problem: StepProblem) -> dict[str, Tensor] | None:
    """p = μ_group · v_prev for every parameter, or None when no group uses momentum yet."""
    prior = {}
    for name, t in problem.theta.items():
        mu, buffer = problem.momentum[name], state.momentum.get(name)
        prior[name] = mu * buffer if (mu > 0 and buffer is not None) else torch.zeros_like(t)
    if not any(bool(v.any()) for v in prior.values()):
        return None
    return prior


def _check_direction(
    direction: dict[str, Tensor], solved: Solved, forward: Forward, theta: dict[str, Tensor], loss0: float
) -> None:
    bad = sum(int((~torch.isfinite(v)).sum()) for v in direction.values())
    if bad:
        raise NGDStepError(
            f"NGD.step: the natural gradient contains {bad} non-finite value(s) at loss {loss0:.6g}; the step "
            "was not taken and the parameters and optimizer state are unchanged (try damping > 0, "
            "adaptive_damping=True, or float64)"
        )
    if any(bool(v.any()) for v in direction.values()):
        return
    # v = 0: a stationary point, or a step that silently does nothing — tell them apart
    generator = torch.Generator(device=next(iter(theta.values())).device).manual_seed(0)
    probe = {
        name: torch.randn(t.shape, generator=generator, device=t.device).to(t.dtype)
        for name, t in theta.items()
    }
    ju = jvp(forward, (theta,), (probe,))[1]
    if not bool(ju.any()):
        raise NGDStepError(
            "NGD.step: forward(params) does not depend on the parameters (its Jacobian is zero), so no step "
            "can change the outputs; the parameters are unchanged (check that forward uses the params dict "
            "it is given, e.g. torch.func.functional_call(model, params, (x,)) or NGD.functional(model))"
        )
    if any(bool(g.any()) for g in solved.gradient.values()):
        raise NGDStepError(
            f"NGD.step: the curvature JᵀgJ is numerically zero (rank {solved.rank}) while the gradient is not, "
            f"at loss {loss0:.6g}: the metric vanishes at the outputs (e.g. a saturated softmax); the "
            "parameters are unchanged (try damping > 0 or a smaller learning rate)"
        )


def _check_update(theta: dict[str, Tensor], direction: dict[str, Tensor], lr: Mapping[str, float]) -> None:
    for name, t in theta.items():
        if not bool(torch.isfinite(t - lr[name] * direction[name]).all()):
            raise NGDStepError(
                f"NGD.step: the update lr·v would make parameter {name!r} non-finite (lr={lr[name]:g}, "
                f"max |v| = {float(direction[name].abs().max()):.3g}); the step was not taken and the "
                "parameters and optimizer state are unchanged; lower the learning rate"
            )


def _step_pushforward(
    forward: Forward,
    theta: dict[str, Tensor],
    step_vec: dict[str, Tensor],
    solved: Solved,
    jp: Tensor | None,
    lr: Mapping[str, float],
    z0: Tensor,
) -> Tensor:
    """J d: from the solve's pushforward when one lr scales every parameter, else one JVP."""
    rates = set(lr.values())
    if len(rates) == 1:
        jv = solved.pushforward.reshape(z0.shape)
        if jp is not None:
            jv = jv + jp
        return rates.pop() * jv
    jd = jvp(forward, (theta,), (step_vec,))[1]
    return jd
