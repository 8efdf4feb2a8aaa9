"""A PDE as residuals on collocation points: conditions, the residual vector r(θ), its Jacobian, its linearisation.

A condition k holds points x_{k,1..N_k}, a weight w_k and a pointwise residual ρ_k(jet, x) (for example
Δu + f in the interior, u − g on the boundary, u − u₀ at t = 0). The residual vector of the problem is

    r(θ) = ( √(w_k / N_k) · ρ_k(u_θ; x_{k,i}) )_{k, i},     so  ½‖r‖² = Σ_k (w_k / 2) · mean_i ρ_k²,

the usual PINN loss. Gauss–Newton on r (natural gradient with the Euclidean metric on r) is the energy
natural gradient for linear PDEs. The Jacobian J = ∂r/∂θ (N × d) is built point by point — each row is
the parameter gradient of one point's residual, vectorised over points with ``vmap(jacrev(...))`` through the
network's forward-propagated derivatives — so it costs a small multiple of one gradient of the loss instead of
N backward passes through the whole batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import jacrev, vmap

from natgrad.models._affine import AffineMap

from ._network import Jet, Network, Params, _dims

PointResidual = Callable[[Jet, Tensor], Tensor]
KINDS = ("interior", "boundary", "initial")


@dataclass
class Condition:
    """Residuals ρ(jet, x) on a set of points.

    Args:
        kind: "interior", "boundary" or "initial" (used in messages and results).
        points: (N, D) collocation points.
        residual: ``(jet, points) -> (N,)``, e.g. ``lambda jet, x: jet.laplacian() + f(x)``. It must be
            pointwise — row i may depend only on point i (its jet and coordinates), not on a mean over the
            points — because the Jacobian is built one point at a time.
        weight: w > 0 in the loss (w/2)·mean ρ².
        laplacian_dims: coordinates of ``jet.laplacian()`` (default: all; the spatial ones for
            time-dependent problems).
        name: label (default: the kind).
    """

    kind: str
    points: Tensor
    residual: PointResidual
    weight: float = 1.0
    laplacian_dims: tuple[int, ...] | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"pde.Condition: kind must be one of {KINDS}, got {self.kind!r}")
        if not callable(self.residual):
            raise TypeError(
                f"pde.Condition({self.label!r}): residual must be a callable (jet, points) -> (N,), got "
                f"{type(self.residual).__name__}"
            )
        if not (isinstance(self.weight, int | float) and math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(
                f"pde.Condition({self.label!r}): weight must be a finite number > 0, got {self.weight!r}"
            )

    @property
    def label(self) -> str:
        """The name, or the kind when unnamed."""
        return self.name or self.kind


def interior(points: Tensor, residual: PointResidual, **options) -> Condition:
    """The PDE residual on interior collocation points (see `Condition`)."""
    return Condition("interior", points, residual, **options)


def boundary(points: Tensor, residual: PointResidual, **options) -> Condition:
    """A boundary-condition residual, e.g. ``lambda jet, x: jet.value - g(x)`` (see `Condition`)."""
    return Condition("boundary", points, residual, **options)


def initial(points: Tensor, residual: PointResidual, **options) -> Condition:
    """An initial-condition residual on points at t = 0 (see `Condition`)."""
    return Condition("initial", points, residual, **options)


class Problem:
    """A network and its residual conditions: r(θ), ½‖r‖², J = ∂r/∂θ and the linearisation at θ.

    A `Problem` is itself the residual map ``problem(params) -> r``: pass it to ``NGD.step(problem)`` (the
    optimizer uses `linearize` for the direction and ``problem`` itself for the line search) or call
    ``ng.natural_gradient(problem.linearize(params), params, loss)``.

    Args:
        network: the `Network` (or an ``nn.Module``, wrapped in one).
        conditions: one or more `Condition`; each needs at least one point.

    Raises:
        ValueError: no condition, a condition with no points, points of the wrong shape or not finite.
    """

    def __init__(self, network: Network | torch.nn.Module, conditions: Sequence[Condition]) -> None:
        self.network = network if isinstance(network, Network) else Network(network)
        conditions = list(conditions)
        if not conditions:
            raise ValueError(
                "pde.Problem: no conditions given; pass at least one pde.interior(...) condition"
            )
        for c in conditions:
            if not isinstance(c, Condition):
                raise TypeError(
                    f"pde.Problem: conditions must be pde.Condition objects, got {type(c).__name__}"
                )
            self.check_points(c, c.points)
        self.conditions = conditions

    def check_points(self, condition: Condition, points: Tensor) -> None:
        """Raise ValueError unless ``points`` suit ``condition``: (N ≥ 1, input_dim), finite."""
        call = f"pde.Problem: condition {condition.label!r}"
        self.network.check_points(call, points)
        if points.shape[0] == 0:
            raise ValueError(
                f"{call} has no points (shape {tuple(points.shape)}); every condition needs at least one "
                "collocation point (an empty boundary set leaves the solution undetermined)"
            )

    def set_points(self, label: str, points: Tensor) -> None:
        """Replace the points of the condition called ``label`` (resampling), with the same checks."""
        for c in self.conditions:
            if c.label == label:
                self.check_points(c, points)
                c.points = points
                return
        raise KeyError(
            f"pde.Problem.set_points: no condition {label!r}; have {[c.label for c in self.conditions]}"
        )

    def held_out(self) -> Problem:
        """The same network and conditions on points of its own: `set_points` on either leaves the other's.

        For a loss the step does not fit, e.g. ``NGD.step(problem, search=held)`` with ``held`` given other
        points (``Resampler.update(held, ...)``); it starts on this problem's points.
        """
        return Problem(self.network, [dataclasses.replace(c) for c in self.conditions])

    @property
    def num_residuals(self) -> int:
        """N = Σ_k N_k."""
        return sum(c.points.shape[0] for c in self.conditions)

    def _condition_residual(self, c: Condition, params: Params, points: Tensor) -> Tensor:
        jet = Jet(
            self.network, params, points, _dims("pde.Problem", c.laplacian_dims, self.network.input_dim)
        )
        out = c.residual(jet, points)
        if not isinstance(out, Tensor) or out.shape != (points.shape[0],):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"pde.Problem: the residual of condition {c.label!r} returned {got}, expected one value per "
                f"point, shape ({points.shape[0]},); return e.g. jet.laplacian() + f(x) with f(x) of shape (N,)"
            )
        return out

    def residuals(self, params: Params) -> Tensor:
        """r(θ) = (√(w_k/N_k) ρ_k(x_{k,i}))_{k,i}, shape (N,)."""
        parts = [
            self._condition_residual(c, params, c.points) * math.sqrt(c.weight / c.points.shape[0])
            for c in self.conditions
        ]
        return torch.cat(parts)

    __call__ = residuals

    def _check_finite(self, r: Tensor) -> None:
        """Raise naming the first condition whose residual is NaN or inf at θ (nothing is linearised on it)."""
        start = 0
        for c in self.conditions:
            part = r[start : start + c.points.shape[0]]
            start += c.points.shape[0]
            bad = ~torch.isfinite(part)
            if bool(bad.any()):
                first = c.points[int(bad.nonzero()[0, 0])].tolist()
                raise ValueError(
                    f"pde.Problem.linearize: the residual of condition {c.label!r} is NaN or inf at "
                    f"{int(bad.sum())} of {part.numel()} point(s) (the first at x = {first}); check the source "
                    "terms and data the residual uses there"
                )

    def loss(self, params: Params) -> Tensor:
        """½‖r(θ)‖² = Σ_k (w_k/2) mean_i ρ_k²."""
        return 0.5 * self.residuals(params).pow(2).sum()

    def jacobian(self, params: Params, chunk_size: int | None = None) -> Tensor:
        """J = ∂r/∂θ (N × d, parameters flattened in ``params`` order), one row per point.

        Args:
            params: θ.
            chunk_size: points per vectorised batch (memory control; default: all at once).
        """
        params = {k: v.detach() for k, v in params.items()}
        d = sum(v.numel() for v in params.values())
        # rows written in place, scaled as they are copied: one pass over J instead of three (cat, scale, cat)
        out: Tensor | None = None
        start = 0
        for c in self.conditions:

            def one(p: Params, x: Tensor, c: Condition = c) -> Tensor:
                return self._condition_residual(c, p, x.unsqueeze(0)).squeeze(0)

            rows = vmap(jacrev(one), in_dims=(None, 0), chunk_size=chunk_size)(params, c.points)
            n, col = c.points.shape[0], 0
            scale = math.sqrt(c.weight / n)
            if out is None:
                some = next(iter(rows.values()))
                out = torch.empty(self.num_residuals, d, dtype=some.dtype, device=some.device)
            for k, v in params.items():
                block = out[start : start + n, col : col + v.numel()]
                torch.mul(rows[k].reshape(n, -1), scale, out=block)
                col += v.numel()
            start += n
        assert out is not None  # a Problem has at least one condition
        return out

    def linearize(self, params: Params, memory_budget: int | None = 2**30) -> Callable[[Params], Tensor]:
        """The residual map linearised at θ₀ = ``params``: θ ↦ r(θ₀) + J (θ − θ₀), with J materialised.

        Its value and Jacobian at θ₀ are those of r, so every natural gradient computed from it at θ₀ is the
        natural gradient of r — with J built point by point once, instead of from N (or d) products with the
        whole residual map. When J (N·d entries) would exceed ``memory_budget`` bytes the residual map itself
        is returned: its J·v and Jᵀ·u are one forward and one backward pass, which is what the matrix-free
        route needs.
        """
        params = {k: v.detach() for k, v in params.items()}
        d = sum(v.numel() for v in params.values())
        itemsize = next(iter(params.values())).element_size()
        if memory_budget is not None and self.num_residuals * d * itemsize > memory_budget:
            return self.residuals
        r0 = self.residuals(params).detach()
        self._check_finite(r0)
        return LinearisedResiduals(r0, self.jacobian(params), params)


class LinearisedResiduals(AffineMap):
    """θ ↦ r₀ + J (θ − θ₀), the residual map linearised at θ₀, with its Jacobian J at hand.

    ``dense_jacobian`` is J (N × d, parameters flattened in θ₀'s order). As an `AffineMap` it is its own
    Jacobian by construction: natgrad's engine takes J and r₀ as they are, with no product to form or check.
    """

    @property
    def r0(self) -> Tensor:
        """r(θ₀), shape (N,)."""
        return self.z0
