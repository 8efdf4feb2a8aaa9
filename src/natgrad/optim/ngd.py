"""`NGD`: natural gradient descent as a `torch.optim.Optimizer`.

One step at parameters θ (all groups together, since the metric couples them):

    z₀ = forward(θ),  v = p + G⁻(∇ − G p),  G = s · Jᵀ g(z₀) J (+ λ I when damped),  ∇ = Jᵀ ∇_z L(z₀),
    θ_group ← θ_group − α · lr_group · v_group,

with g the metric (from the loss, given, or Monte-Carlo), G⁻ the engine's generalized inverse (Moore–Penrose
by default), p = μ v_prev the dual-form momentum (zero without momentum), and α ∈ (0, 1] from the line search
(1 without one). G is factorised once per step (``natgrad.factorize(..., method=...)``); by default a step
that would increase the loss is rejected and solved again with Levenberg–Marquardt damping on the same
factorisation (the safeguard; see docs/optim.md for the rule and the precision floor of λ).

Two ways to call a step:

* ``step(forward, loss)``: ``forward(params)`` maps a dict ``{name: tensor}`` of the optimizer's parameters to
  the model outputs z on the batch (build it with `NGD.functional`, or with ``torch.func.functional_call``
  when the optimizer was given ``model.named_parameters()``); ``loss(z)`` returns a scalar.
  ``step(residual_fn)`` alone minimises ½‖r‖² with the Euclidean metric (Gauss–Newton). A ``forward`` with a
  ``linearize(params)`` method (``natgrad.pde.Problem``) is differentiated through the linear map it returns,
  which has the same value and Jacobian at θ; trial points of the line search still evaluate ``forward``.
* ``step(closure)``, torch-style (``closure()`` zeroes the grads, computes the loss, calls ``backward()`` and
  returns the loss), for an optimizer built with `NGD.from_module` and an explicit ``metric``: a forward hook
  captures the module's one call inside the closure (inputs, outputs z₀) and a tensor hook ∇_z L(z₀); the
  step is v = (JᵀgJ)⁻ Jᵀ∇_z L with J from that call (the closure's own ``backward()`` sets ``p.grad``).

The step itself is computed by the functional core (`natgrad.optim._core.ngd_step`); this class holds the
state and applies the update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import torch
from torch.func import functional_call

from ._checkpoint import check_state_dict
from ._closure import OutputGradientLoss, is_closure, run_closure
from ._core import Factorize, StepProblem, StepSettings, StepState, engine_factorize, ngd_step
from ._damping import LevenbergMarquardt
from ._line_search import GridSearch, LineSearch, default_grid, resolve_line_search
from ._losses import LeastSquares
from ._routing import ModuleCall, note_call

_GROUP_KEYS = {"params", "param_names", "lr", "momentum"}


class NGD(torch.optim.Optimizer):
    """Natural gradient descent with exact (engine) directions.

    Args:
        params: parameters or parameter groups, as for any torch optimizer (``model.parameters()``,
            ``model.named_parameters()``, or dicts with ``"params"`` and optional ``"lr"``, ``"momentum"``).
        lr: step length multiplying the natural gradient (1 = full Gauss–Newton step).
        damping: λ ≥ 0; λ > 0 uses (G + λI)⁻¹ instead of a generalized inverse.
        adaptive_damping: adapt λ by the Levenberg–Marquardt rule (needs λ > 0); a step that increases
            the loss is then rejected (parameters unchanged, λ grows). λ never falls below
            max(rule minimum, eps·tr(sG)), eps of the model's dtype (the precision floor).
        damping_schedule: the `LevenbergMarquardt` rule (default boost 1.5, thresholds 1/4 and 3/4).
        safeguard: when λ is not adaptive and there is no line search (the default), run the
            Levenberg–Marquardt rule anyway but with
            λ = ``damping`` as its resting value: a step that increases the loss (or a non-finite one) is
            rejected (parameters unchanged) and λ grows — from 0 straight to the curvature along the gradient
            ∇ᵀ(sG)∇/‖∇‖² —, and after good steps λ shrinks back to ``damping`` (0: the generalized inverse
            again). Never in (0, eps·tr(sG)). On a problem whose damped steps run matrix-free (see
            ``method``) the first step starts at that curvature instead of a dense λ = 0 solve. False: plain
            steps, exactly as computed.
        line_search: None (α = 1), ``"grid"`` (best α on ``line_search_grid``), ``"backtracking"`` (Armijo),
            or a strategy object (`FullStep`, `GridSearch`, `Backtracking`). Both searches never accept a
            point with a larger loss (α = 0 then).
        line_search_grid: the grid factors (default 1, 1/2, …, 2⁻²⁹).
        momentum: μ ∈ [0, 1) for the dual-form momentum v = μ v_prev + G⁻(∇ − μ G v_prev).
        metric: ``"auto"`` (from the loss; Euclidean for residuals) or a natgrad metric object.
        inverse: generalized inverse for λ = 0 (default ``natgrad.MoorePenrose()``; for the Euclidean metric
            — Gauss–Newton on residuals — its cutoff is `natgrad.linalg.residual_rtol`, the measured rounding
            level of a float64 JᵀJ, instead of the engine's 10·min(r, d)·eps).
        mc_samples: k ≥ 1 for a Monte-Carlo Fisher from k sampled labels per example; None for the exact one.
        method: engine route (``"auto"``, ``"primal"``, ``"dual"``, ``"lstsq"``, ``"krylov"``, ...). With
            ``"auto"`` a damped step on a large module problem runs matrix-free (``"structured-krylov"``,
            certified to 1e-5 in float32, 1e-12 in float64; its preconditioner is reused by the next step
            on the same batch; see docs/optim.md), else ``auto`` chooses.
        seed: seed of the generator that draws Monte-Carlo labels (saved in ``state_dict``).
        factorize: the function that factorises G = JᵀgJ at θ for the step's solves (default
            `natgrad.optim.engine_factorize`, i.e. `natgrad.factorize`); its result needs
            ``solve(loss, inverse=...)``.
        residual_svd: for Gauss–Newton on float64 residuals with d ≤ r, ``method="auto"``, no ``inverse`` and
            no damping, solve by the thin SVD of J (route ``"lstsq"``) with the cutoff (10⁶·eps)²·λ_max on
            the eigenvalues σ² instead of eigh of JᵀJ with `natgrad.linalg.residual_rtol` (the nonlinear-phase
            fallback stays). Forming JᵀJ squares J's condition number; the SVD keeps directions 10⁵ times
            smaller accurately (see docs/pde.md for where it helps and where it does not). Elsewhere the step
            is the default one; ``last_step["method"]`` names the route taken.
        geodesic_acceleration: search along the curve θ(α) = θ − α d − ½α² a instead of the line θ − α d,
            with a = (JᵀgJ + λI)⁻¹ Jᵀ g D²φ[d, d] (the same inverse and factorisation as the step; one forward-
            over-forward second derivative of φ along d and one more solve): the second-order correction of
            the Levenberg–Marquardt step (geodesic acceleration), which lets the search keep far more of a step
            whose model bends within it. Needs ``line_search="grid"`` (or a `GridSearch`) and no adaptive
            damping; ``last_step["acceleration_ratio"]`` is ‖a‖ / ‖d‖.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1.0,
        *,
        damping: float = 0.0,
        adaptive_damping: bool = False,
        damping_schedule: LevenbergMarquardt | None = None,
        safeguard: bool = True,
        line_search: str | LineSearch | None = None,
        line_search_grid: tuple[float, ...] | None = None,
        momentum: float = 0.0,
        metric: Any = "auto",
        inverse: Any = None,
        mc_samples: int | None = None,
        method: str = "auto",
        seed: int = 0,
        factorize: Factorize | None = None,
        residual_svd: bool = False,
        geodesic_acceleration: bool = False,
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
        strategy = resolve_line_search(line_search, line_search_grid)
        if mc_samples is not None and not (isinstance(mc_samples, int) and mc_samples >= 1):
            raise ValueError(f"NGD: mc_samples must be None or an integer >= 1, got {mc_samples!r}")
        if isinstance(metric, str) and metric != "auto":
            raise ValueError(f"NGD: metric must be 'auto', None or a natgrad metric object, got {metric!r}")
        super().__init__(params, {"lr": lr, "momentum": momentum})
        self.damping = float(damping)
        self.resting_damping = float(damping)
        self.adaptive_damping = bool(adaptive_damping)
        self.safeguard = bool(safeguard)
        self.factorize: Factorize = engine_factorize if factorize is None else factorize
        self._line_search = strategy
        self._module: torch.nn.Module | None = None
        self.damping_schedule = damping_schedule or LevenbergMarquardt()
        self.line_search = line_search
        self.line_search_grid = tuple(line_search_grid) if line_search_grid else default_grid()
        self.metric = metric
        self.inverse = inverse
        self.mc_samples = mc_samples
        self.method = method
        if not isinstance(residual_svd, bool):
            raise TypeError(f"NGD: residual_svd must be True or False, got {residual_svd!r}")
        self.residual_svd = residual_svd
        if not isinstance(geodesic_acceleration, bool):
            raise TypeError(
                f"NGD: geodesic_acceleration must be True or False, got {geodesic_acceleration!r}"
            )
        if geodesic_acceleration and (not isinstance(strategy, GridSearch) or adaptive_damping):
            raise ValueError(
                "NGD: geodesic_acceleration searches along a curved path and needs line_search='grid' without "
                f"adaptive_damping (got line_search={line_search!r}, adaptive_damping={adaptive_damping}): the "
                "Armijo test and the damping rule's predicted reduction are for straight steps"
            )
        self.geodesic_acceleration = geodesic_acceleration
        self.seed = int(seed)
        self.steps_taken = 0
        self.last_step: dict[str, Any] = {}
        self._generator: torch.Generator | None = None
        self._generator_state: torch.Tensor | None = None
        # the matrix-free route's preconditioner, reused by the next step on the same batch (not saved:
        # a resumed optimizer builds a new one)
        self._preconditioner: Any = None

    @classmethod
    def from_module(cls, module: torch.nn.Module, lr: float = 1.0, **settings: Any) -> NGD:
        """An `NGD` over ``module.named_parameters()`` that also knows the module.

        Knowing the module enables the torch-style ``step(closure)`` (the step captures the module's call
        inside the closure with a forward hook); ``step(forward, loss)`` works as for any `NGD`, and
        parameter names are the module's, so ``torch.func.functional_call(module, p, (x,))`` is a forward.
        Frozen parameters (``requires_grad=False``) are left out.
        """
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"NGD.from_module: expected a torch.nn.Module, got {type(module).__name__}")
        named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("NGD.from_module: the module has no trainable parameters (requires_grad=True)")
        optimizer = cls(named, lr, **settings)
        optimizer._module = module
        return optimizer

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
            out = functional_call(
                model, {mapping[k]: v for k, v in params.items() if k in mapping}, args, kwargs
            )
            # a step listening learns that its forward is this module call (and may use the layer structure)
            note_call(ModuleCall(model, mapping, args, kwargs, out))
            return out

        return call

    # ------------------------------------------------------------------ the step
    def step(  # type: ignore[override]
        self,
        forward: Callable[..., Any] | None = None,
        loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        closure: Callable[[], Any] | None = None,
        search: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One natural gradient step; returns the loss before the step.

        Args:
            forward: ``params -> z`` (outputs on the batch, or the residual vector when ``loss`` is None);
                or a torch-style ``closure()`` (no arguments: zero the grads, compute the loss, call
                ``backward()``, return the loss) for an optimizer built with `NGD.from_module` and a given
                ``metric`` — see the module docstring for what that route computes.
            loss: ``z -> scalar``; None means ½‖z‖² with the Euclidean metric (Gauss–Newton on residuals).
            closure: the torch-style closure by keyword, as ``optimizer.step(closure=closure)`` (PyTorch
                Lightning's call).
            search: ``params -> z'`` whose loss the grid line search minimises instead of ``forward``'s, e.g.
                the residuals on held-out collocation points (``loss`` applies to its outputs too). The direction
                still comes from ``forward``; α = 0 when no grid factor lowers the search's loss below its
                value at θ. ``last_step`` then also reports ``search_loss`` and ``search_loss_after``, and
                ``loss_after`` is ``forward``'s loss after the step. Needs ``line_search="grid"`` (or a
                `GridSearch`) without adaptive damping.

        Raises:
            ValueError: the loss is not finite (the parameters are left unchanged).
            NGDStepError: the step cannot be computed or would make a parameter non-finite (parameters and
                optimizer state unchanged).
        """
        if closure is not None:
            if forward is not None or loss is not None:
                raise TypeError("NGD.step: pass either closure=... or forward (and loss), not both")
            forward = closure
        if search is not None:
            self._check_search(search, forward)
        if not callable(forward):
            raise TypeError(
                "NGD.step: expected forward, a callable params -> outputs (with a loss z -> scalar), or a "
                f"torch-style closure (); got {type(forward).__name__}"
            )
        if is_closure(forward):
            if loss is not None:
                raise TypeError(
                    "NGD.step: forward takes no arguments, so it looks like a torch-style closure, but a loss "
                    "was given too; pass step(closure) alone, or forward as params -> outputs with the loss"
                )
            return self._closure_step(forward)
        loss = LeastSquares() if loss is None else loss
        named = self.named_parameters()
        self._take_step(named, forward, loss, self._settings(), search)
        return torch.tensor(self.last_step["loss"], dtype=self._dtype(named), device=self._device(named))

    def _check_search(self, search: Any, forward: Any) -> None:
        """``search`` needs a callable, a forward with arguments and a grid search without adaptive damping."""
        if not callable(search):
            raise TypeError(
                f"NGD.step: search must be a callable params -> outputs (e.g. residuals on held-out points), "
                f"got {type(search).__name__}"
            )
        if not isinstance(self._line_search, GridSearch) or self.adaptive_damping:
            raise ValueError(
                "NGD.step: search=... replaces the loss a grid line search compares and needs "
                f"line_search='grid' without adaptive_damping (got line_search={self.line_search!r}, "
                f"adaptive_damping={self.adaptive_damping}); the Armijo test and the damping rule compare the "
                "step's own loss with its quadratic model"
            )
        if callable(forward) and is_closure(forward):
            raise TypeError(
                "NGD.step: search=... needs forward as params -> outputs; a torch-style closure has no "
                "parameters to evaluate the search at"
            )

    def _settings(self) -> StepSettings:
        return StepSettings(
            resting_damping=self.resting_damping,
            adaptive_damping=self.adaptive_damping,
            safeguard=self.safeguard,
            damping_rule=self.damping_schedule,
            line_search=self._line_search,
            metric=self.metric,
            inverse=self.inverse,
            mc_samples=self.mc_samples,
            method=self.method,
            residual_svd=self.residual_svd,
            geodesic_acceleration=self.geodesic_acceleration,
        )

    def _take_step(
        self,
        named: dict[str, torch.Tensor],
        forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        loss: Callable[[torch.Tensor], torch.Tensor],
        settings: StepSettings,
        search: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    ) -> None:
        """Run the functional core, then apply its update and store its state (nothing before it returns)."""
        for index, group in enumerate(self.param_groups):  # a scheduler or a user may have changed them
            try:
                _check_step_settings(group["lr"], group["momentum"])
            except ValueError as error:
                raise ValueError(f"NGD.step: parameter group {index}: {error}; nothing was changed") from None
        theta = {name: p.detach() for name, p in named.items()}
        state = StepState(self.damping, self._momentum_buffers(named), self._preconditioner, self.steps_taken)
        problem = StepProblem(
            forward,
            theta,
            loss,
            self._group_settings(named, "lr"),
            self._group_settings(named, "momentum"),
            self._mc_generator(next(iter(theta.values()))),
            search,
        )
        outcome = ngd_step(state, problem, settings, self.factorize)
        with torch.no_grad():
            for name, p in named.items():
                if outcome.update is not None:
                    p.sub_(outcome.update[name].to(p.dtype))
                if name in outcome.state.momentum:
                    self.state[p]["momentum_buffer"] = outcome.state.momentum[name]
        self.damping = outcome.state.damping
        self._preconditioner = outcome.state.preconditioner
        self.steps_taken += 1
        self.last_step = outcome.info

    def _closure_step(self, closure: Callable[[], Any]) -> torch.Tensor:
        module = self._module
        if module is None:
            raise TypeError(
                "NGD.step(closure): a torch-style closure gives only the loss, and the natural gradient needs "
                "the model's outputs; build the optimizer with NGD.from_module(model, ...) so the step can "
                "capture the model's call, or call step(forward, loss) with forward = lambda p: "
                "torch.func.functional_call(model, p, (x,)) and a natgrad.optim loss"
            )
        if isinstance(self.metric, str) or self.adaptive_damping or self.line_search is not None:
            raise ValueError(
                "NGD.step(closure): a closure gives the loss only through its gradient at the outputs, so the "
                "step needs metric=<a natgrad metric> (e.g. natgrad.metrics.Categorical() for cross-entropy, "
                "Euclidean() for squared error) and cannot evaluate trial points (no line_search, no "
                "adaptive_damping); got "
                f"metric={self.metric!r}, line_search={self.line_search!r}, "
                f"adaptive_damping={self.adaptive_damping}; or call step(forward, loss) for those"
            )
        captured = run_closure(module, closure)
        named = self.named_parameters()

        def forward(params: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(module, params, captured.args, captured.kwargs)

        with torch.no_grad():
            replay = forward({name: p.detach() for name, p in named.items()})
        if replay.shape != captured.output.shape or not torch.allclose(replay, captured.output):
            raise ValueError(
                "NGD.step(closure): re-evaluating the model's call gives other outputs than inside the "
                "closure (a train-mode Dropout or other randomness?); call model.eval() or fix the randomness"
            )
        settings = replace(self._settings(), safeguard=False)  # trial points would need the closure again
        loss = OutputGradientLoss(captured.loss, captured.output, captured.output_grad)
        self._take_step(named, forward, loss, settings)
        return captured.loss

    # ------------------------------------------------------------------ pieces of the step
    def _group_settings(self, named: dict[str, torch.Tensor], key: str) -> dict[str, float]:
        """The group setting ``key`` (``"lr"`` or ``"momentum"``) of every parameter, by name."""
        by_id = {id(p): float(group[key]) for group in self.param_groups for p in group["params"]}
        return {name: by_id[id(p)] for name, p in named.items()}

    def _momentum_buffers(self, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            name: self.state[p]["momentum_buffer"]
            for name, p in named.items()
            if p in self.state and "momentum_buffer" in self.state[p]
        }

    @staticmethod
    def _dtype(named: dict[str, torch.Tensor]) -> torch.dtype:
        return next(iter(named.values())).dtype

    @staticmethod
    def _device(named: dict[str, torch.Tensor]) -> torch.device:
        return next(iter(named.values())).device

    def _mc_generator(self, like: torch.Tensor) -> torch.Generator | None:
        if self.mc_samples is None:
            return None
        if self._generator is None:
            self._generator = torch.Generator(device=like.device)
            self._generator.manual_seed(self.seed)
            if self._generator_state is not None:
                self._generator.set_state(self._generator_state)
        return self._generator

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus the global state: damping, step count, generator, parameter shapes."""
        state = super().state_dict()
        generator = self._generator.get_state() if self._generator is not None else self._generator_state
        shapes = [list(p.shape) for group in self.param_groups for p in group["params"]]
        state["ngd"] = {
            "damping": self.damping,
            "steps_taken": self.steps_taken,
            "generator": generator,
            "shapes": shapes,
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state from `state_dict`, after checking that it is an NGD state for these parameters.

        Raises:
            ValueError: the state of another optimizer (no ``"ngd"`` entry), of another model (other group
                sizes or parameter shapes) or malformed; nothing is loaded then.
        """
        check_state_dict(state_dict, [[p.shape for p in group["params"]] for group in self.param_groups])
        state_dict = dict(state_dict)
        extra = state_dict.pop("ngd")
        super().load_state_dict(state_dict)
        self.damping = float(extra["damping"])
        self.steps_taken = int(extra["steps_taken"])
        self._generator_state = extra["generator"]
        self._generator = None
        self._preconditioner = None


def _check_step_settings(lr: Any, momentum: Any) -> None:
    if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"NGD: lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
        raise ValueError(f"NGD: momentum must be in [0, 1), got {momentum!r}")
