"""Gradient descent and natural gradient descent on a linear parametrisation: steps and flows.

For a parametrisation ``w(θ)`` (:mod:`natgrad.linear.parametrisations`) and a :class:`FisherSite`
(:mod:`natgrad.linear.fisher`) with readout ``z = ρ(w)`` and loss ``L(z)``:

* GD direction: ``∇θ (L∘ρ∘w)(θ)``;
* NGD direction: ``v = G⁺ ∇θ(L∘ρ∘w)``, ``G = Jᵀ g(z) J``, ``J = ∂(ρ∘w)/∂θ``, computed by
  ``ng.natural_gradient(phi, params, L, metric=g, inverse=ng.MoorePenrose())`` with ``phi = ρ∘w``.

Discrete steps are ``θ ← θ − η·direction``; flows solve ``θ̇ = −direction(θ)`` with torchdiffeq (optional
extra). Long horizons use log time: for ``t ≥ t₁ > 0`` the flow is integrated in ``s = log t`` as
``dθ/ds = −t·direction(θ)``, so that ``t`` up to ``1e8`` costs as much as a few decades of ``t``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

import natgrad as ng

from .fisher import FisherSite
from .parametrisations import LinearParametrisation

METHODS = ("gd", "ngd")
"""The ``method`` names: gradient descent and natural gradient descent."""


def _phi(model: LinearParametrisation, site: FisherSite):
    return lambda params: site.readout(model.end_to_end(params))


def _check_method(name: str, method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"{name}: method must be one of {METHODS}, got {method!r}")


def direction(
    model: LinearParametrisation,
    site: FisherSite,
    params: dict[str, Tensor],
    method: str = "ngd",
    inverse=None,
) -> dict[str, Tensor]:
    """The descent direction at ``params``: ``∇θL`` (``"gd"``) or ``G⁻∇θL`` (``"ngd"``, Moore–Penrose).

    The loss is taken through the site: ``L(ρ(w(θ)))``, so GD does not depend on where the Fisher is taken.
    """
    _check_method("direction", method)
    phi = _phi(model, site)
    if method == "ngd":
        inverse = ng.MoorePenrose() if inverse is None else inverse
        metric = site.metric_at(phi(params)) if site.factor is not None else site.metric
        return ng.natural_gradient(phi, params, site.loss, metric=metric, inverse=inverse).direction
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    value = site.loss(phi(leaves))
    grads = torch.autograd.grad(value, list(leaves.values()))
    return dict(zip(leaves.keys(), grads, strict=True))


def step(
    model: LinearParametrisation,
    site: FisherSite,
    params: dict[str, Tensor],
    lr: float,
    method: str = "ngd",
    inverse=None,
) -> dict[str, Tensor]:
    """One discrete step ``θ ← θ − lr·direction(θ)``; returns new detached parameters."""
    move = direction(model, site, params, method, inverse)
    return {k: (params[k] - lr * move[k]).detach().requires_grad_(True) for k in params}


@dataclass(frozen=True)
class Trajectory:
    """End-to-end predictors along a run.

    Attributes:
        times: checkpoint times (flow time, or ``step·lr`` for discrete runs), shape (T,).
        w: end-to-end predictors at the checkpoints, shape (T, d).
        params: the parameters at the last checkpoint.
    """

    times: Tensor
    w: Tensor
    params: dict[str, Tensor]


def descend(
    model: LinearParametrisation,
    site: FisherSite,
    lr: float,
    steps: int,
    method: str = "ngd",
    *,
    record: Sequence[int] | None = None,
    inverse=None,
    params: dict[str, Tensor] | None = None,
) -> Trajectory:
    """``steps`` discrete steps from the model's parameters; records ``w`` after the steps in ``record``.

    ``record`` defaults to ``[0, steps]``; step 0 is the initial point. Times are ``k·lr``.
    """
    _check_method("descend", method)
    if steps < 0 or lr <= 0:
        raise ValueError(f"descend: need steps >= 0 and lr > 0, got steps={steps}, lr={lr}")
    record = sorted(set([0, steps] if record is None else record))
    if record[0] < 0 or record[-1] > steps:
        raise ValueError(f"descend: record entries must lie in [0, {steps}], got {record[0]}..{record[-1]}")
    params = model.params() if params is None else params
    wanted, ws = set(record), []
    for k in range(steps + 1):
        if k in wanted:
            ws.append(model.end_to_end(params).detach())
        if k < steps:
            params = step(model, site, params, lr, method, inverse)
    times = torch.tensor([k * lr for k in record], dtype=torch.float64)
    return Trajectory(times, torch.stack(ws), params)


def flow(
    model: LinearParametrisation,
    site: FisherSite,
    times: Sequence[float],
    method: str = "ngd",
    *,
    log_time: bool = False,
    rtol: float = 1e-9,
    atol: float = 1e-11,
    inverse=None,
    solver: str = "dopri5",
) -> Trajectory:
    """Solve ``θ̇ = −direction(θ)`` from the model's parameters at ``times[0]`` and record ``w`` at ``times``.

    Args:
        times: increasing checkpoint times, the first being the start.
        log_time: integrate in ``s = log t`` beyond the first positive checkpoint (``dθ/ds = −t·direction``).
        rtol: torchdiffeq's relative tolerance.
        atol: torchdiffeq's absolute tolerance.
    """
    _check_method("flow", method)
    try:
        from torchdiffeq import odeint
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("flow: needs torchdiffeq (pip install 'natgrad[experiments]')") from err
    times = [float(t) for t in times]
    if len(times) < 2 or any(b <= a for a, b in zip(times[:-1], times[1:], strict=True)):
        raise ValueError(f"flow: times must be increasing with at least two entries, got {times}")
    template = model.params()
    flat0 = ng.flatten_params(template).detach()

    def velocity(theta: Tensor) -> Tensor:
        params = ng.unflatten_like(theta, template)
        params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        return -ng.flatten_params(direction(model, site, params, method, inverse)).detach()

    def linear_rhs(t: Tensor, theta: Tensor) -> Tensor:
        return velocity(theta)

    def log_rhs(s: Tensor, theta: Tensor) -> Tensor:
        return torch.exp(s) * velocity(theta)

    grid = torch.tensor(times, dtype=flat0.dtype, device=flat0.device)
    positive = [k for k, t in enumerate(times) if t > 0]
    if not log_time or len(positive) == 0 or positive[0] == len(times) - 1:
        states = odeint(linear_rhs, flat0, grid, rtol=rtol, atol=atol, method=solver)
    else:
        first = positive[0]
        head = odeint(linear_rhs, flat0, grid[: first + 1], rtol=rtol, atol=atol, method=solver)
        log_grid = torch.log(grid[first:])
        tail = odeint(log_rhs, head[-1], log_grid, rtol=rtol, atol=atol, method=solver)
        states = torch.cat([head, tail[1:]])
    ws = torch.stack([model.end_to_end(ng.unflatten_like(s, template)).detach() for s in states])
    final = {k: v.detach().requires_grad_(True) for k, v in ng.unflatten_like(states[-1], template).items()}
    return Trajectory(grid.to(torch.float64).cpu(), ws, final)


def end_to_end_velocity(
    model: LinearParametrisation,
    site: FisherSite,
    params: dict[str, Tensor] | None = None,
    method: str = "ngd",
) -> Tensor:
    """``ẇ = −J_w v``: the end-to-end velocity induced by the parameter direction ``v`` (``J_w = ∂w/∂θ``)."""
    params = model.params() if params is None else params
    move = ng.flatten_params(direction(model, site, params, method))
    tangent = torch.func.jvp(model.end_to_end, (params,), (ng.unflatten_like(-move, params),))[1]
    return tangent.detach()


def jacobian_rank(model: LinearParametrisation, params: dict[str, Tensor] | None = None) -> int:
    """Numerical rank of ``J = ∂w/∂θ`` (materialised; default cutoff of ``torch.linalg.matrix_rank``)."""
    params = model.params() if params is None else params
    return int(torch.linalg.matrix_rank(ng.jacobian(model.end_to_end, params)))


def margins(X: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """Margins ``m_i = y_i x_iᵀw`` (``w`` of shape (d,) or (T, d) → (n,) or (T, n))."""
    return (X @ w.T).T * y if w.ndim == 2 else y * (X @ w)


def normalised_margin(X: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """Normalised margin ``min_i y_i x_iᵀw / ‖w‖`` of the direction of ``w`` ((d,) → scalar, (T, d) → (T,)).

    The ℓ2 SVM direction maximises it (its value there is ``1/‖w_svm‖``); a direction is max-margin exactly
    when its normalised margin equals the SVM's. Negative when the direction misclassifies a point.
    """
    norms = w.norm(dim=-1)
    if torch.any(norms == 0):
        raise ValueError("normalised_margin: w = 0 has no direction; pass nonzero predictors")
    return margins(X, y, w).min(dim=-1).values / norms


def training_fisher_margin(m0: Tensor, t: Tensor | float) -> Tensor:
    """Closed form of a margin under training-Fisher logistic NGF with J of full row rank (n ≤ d).

    Each margin obeys ``ṁ = 1/σ(m)``, i.e. ``log(1 + e^{m(t)}) = log(1 + e^{m(0)}) + t``; solved stably as
    ``m = c + log(−expm1(−c))`` with ``c = softplus(m(0)) + t``.
    """
    c = torch.nn.functional.softplus(torch.as_tensor(m0)) + t
    return c + torch.log(-torch.expm1(-c))


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """``⟨a, b⟩/(‖a‖‖b‖)`` along the last axis."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


__all__ = [
    "METHODS",
    "Trajectory",
    "cosine",
    "descend",
    "direction",
    "end_to_end_velocity",
    "flow",
    "jacobian_rank",
    "margins",
    "normalised_margin",
    "step",
    "training_fisher_margin",
]
