"""`NGD`: natural gradient descent as a `torch.optim.Optimizer`.

One step at parameters θ (all groups together, since the metric couples them):

    z₀ = forward(θ),  v = p + G⁻(∇ − G p),  G = s · Jᵀ g(z₀) J (+ λ I when damped),  ∇ = Jᵀ ∇_z L(z₀),
    θ_group ← θ_group − α · lr_group · v_group,

with g the metric (from the loss, given, or Monte-Carlo), G⁻ the engine's generalized inverse (Moore–Penrose
by default), p = μ v_prev the dual-form momentum (zero without momentum), and α ∈ (0, 1] from the line search
(1 without one). The direction comes from ``natgrad.natural_gradient(..., method=...)``.

Closure protocol: ``step(forward, loss)``. ``forward(params)`` maps a dict ``{name: tensor}`` of the
optimizer's parameters to the model outputs z on the batch (build it with `NGD.functional`, or with
``torch.func.functional_call`` when the optimizer was given ``model.named_parameters()``); ``loss(z)``
returns a scalar. ``step(residual_fn)`` alone minimises ½‖r‖² with the Euclidean metric (Gauss–Newton).
The natural gradient needs the outputs, not only the loss, which is why the closure is split in two.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.func import functional_call, jvp

import natgrad as ng
from natgrad._loss import output_gradient

from ._curvature import Curvature, resolve_curvature
from ._damping import LevenbergMarquardt, reduction_ratio
from ._line_search import backtracking, default_grid, grid_search
from ._losses import LeastSquares
from ._momentum import add_prior, shifted_loss

_GROUP_KEYS = {"params", "param_names", "lr", "momentum"}
_LINE_SEARCHES = (None, "grid", "backtracking")


class NGD(torch.optim.Optimizer):
    """Natural gradient descent with exact (engine) directions.

    Args:
        params: parameters or parameter groups, as for any torch optimizer (``model.parameters()``,
            ``model.named_parameters()``, or dicts with ``"params"`` and optional ``"lr"``, ``"momentum"``).
        lr: step length multiplying the natural gradient (1 = full Gauss–Newton step).
        damping: λ ≥ 0; λ > 0 uses (G + λI)⁻¹ instead of a generalized inverse.
        adaptive_damping: adapt λ by the Levenberg–Marquardt rule (needs λ > 0); a step that increases
            the loss is then rejected (parameters unchanged, λ grows).
        damping_schedule: the `LevenbergMarquardt` rule (default boost 1.5, thresholds 1/4 and 3/4).
        line_search: None (α = 1), ``"grid"`` (best α on ``line_search_grid``) or ``"backtracking"`` (Armijo).
            Both never accept a point with a larger loss (α = 0 then).
        line_search_grid: the grid factors (default 1, 1/2, …, 2⁻²⁹).
        momentum: μ ∈ [0, 1) for the dual-form momentum v = μ v_prev + G⁻(∇ − μ G v_prev).
        metric: ``"auto"`` (from the loss; Euclidean for residuals) or a natgrad metric object.
        inverse: generalized inverse for λ = 0 (default ``natgrad.MoorePenrose()``).
        mc_samples: k ≥ 1 for a Monte-Carlo Fisher from k sampled labels per example; None for the exact one.
        method: engine route (``"auto"``, ``"primal"``, ``"dual"``, ``"lstsq"``, ``"krylov"``, ...).
        seed: seed of the generator that draws Monte-Carlo labels (saved in ``state_dict``).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1.0,
        *,
        damping: float = 0.0,
        adaptive_damping: bool = False,
        damping_schedule: LevenbergMarquardt | None = None,
        line_search: str | None = None,
        line_search_grid: tuple[float, ...] | None = None,
        momentum: float = 0.0,
        metric: Any = "auto",
        inverse: Any = None,
        mc_samples: int | None = None,
        method: str = "auto",
        seed: int = 0,
    ) -> None:
        _check_step_settings(lr, momentum)
        if not (isinstance(damping, (int, float)) and damping >= 0 and math.isfinite(damping)):
            raise ValueError(f"NGD: damping must be a finite number >= 0, got {damping!r}")
        if adaptive_damping and not damping > 0:
            raise ValueError(
                "NGD: adaptive_damping needs a starting damping > 0, got damping=0; pass e.g. 1e-3"
            )
        if damping > 0 and inverse is not None:
            raise ValueError("NGD: pass either damping > 0 or a generalized inverse, not both")
        if line_search not in _LINE_SEARCHES:
            raise ValueError(f"NGD: line_search must be one of {_LINE_SEARCHES}, got {line_search!r}")
        if mc_samples is not None and not (isinstance(mc_samples, int) and mc_samples >= 1):
            raise ValueError(f"NGD: mc_samples must be None or an integer >= 1, got {mc_samples!r}")
        if isinstance(metric, str) and metric != "auto":
            raise ValueError(f"NGD: metric must be 'auto', None or a natgrad metric object, got {metric!r}")
        super().__init__(params, {"lr": lr, "momentum": momentum})
        self.damping = float(damping)
        self.adaptive_damping = bool(adaptive_damping)
        self.damping_schedule = damping_schedule or LevenbergMarquardt()
        self.line_search = line_search
        self.line_search_grid = tuple(line_search_grid) if line_search_grid else default_grid()
        self.metric = metric
        self.inverse = inverse
        self.mc_samples = mc_samples
        self.method = method
        self.seed = int(seed)
        self.steps_taken = 0
        self.last_step: dict[str, Any] = {}
        self._generator: torch.Generator | None = None
        self._generator_state: torch.Tensor | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        unknown = set(param_group) - _GROUP_KEYS
        if unknown:
            raise ValueError(
                f"NGD: parameter groups may set {sorted(_GROUP_KEYS - {'params', 'param_names'})} only, got "
                f"{sorted(unknown)}; damping, metric, inverse and line search act on all groups together"
            )
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_step_settings(group["lr"], group["momentum"])

    # ------------------------------------------------------------------ parameters by name
    def named_parameters(self) -> dict[str, torch.Tensor]:
        """The optimizer's parameters by name (names from ``named_parameters()`` or ``"param<k>"``)."""
        named: dict[str, torch.Tensor] = {}
        index = 0
        for group in self.param_groups:
            names = group.get("param_names")
            for j, p in enumerate(group["params"]):
                name = names[j] if names is not None else f"param{index}"
                if name in named:
                    raise ValueError(f"NGD: parameter name {name!r} appears twice across parameter groups")
                named[name] = p
                index += 1
        return named

    def functional(self, model: torch.nn.Module) -> Callable[..., torch.Tensor]:
        """``f(params, *args, **kwargs) = model(*args, **kwargs)`` with the optimizer's parameters replaced.

        ``params`` is a dict keyed like `named_parameters`; parameters of ``model`` the optimizer does not
        hold keep their current values. Use it to write ``forward = lambda p: f(p, x)`` for `step`.
        """
        by_id = {id(p): name for name, p in model.named_parameters()}
        mapping = {name: by_id[id(p)] for name, p in self.named_parameters().items() if id(p) in by_id}
        if not mapping:
            raise ValueError("NGD.functional: none of the optimizer's parameters belongs to the given model")

        def call(params: dict[str, torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
            return functional_call(
                model, {mapping[k]: v for k, v in params.items() if k in mapping}, args, kwargs
            )

        return call

    # ------------------------------------------------------------------ the step
    def step(  # type: ignore[override]
        self,
        forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One natural gradient step; returns the loss before the step.

        Args:
            forward: ``params -> z`` (outputs on the batch, or the residual vector when ``loss`` is None).
            loss: ``z -> scalar``; None means ½‖z‖² with the Euclidean metric (Gauss–Newton on residuals).

        Raises:
            ValueError: the loss or the direction is not finite (the parameters are left unchanged).
        """
        if not callable(forward):
            raise TypeError(
                f"NGD.step: forward must be callable params -> outputs, got {type(forward).__name__}"
            )
        loss = LeastSquares() if loss is None else loss
        named = self.named_parameters()
        theta = {name: p.detach() for name, p in named.items()}
        z0 = forward(theta).detach()
        loss0 = _scalar_loss(loss, z0)
        curvature = resolve_curvature(self.metric, loss, z0, self.mc_samples, self._mc_generator(z0))

        prior = self._momentum_prior(named)
        engine_loss = _scaled(loss, curvature.scale)
        if prior is not None:
            jp = jvp(forward, (theta,), (prior,))[1]
            engine_loss = shifted_loss(engine_loss, curvature.matvec(jp))
        result = ng.natural_gradient(
            forward,
            theta,
            engine_loss,
            metric=curvature.metric,
            inverse=self._inverse(curvature),
            method=self.method,
        )
        direction = add_prior(dict(result.direction), prior)
        if not all(bool(torch.isfinite(v).all()) for v in direction.values()):
            raise ValueError(
                f"NGD.step: the natural gradient is not finite at loss {loss0:.6g}; the step was not "
                "taken and "
                "the parameters are unchanged (try damping > 0 or a smaller learning rate)"
            )
        lr_of = self._group_settings(named, "lr")
        step_vec = {name: lr_of[name] * v for name, v in direction.items()}

        alpha, loss_new, ratio = self._step_size(forward, loss, theta, step_vec, z0, loss0, curvature)
        mu = self._group_settings(named, "momentum")
        with torch.no_grad():
            for name, p in named.items():
                if alpha != 0.0:
                    p.sub_(alpha * step_vec[name].to(p.dtype))
                if mu[name] > 0:
                    self.state[p]["momentum_buffer"] = direction[name].detach().clone()
        self.steps_taken += 1
        self.last_step = {
            "loss": loss0,
            "loss_after": loss_new,
            "step_size": alpha,
            "damping": self.damping,
            "ratio": ratio,
            "rank": result.rank,
            "method": result.method,
        }
        if self.adaptive_damping and ratio is not None:
            self.damping = self.damping_schedule.update(self.damping, ratio)
        return torch.tensor(loss0, dtype=z0.dtype, device=z0.device)

    def _step_size(
        self,
        forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        loss: Callable[[torch.Tensor], torch.Tensor],
        theta: dict[str, torch.Tensor],
        step_vec: dict[str, torch.Tensor],
        z0: torch.Tensor,
        loss0: float,
        curvature: Curvature,
    ) -> tuple[float, float | None, float | None]:
        """α, the loss after the step (None: not evaluated) and the LM reduction ratio (None: not used)."""

        def loss_at(alpha: float) -> float:
            trial = {name: t - alpha * step_vec[name] for name, t in theta.items()}
            return float(loss(forward(trial)).detach())

        needs_model = self.line_search == "backtracking" or self.adaptive_damping
        slope = curvature_term = math.nan
        if needs_model:
            jd = jvp(forward, (theta,), (step_vec,))[1]
            grad_z = output_gradient("NGD.step", loss, z0)[1]
            slope = float((grad_z * jd).sum())  # ⟨∇L, d⟩ = ⟨∇_z L, J d⟩
            curvature_term = curvature.scale * float((jd * curvature.matvec(jd)).sum())  # dᵀ G d
        loss_new: float | None
        if self.line_search == "grid":
            alpha, loss_new = grid_search(loss_at, loss0, self.line_search_grid)
        elif self.line_search == "backtracking":
            alpha, loss_new = backtracking(loss_at, loss0, slope)
        else:
            alpha, loss_new = 1.0, (loss_at(1.0) if self.adaptive_damping else None)
        if not self.adaptive_damping:
            return alpha, loss_new, None
        assert loss_new is not None  # every branch evaluates the loss when the damping adapts
        predicted = alpha * slope - 0.5 * alpha**2 * curvature_term
        ratio = reduction_ratio(loss0 - loss_new, predicted) if alpha > 0 else -math.inf
        if not (loss_new is not None and math.isfinite(loss_new) and loss_new <= loss0):
            return 0.0, loss0, ratio  # LM rejects a step that increases the loss
        return alpha, loss_new, ratio

    # ------------------------------------------------------------------ pieces of the step
    def _inverse(self, curvature: Curvature) -> Any:
        # damping λ acts on the loss's own curvature s·G: (sG + λI)⁻¹ ∇ = (G + λ/s I)⁻¹ ∇/s
        if self.damping > 0:
            return ng.Damped(self.damping / curvature.scale)
        return self.inverse if self.inverse is not None else ng.MoorePenrose()

    def _group_settings(self, named: dict[str, torch.Tensor], key: str) -> dict[str, float]:
        """The group setting ``key`` (``"lr"`` or ``"momentum"``) of every parameter, by name."""
        by_id = {id(p): float(group[key]) for group in self.param_groups for p in group["params"]}
        return {name: by_id[id(p)] for name, p in named.items()}

    def _momentum_prior(self, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """p = μ_group · v_prev for every parameter, or None when no group uses momentum yet."""
        mu = self._group_settings(named, "momentum")
        prior = {}
        for name, p in named.items():
            buffer = self.state[p].get("momentum_buffer") if p in self.state else None
            prior[name] = mu[name] * buffer if (mu[name] > 0 and buffer is not None) else torch.zeros_like(p)
        if not any(bool(v.any()) for v in prior.values()):
            return None
        return prior

    def _mc_generator(self, z: torch.Tensor) -> torch.Generator | None:
        if self.mc_samples is None:
            return None
        if self._generator is None:
            self._generator = torch.Generator(device=z.device)
            self._generator.manual_seed(self.seed)
            if self._generator_state is not None:
                self._generator.set_state(self._generator_state)
        return self._generator

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus the global state: current damping, step count, Monte-Carlo generator."""
        state = super().state_dict()
        generator = self._generator.get_state() if self._generator is not None else self._generator_state
        state["ngd"] = {"damping": self.damping, "steps_taken": self.steps_taken, "generator": generator}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("ngd", None)
        super().load_state_dict(state_dict)
        if extra is not None:
            self.damping = float(extra["damping"])
            self.steps_taken = int(extra["steps_taken"])
            self._generator_state = extra["generator"]
            self._generator = None


def _check_step_settings(lr: Any, momentum: Any) -> None:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"NGD: lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
        raise ValueError(f"NGD: momentum must be in [0, 1), got {momentum!r}")


def _scalar_loss(loss: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> float:
    value = loss(z)
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"NGD.step: loss(z) must return a scalar tensor, got {shape}")
    number = float(value.detach())
    if not math.isfinite(number):
        raise ValueError(
            f"NGD.step: the loss is not finite ({number}) at the current parameters; the step was not "
            "taken and "
            "the parameters are unchanged (check the data and the model outputs, or lower the learning rate)"
        )
    return number


def _scaled(
    loss: Callable[[torch.Tensor], torch.Tensor], scale: float
) -> Callable[[torch.Tensor], torch.Tensor]:
    if scale == 1.0:
        return loss
    return lambda z: loss(z) / scale
