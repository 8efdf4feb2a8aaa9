"""Losses that know their Fisher metric: the "metric from the loss" of `NGD`.

Each loss is a callable ``loss(z) -> scalar`` on the model outputs ``z`` of a batch, and carries

* ``metric(z)``: the per-sample Fisher metric g(z) on the outputs, as an engine metric;
* ``scale(z)``: the number s with  ∇²_z loss (Gauss–Newton part) = s · g(z)  (s = 1/N for a mean over N rows);
* ``metric_matvec(z, u)``: g(z) u, without forming g;
* ``sample_scores(z, k, generator)``: k Monte-Carlo score vectors s = ∇_z(−log p(y | z)), y ~ p(· | z), whose
  outer products average to g(z) (E[s sᵀ] = g per row), used for the Monte-Carlo Fisher.

The natural gradient of the loss for the metric s·g equals the natural gradient of loss/s for g, so `NGD`
hands the engine ``loss / s`` with the unscaled metric: steps of size 1 are Gauss–Newton (Newton on the model)
steps for the loss as written.
"""

from __future__ import annotations

import math

import torch

import natgrad as ng


def _rows(z: torch.Tensor) -> torch.Tensor:
    """Outputs as (N, C): first axis = samples, remaining axes = one event per sample."""
    return z.reshape(z.shape[0], -1) if z.dim() > 1 else z.reshape(-1, 1)


def _check_reduction(name: str, reduction: str) -> str:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"{name}: reduction must be 'mean' or 'sum', got {reduction!r}")
    return reduction


class _FisherLoss:
    """Shared parts: reduction scale and the dense Monte-Carlo metric."""

    reduction: str = "sum"

    def scale(self, z: torch.Tensor) -> float:
        """s with loss Hessian (Gauss–Newton part) = s · g: 1/N for a mean over N samples, else 1."""
        return 1.0 / z.shape[0] if self.reduction == "mean" and z.dim() > 0 else 1.0

    def _reduce(self, per_sample: torch.Tensor) -> torch.Tensor:
        return per_sample.mean() if self.reduction == "mean" else per_sample.sum()


class CrossEntropy(_FisherLoss):
    """Softmax cross-entropy of logits z (N, C) against integer labels: metric = categorical Fisher.

    loss(z) = reduce_i ( −log softmax(z_i)[y_i] ),   g(z_i) = diag(p_i) − p_i p_iᵀ,  p_i = softmax(z_i).

    Evaluated as −log p_y = log(1 + Σ_{j≠y} exp(z_j − z_y)) (a log-sum-exp over 0 and the other classes'
    margins), so that autograd gives ∂/∂z_y = −Σ_{j≠y} p_j instead of p_y − 1: near a fit p_y rounds to
    1 − O(eps) and p_y − 1 carries an absolute error of eps, which puts each row of ∇_z L outside the range
    of g (rows of g's range sum to zero) by eps/‖∇_z L‖ — in float32 at train loss 1e-5 that exceeded √eps
    and the engine could no longer write ∇_z L = B c. Same value as ``torch.nn.functional.cross_entropy``.
    """

    def __init__(self, targets: torch.Tensor, reduction: str = "mean") -> None:
        if targets.dim() != 1 or targets.dtype not in (torch.int64, torch.int32):
            raise TypeError(
                f"CrossEntropy: targets must be a 1-D integer tensor of class labels, got dtype "
                f"{targets.dtype} and shape {tuple(targets.shape)}"
            )
        self.targets = targets.long()
        self.reduction = _check_reduction("CrossEntropy", reduction)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[0] != self.targets.shape[0]:
            raise ValueError(
                f"CrossEntropy: expected logits of shape ({self.targets.shape[0]}, C), got {tuple(z.shape)}"
            )
        target = self.targets[:, None]
        margins = (z - z.gather(1, target)).scatter(1, target, -math.inf)  # z_j − z_y, the class itself out
        per_sample = torch.logsumexp(torch.cat([torch.zeros_like(margins[:, :1]), margins], dim=1), dim=1)
        return self._reduce(per_sample)

    def metric(self, z: torch.Tensor) -> object:
        """The natgrad metric of this loss's Fisher: categorical."""
        return ng.metrics.Categorical()

    def metric_matvec(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """g(z) u for the outputs z, computed row by row without forming g."""
        p = torch.softmax(z, dim=-1)
        return p * u - p * (p * u).sum(-1, keepdim=True)

    def sample_scores(self, z: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
        """k Monte-Carlo scores per output row, from labels drawn from the model at z (for ``mc_samples``)."""
        return ng.metrics.categorical_scores(z, k, generator)  # (k, N, C)


class BinaryCrossEntropy(_FisherLoss):
    """Logistic loss of logits z against targets in [0, 1]: metric = Bernoulli Fisher σ(z)σ(−z).

    loss(z) = reduce_i Σ_c ( softplus(z_ic) − y_ic z_ic ),  g = diag(σ(z)σ(−z)).
    """

    def __init__(self, targets: torch.Tensor, reduction: str = "mean") -> None:
        self.targets = targets
        self.reduction = _check_reduction("BinaryCrossEntropy", reduction)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape != self.targets.shape:
            raise ValueError(
                f"BinaryCrossEntropy: expected logits of shape {tuple(self.targets.shape)}, "
                f"got {tuple(z.shape)}"
            )
        per = torch.nn.functional.softplus(z) - self.targets.to(z.dtype) * z
        return self._reduce(_rows(per).sum(-1))

    def metric(self, z: torch.Tensor) -> object:
        """The natgrad metric of this loss's Fisher: Bernoulli."""
        return ng.metrics.Bernoulli()

    def metric_matvec(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """g(z) u for the outputs z, computed row by row without forming g."""
        return torch.sigmoid(z) * torch.sigmoid(-z) * u

    def sample_scores(self, z: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
        """k Monte-Carlo scores per output row, from labels drawn from the model at z (for ``mc_samples``)."""
        prob = torch.sigmoid(z.detach()).expand(k, *z.shape)
        y = torch.bernoulli(prob, generator=generator)
        return prob - y


class GaussianNLL(_FisherLoss):
    """Gaussian negative log-likelihood with fixed variance σ² (squared error): metric = I/σ².

    loss(z) = reduce_i ½‖z_i − y_i‖² / σ²   (constants dropped),  g = I/σ².
    """

    def __init__(self, targets: torch.Tensor, variance: float = 1.0, reduction: str = "mean") -> None:
        if not variance > 0:
            raise ValueError(f"GaussianNLL: variance must be positive, got {variance}")
        self.targets = targets
        self.variance = float(variance)
        self.reduction = _check_reduction("GaussianNLL", reduction)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape != self.targets.shape:
            raise ValueError(
                f"GaussianNLL: expected outputs of shape {tuple(self.targets.shape)}, got {tuple(z.shape)}"
            )
        per = 0.5 * (z - self.targets.to(z.dtype)).pow(2) / self.variance
        return self._reduce(_rows(per).sum(-1))

    def metric(self, z: torch.Tensor) -> object:
        """The natgrad metric of this loss's Fisher: Gaussian with this variance."""
        return ng.metrics.Gaussian(self.variance)

    def metric_matvec(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """g(z) u for the outputs z, computed row by row without forming g."""
        return u / self.variance

    def sample_scores(self, z: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
        """k Monte-Carlo scores per output row, from labels drawn from the model at z (for ``mc_samples``)."""
        noise = torch.randn((k, *z.shape), generator=generator, dtype=z.dtype, device=z.device)
        return noise / self.variance**0.5  # (z − y)/σ² with y = z + σ ε


class LeastSquares(_FisherLoss):
    """½‖r‖² of a residual vector r (any shape): the Euclidean metric, i.e. Gauss–Newton.

    loss(r) = ½ Σ r²,  g = I,  s = 1.
    """

    reduction = "sum"

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        return 0.5 * r.pow(2).sum()

    def scale(self, z: torch.Tensor) -> float:
        return 1.0

    def metric(self, z: torch.Tensor) -> object:
        """The natgrad metric of least squares: Euclidean (Gauss–Newton)."""
        return ng.metrics.Euclidean()

    def metric_matvec(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """g(z) u for the outputs z, computed row by row without forming g."""
        return u

    def sample_scores(self, z: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
        """k Monte-Carlo scores per output row, from labels drawn from the model at z (for ``mc_samples``)."""
        return torch.randn((k, *z.shape), generator=generator, dtype=z.dtype, device=z.device)


def monte_carlo_factor(scores: torch.Tensor) -> torch.Tensor:
    """Factor B of the Monte-Carlo Fisher from k score draws: B Bᵀ = (1/k) Σ_j blockdiag_i(s_ji s_jiᵀ).

    Args:
        scores: (k, N, ...) score vectors, k draws for each of N samples.

    Returns:
        B of shape (n, N·k) with n = number of output entries; row (i, c), column (i, j) holds s_jic / √k.
    """
    return torch.block_diag(*ng.metrics.monte_carlo_blocks(scores))
