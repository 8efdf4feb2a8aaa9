"""Continuous flows ξ̇ = −G⁻∇ξ(L∘φ) and ξ̇ = −∇ξ(L∘φ), integrated with torchdiffeq (optional dependency)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

import natgrad as ng
from natgrad.flows._fields import cast_params, euclidean_direction, natural_direction, record
from natgrad.flows.trajectory import Trajectory

Tensor = torch.Tensor


def _odeint() -> Callable[..., Tensor]:
    try:
        from torchdiffeq import odeint
    except ImportError as err:  # optional dependency
        raise ImportError(
            "natgrad.flows: integrating a flow needs torchdiffeq, which is not installed; install the "
            "'experiments' extra (pip install 'natgrad[experiments]') or torchdiffeq itself"
        ) from err
    return odeint


def _times(name: str, t_eval: Sequence[float] | Tensor, like: Tensor) -> Tensor:
    times = torch.as_tensor(t_eval, dtype=like.dtype, device=like.device).reshape(-1)
    if times.numel() < 2:
        raise ValueError(f"{name}: t_eval must hold at least 2 times (start and end), got {times.numel()}")
    if not bool((times[1:] > times[:-1]).all()):
        raise ValueError(f"{name}: t_eval must be strictly increasing, got {times.tolist()}")
    return times


def _integrate(
    name: str,
    field: Callable[[Tensor], Tensor],
    y0: Tensor,
    t_eval: Sequence[float] | Tensor,
    rtol: float,
    atol: float,
    integrator: str,
    options: dict[str, Any] | None,
) -> tuple[Tensor, Tensor]:
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"{name}: rtol and atol must be > 0, got rtol={rtol}, atol={atol}")
    times = _times(name, t_eval, y0)
    odeint = _odeint()
    ys = odeint(lambda t, y: -field(y), y0, times, rtol=rtol, atol=atol, method=integrator, options=options)
    return times, ys.detach()


def natural_gradient_flow(
    phi: Callable[[Any], Tensor],
    params0: Any,
    loss: Callable[[Tensor], Tensor],
    metric: Any = None,
    inverse: Any = None,
    t_eval: Sequence[float] | Tensor = (0.0, 1.0),
    rtol: float = 1e-10,
    atol: float = 1e-12,
    integrator: str = "dopri5",
    dtype: torch.dtype | None = torch.float64,
    options: dict[str, Any] | None = None,
    route: str = "auto",
) -> Trajectory:
    """Integrate the natural gradient flow ξ̇ = −G(ξ)⁻ ∇ξ(L∘φ)(ξ), G = Jᵀ g J, with torchdiffeq.

    Every right-hand side is one call to :func:`natgrad.natural_gradient`. Along the flow the model point
    obeys ż = −Π^g_{im J} g⁻¹∇z L (theorem T4).

    Args:
        phi: parametrisation.
        params0: ξ(0), a Tensor or dict of Tensors.
        loss: L.
        metric: output metric g (default Euclidean).
        inverse: generalized inverse (default Moore–Penrose).
        t_eval: increasing times at which the trajectory is recorded; the first is the start time.
        rtol: relative tolerance of the adaptive ODE solver (torchdiffeq's; not the engine's eigenvalue cutoff).
        atol: absolute tolerance of the adaptive solver.
        integrator: the torchdiffeq solver, its ``method`` (``"dopri5"``, ``"dopri8"``, ``"rk4"``, ...).
        dtype: dtype of the integrated state (default float64; None keeps the parameters' dtype).
        options: extra torchdiffeq solver options (e.g. ``{"step_size": 0.01}`` for fixed-step methods).
        route: the engine's ``method`` for each natural gradient ("auto", "primal", "dual", "lstsq", "krylov").

    Returns:
        A :class:`Trajectory` with times, parameters, model points and losses.
    """
    metric = ng.metrics.Euclidean() if metric is None else metric
    inverse = ng.MoorePenrose() if inverse is None else inverse
    template = cast_params(params0, dtype)
    y0 = ng.flatten_params(template).detach()
    field = natural_direction(phi, template, loss, metric, inverse, route)
    times, ys = _integrate("natural_gradient_flow", field, y0, t_eval, rtol, atol, integrator, options)
    outputs, losses = record(phi, template, loss, ys)
    return Trajectory(times=times, params=ys, outputs=outputs, losses=losses)


def gradient_flow(
    phi: Callable[[Any], Tensor],
    params0: Any,
    loss: Callable[[Tensor], Tensor],
    t_eval: Sequence[float] | Tensor = (0.0, 1.0),
    rtol: float = 1e-10,
    atol: float = 1e-12,
    integrator: str = "dopri5",
    dtype: torch.dtype | None = torch.float64,
    options: dict[str, Any] | None = None,
) -> Trajectory:
    """Integrate the Euclidean gradient flow ξ̇ = −∇ξ(L∘φ)(ξ) = −Jᵀ∇z L with torchdiffeq.

    Args:
        phi: parametrisation.
        params0: ξ(0), a Tensor or dict of Tensors.
        loss: L.
        t_eval: increasing times at which the trajectory is recorded; the first is the start time.
        rtol: relative tolerance of the adaptive ODE solver (torchdiffeq's; not the engine's eigenvalue cutoff).
        atol: absolute tolerance of the adaptive solver.
        integrator: the torchdiffeq solver, its ``method`` (``"dopri5"``, ``"rk4"``, ...).
        dtype: dtype of the integrated state (default float64; None keeps the parameters' dtype).
        options: extra torchdiffeq solver options.

    Returns:
        A :class:`Trajectory`.
    """
    template = cast_params(params0, dtype)
    y0 = ng.flatten_params(template).detach()
    field = euclidean_direction(phi, template, loss)
    times, ys = _integrate("gradient_flow", field, y0, t_eval, rtol, atol, integrator, options)
    outputs, losses = record(phi, template, loss, ys)
    return Trajectory(times=times, params=ys, outputs=outputs, losses=losses)
