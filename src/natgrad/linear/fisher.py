"""Where the Fisher is taken: the metric and the point it acts on, for the natural gradient of a linear model.

The training loss is the negative log-likelihood of the n training pairs ``(x_i, y_i)`` (rows of ``X``):

* logistic, ``y_i ∈ {−1, +1}``: ``L(w) = Σ_i log(1 + exp(−y_i x_iᵀw))``;
* squared: ``L(w) = ½ Σ_i (x_iᵀw − y_i)²`` (a unit-variance Gaussian likelihood).

A :class:`FisherSite` says on which outputs ``z = readout(w)`` the metric ``g(z)`` lives; the natural gradient
of a parametrisation ``w(θ)`` is then ``v = G⁺ ∇θ L`` with ``G = Jᵀ g J`` and ``J = ∂ readout(w(θ))/∂θ``:

* :func:`training_fisher` — ``z = Xw`` (training logits), ``g = diag σ(z)σ(−z)`` (logistic) or ``g = I``
  (squared): ``G = Σ_i σ′(x_iᵀw) ∇θ(x_iᵀw) ∇θ(x_iᵀw)ᵀ``. Only the training outputs become depth-invariant.
* :func:`population_fisher` — ``z = w``, ``g = n·E_x[σ′(xᵀw) x xᵀ]`` for ``x ~ N(0, I)``, in closed form
  ``n[a(r)(I − ŵŵᵀ) + b(r)ŵŵᵀ]`` (:func:`logistic_population_fisher`), or the same expectation over a large
  fixed sample; ``n·I`` for the squared loss. Full support: the whole predictor ``w`` becomes invariant.
* :func:`empirical_fisher` — ``z = Xw``, ``g = diag(ℓ′_i(z_i)²)``, i.e. ``G = Σ_i ∇θℓ_i ∇θℓ_iᵀ`` (gradient
  outer products). **Not a true Fisher**: it depends on the labels and vanishes as the fit improves.

The factor n makes every choice the Fisher of the same n-sample likelihood, so times are comparable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.functional import softplus

import natgrad as ng
from natgrad.linear.data import check_design

LOSSES = ("logistic", "squared")


@dataclass(frozen=True)
class FisherSite:
    """A choice of where the Fisher is taken.

    Attributes:
        name: ``"training"``, ``"population"``, ``"population-sample"`` or ``"empirical"``.
        readout: ``w ↦ z``, the point where the metric lives (``Xw`` or ``w``).
        loss: ``z ↦ L``, the training loss written as a function of ``z``.
        metric: the output-space metric ``g(z)`` passed to ``ng.natural_gradient``.
        true_fisher: False for the empirical Fisher (gradient outer products).
        factor: optional ``z ↦ B(z)`` with ``B Bᵀ = g(z)`` in closed form; when given, :meth:`metric_at`
            hands the engine ``ng.metrics.Factor(B(z))`` (the same metric, no eigendecomposition).
    """

    name: str
    readout: Callable[[Tensor], Tensor]
    loss: Callable[[Tensor], Tensor]
    metric: Any
    true_fisher: bool = True
    factor: Callable[[Tensor], Tensor] | None = None

    def metric_at(self, z: Tensor) -> Any:
        """The metric to use at the point ``z`` (the closed-form factor when there is one)."""
        if self.factor is None:
            return self.metric
        return ng.metrics.Factor(self.factor(z.detach()))


def _check_data(name: str, X: Tensor, y: Tensor, loss: str) -> None:
    check_design(name, X, y)
    if loss not in LOSSES:
        raise ValueError(f"{name}: loss must be one of {LOSSES}, got {loss!r}")


def training_loss(X: Tensor, y: Tensor, loss: str = "logistic") -> Callable[[Tensor], Tensor]:
    """``w ↦ L(w)``: ``Σ softplus(−y_i x_iᵀw)`` (logistic, stable for large margins) or ``½‖Xw − y‖²``."""
    _check_data("training_loss", X, y, loss)
    if loss == "logistic":
        return lambda w: softplus(-y * (X @ w)).sum()
    return lambda w: 0.5 * ((X @ w - y) ** 2).sum()


def _logit_loss(y: Tensor, loss: str) -> Callable[[Tensor], Tensor]:
    if loss == "logistic":
        return lambda z: softplus(-y * z).sum()
    return lambda z: 0.5 * ((z - y) ** 2).sum()


def training_fisher(X: Tensor, y: Tensor, loss: str = "logistic") -> FisherSite:
    """Fisher on the training inputs: ``z = Xw`` with the Bernoulli metric ``diag σ(z)σ(−z)`` or ``I``."""
    _check_data("training_fisher", X, y, loss)
    metric = ng.metrics.Bernoulli() if loss == "logistic" else ng.metrics.Euclidean()
    return FisherSite("training", lambda w: X @ w, _logit_loss(y, loss), metric)


def empirical_fisher(X: Tensor, y: Tensor, loss: str = "logistic") -> FisherSite:
    """Empirical Fisher ``Σ_i ∇ℓ_i∇ℓ_iᵀ``: ``z = Xw``, ``g = diag(ℓ′_i(z_i)²)`` — not a true Fisher."""
    _check_data("empirical_fisher", X, y, loss)

    def weights(z: Tensor) -> Tensor:
        z = z.reshape(-1)
        # ℓ′ = −y σ(−y z) (logistic) or z − y (squared)
        slope = -y * torch.sigmoid(-y * z) if loss == "logistic" else z - y
        return torch.diag(slope**2)

    return FisherSite(
        "empirical",
        lambda w: X @ w,
        _logit_loss(y, loss),
        ng.metrics.PointDependent(weights),
        true_fisher=False,
    )


def logistic_population_coefficients(r: Tensor | float, *, points: int = 4001) -> tuple[Tensor, Tensor]:
    """``a(r) = E[σ′(rz)]`` and ``b(r) = E[σ′(rz) z²]`` for ``z ~ N(0, 1)``, ``σ′(u) = σ(u)σ(−u)``.

    Computed by the trapezoid rule in ``u = rz`` (``a = ∫σ′(u) φ(u/r) du / r``,
    ``b = ∫σ′(u) u² φ(u/r) du / r³``) on ``|u| ≤ min(60, 14 r)`` with ``points`` nodes. Both integrands are
    analytic and decay exponentially, so the rule converges geometrically; it stays accurate for large r,
    where ``a ≈ 1/(r√(2π))`` and ``b ≈ π²/(3 r³ √(2π))``. ``r = 0`` gives ``a = b = 1/4``.
    """
    r = torch.as_tensor(r)
    dtype = r.dtype if r.dtype.is_floating_point else torch.float64
    r = r.to(dtype)
    if torch.any(r < 0):
        raise ValueError(f"logistic_population_coefficients: r must be >= 0, got {r}")
    if float(r.max()) <= 0:
        quarter = torch.full_like(r, 0.25)
        return quarter, quarter
    r_safe = r.clamp(min=1e-300)
    half = torch.minimum(torch.full_like(r_safe, 60.0), 14.0 * r_safe)
    s = torch.linspace(-1.0, 1.0, points, dtype=dtype, device=r.device)
    u = half[..., None] * s  # (..., points)
    du = half * (2.0 / (points - 1))
    sig = torch.sigmoid(u) * torch.sigmoid(-u)
    dens = torch.exp(-0.5 * (u / r_safe[..., None]) ** 2) / math.sqrt(2 * math.pi)
    weights = torch.ones(points, dtype=dtype, device=r.device)
    weights[0] = weights[-1] = 0.5
    a = (sig * dens * weights).sum(-1) * du / r_safe
    b = (sig * dens * u**2 * weights).sum(-1) * du / r_safe**3
    small = r <= 0
    return torch.where(small, torch.full_like(a, 0.25), a), torch.where(small, torch.full_like(b, 0.25), b)


def logistic_population_fisher(w: Tensor) -> Tensor:
    """``E_x[σ′(xᵀw) x xᵀ] = a(r)(I − ŵŵᵀ) + b(r)ŵŵᵀ`` for ``x ~ N(0, I)``, ``r = ‖w‖``, ``ŵ = w/r``.

    (Write ``x = zŵ + x⊥`` with ``z ~ N(0,1)`` independent of ``x⊥ ~ N(0, I − ŵŵᵀ)``.)
    """
    if not isinstance(w, Tensor) or w.ndim != 1:
        raise ValueError(f"logistic_population_fisher: w must be a 1-D tensor, got {getattr(w, 'shape', w)}")
    w = w.detach()
    r = w.norm()
    eye = torch.eye(w.numel(), dtype=w.dtype, device=w.device)
    a, b = logistic_population_coefficients(r)
    if float(r) == 0.0:
        return a * eye
    w_hat = w / r
    outer = torch.outer(w_hat, w_hat)
    return a * (eye - outer) + b * outer


def logistic_population_factor(w: Tensor) -> Tensor:
    """The symmetric square root ``√a(r)(I − ŵŵᵀ) + √b(r)ŵŵᵀ`` of :func:`logistic_population_fisher`."""
    w = w.detach().reshape(-1)
    r = w.norm()
    eye = torch.eye(w.numel(), dtype=w.dtype, device=w.device)
    a, b = logistic_population_coefficients(r)
    if float(r) == 0.0:
        return a.sqrt() * eye
    w_hat = w / r
    outer = torch.outer(w_hat, w_hat)
    return a.sqrt() * (eye - outer) + b.sqrt() * outer


def population_fisher(
    X: Tensor, y: Tensor, loss: str = "logistic", *, sample: Tensor | None = None
) -> FisherSite:
    """Population Fisher of n samples with ``x ~ N(0, I)``: ``z = w`` and ``g(w) = n·E_x[σ′(xᵀw) x xᵀ]``.

    Args:
        X: training inputs (n, d); the loss is the training loss written as a function of ``w``.
        y: training labels (n,).
        loss: ``"logistic"`` (closed form :func:`logistic_population_fisher`) or ``"squared"`` (``g = n·I``).
        sample: optional fixed ``(N, d)`` sample standing in for the population: ``g = (n/N) Σ_k σ′(x_kᵀw)
            x_k x_kᵀ`` (logistic) or ``(n/N) Σ_k x_k x_kᵀ`` (squared).
    """
    _check_data("population_fisher", X, y, loss)
    n, d = X.shape
    if sample is not None and (sample.ndim != 2 or sample.shape[1] != d):
        raise ValueError(
            f"population_fisher: sample must have shape (N, {d}), got {tuple(sample.shape)}; "
            "pass None for the closed form"
        )
    w_loss = training_loss(X, y, loss)
    if sample is None:
        if loss == "squared":
            return FisherSite("population", lambda w: w, w_loss, ng.metrics.Gaussian(1.0 / n))
        metric = ng.metrics.PointDependent(lambda w: n * logistic_population_fisher(w.reshape(-1)))
        factor = lambda w: n**0.5 * logistic_population_factor(w)  # noqa: E731
        return FisherSite("population", lambda w: w, w_loss, metric, factor=factor)
    scale = n / sample.shape[0]

    def sampled(w: Tensor) -> Tensor:
        if loss == "squared":
            return scale * sample.T @ sample
        s = sample @ w.detach().reshape(-1)
        return scale * (sample.T * (torch.sigmoid(s) * torch.sigmoid(-s))) @ sample

    return FisherSite("population-sample", lambda w: w, w_loss, ng.metrics.PointDependent(sampled))
