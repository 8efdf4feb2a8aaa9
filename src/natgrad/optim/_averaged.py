"""`AveragedGram`: an NGD factorize hook that solves with an exponential moving average of G = JᵀJ.

At step t (parameters θ_t, Jacobian J_t of the residuals) the hook keeps

    Ḡ_t = β Ḡ_{t−1} + (1 − β) J_tᵀ J_t,      Ḡ_0 = c·I,

and the step solves Ḡ_t v = ∇_t with the current gradient ∇_t = J_tᵀ ∇_z L (damped: (Ḡ_t + λI) v = ∇_t;
Moore–Penrose: the eigenvalues of Ḡ_t at or below rtol·λ_max count as zero). β = 0 with c = 0 is the exact
Gauss–Newton step. Where the Jacobian turns quickly from step to step — a curved valley of a PINN loss,
whose Gauss–Newton step leaves the region where the linearisation holds by orders of magnitude — the past
Gram matrices add curvature exactly along the directions whose J changes, so the step there is shorter and a
line search can take most of it. The average needs the d × d matrix: for d up to a few thousand.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.func import jacrev

import natgrad as ng
from natgrad._tree import flatten_params, unflatten_like

WORK = torch.float64


def _dense_jacobian(forward: Any, theta: dict[str, Tensor]) -> Tensor:
    """J = ∂z/∂θ (n × d, θ flattened in order): the one a linearised residual map holds, else by jacrev."""
    held = getattr(forward, "dense_jacobian", None)
    if isinstance(held, Tensor):
        return held
    flat = flatten_params(theta)
    return jacrev(lambda x: forward(unflatten_like(x, theta)).reshape(-1))(flat)


class AveragedGram:
    """Exponential moving average of the Gauss–Newton matrix across NGD steps (``NGD(factorize=...)``).

    Pass one instance to one optimizer: ``NGD(params, damping=1e-10, line_search="grid",
    factorize=AveragedGram(0.6))``. The average advances once per distinct θ (a second factorisation at the
    same parameters, e.g. a retry of the step, reuses it) and is not part of ``NGD.state_dict``.

    Args:
        decay: β ∈ [0, 1), the weight of the previous average.
        initial: c ≥ 0, the average before the first step is c·I (c > 0 damps the first steps by c·βᵗ; with
            c = 0 the first step is the Gauss–Newton step lengthened by 1/(1 − β), which the line search cuts).

    Raises:
        ValueError: β or c out of range; at a step, a metric other than Euclidean (residuals) or an inverse
            other than ``Damped`` / ``MoorePenrose``.
    """

    def __init__(self, decay: float = 0.6, initial: float = 0.0) -> None:
        if not (isinstance(decay, int | float) and 0 <= decay < 1):
            raise ValueError(f"AveragedGram: decay must be a number in [0, 1), got {decay!r}")
        if not (isinstance(initial, int | float) and math.isfinite(initial) and initial >= 0):
            raise ValueError(f"AveragedGram: initial must be a finite number >= 0, got {initial!r}")
        self.decay, self.initial = float(decay), float(initial)
        self.gram: Tensor | None = None  # Ḡ_t (d × d, float64)
        self.steps = 0
        self._theta: Tensor | None = None  # θ at which the average last advanced

    def __call__(
        self, forward: Any, theta: dict[str, Tensor], metric: Any, inverse: Any, method: str
    ) -> AveragedSolve:
        """Advance the average with J at θ (once per θ) and return its solver; ``method`` is not used."""
        if not isinstance(metric, ng.metrics.Euclidean):
            raise ValueError(
                f"AveragedGram: averages G = JᵀJ of residuals (Euclidean metric), got {type(metric).__name__}; "
                "use it with NGD.step(residual_fn) or a natgrad.pde.Problem"
            )
        jacobian = _dense_jacobian(forward, theta)
        flat = flatten_params(theta).detach()
        if self._theta is None or not torch.equal(flat, self._theta):
            wide = jacobian.to(WORK)
            d = wide.shape[1]
            previous = (
                self.initial * torch.eye(d, dtype=WORK, device=wide.device)
                if self.gram is None
                else self.gram
            )
            self.gram = self.decay * previous + (1 - self.decay) * (wide.T @ wide)
            self._theta, self.steps = flat.clone(), self.steps + 1
        assert self.gram is not None
        return AveragedSolve(forward, theta, jacobian, self.gram, inverse)


class AveragedSolve:
    """Solves Ḡ v = ∇ (or (Ḡ + λI) v = ∇) at one θ, with the gradient and pushforward of the current J."""

    def __init__(
        self, forward: Any, theta: dict[str, Tensor], jacobian: Tensor, gram: Tensor, inverse: Any
    ) -> None:
        self.forward, self.theta, self.jacobian, self.gram, self.inverse = (
            forward,
            theta,
            jacobian,
            gram,
            inverse,
        )

    def _direction(self, grad: Tensor, inverse: Any) -> tuple[Tensor, int]:
        d = self.gram.shape[0]
        if isinstance(inverse, ng.Damped):
            eye = torch.eye(d, dtype=WORK, device=grad.device)
            return torch.linalg.solve(self.gram + inverse.damping * eye, grad), d
        if inverse is None or isinstance(inverse, ng.MoorePenrose):
            rtol = (inverse or ng.MoorePenrose()).resolve_rtol(self.jacobian.dtype, *self.jacobian.shape)
            lam, vectors = torch.linalg.eigh(self.gram)
            keep = lam > rtol * lam[-1].clamp_min(0)
            kept = vectors[:, keep]
            return kept @ ((kept.T @ grad) / lam[keep]), int(keep.sum())
        raise ValueError(
            f"AveragedGram: the step's inverse must be natgrad.Damped or natgrad.MoorePenrose, got "
            f"{type(inverse).__name__}"
        )

    def solve(self, loss: Any, *, inverse: Any = None) -> ng.NaturalGradient:
        """v = Ḡ⁻∇ for ∇ = Jᵀ ∇_z L at the current θ (``inverse`` overrides the one of the step)."""
        z = self.forward(self.theta).detach().requires_grad_(True)
        value = loss(z)
        (grad_z,) = torch.autograd.grad(value, z)
        grad = self.jacobian.to(WORK).T @ grad_z.reshape(-1).to(WORK)
        direction, rank = self._direction(grad, self.inverse if inverse is None else inverse)
        dtype = self.jacobian.dtype
        pushforward = (self.jacobian.to(WORK) @ direction).to(dtype).reshape(z.shape)
        return ng.NaturalGradient(
            direction=unflatten_like(direction.to(dtype), self.theta),
            pushforward=pushforward,
            gradient=unflatten_like(grad.to(dtype), self.theta),
            rank=rank,
            method="primal",
            output=z.detach(),
            loss=value.detach(),
        )
