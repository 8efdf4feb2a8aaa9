"""Output-space metrics g(z), represented by a factor B with g = B Bᵀ."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class LocalMetric(ABC):
    """The metric at one model point z, acting on flattened output vectors of length n.

    g = B Bᵀ with B of shape (n, r). Vectors are (n,) or (n, k) on the output side and (r,) or (r, k)
    on the factor side.
    """

    n: int
    r: int

    @abstractmethod
    def factor_matmul(self, w: Tensor) -> Tensor:
        """B w."""

    @abstractmethod
    def factor_t_matmul(self, u: Tensor) -> Tensor:
        """Bᵀ u."""

    @abstractmethod
    def factor_solve(self, u: Tensor) -> Tensor:
        """The minimum-norm least-squares c of B c = u, i.e. B⁺ u, for u of shape (n,)."""

    def factor(self) -> Tensor:
        """B as a dense (n, r) matrix."""
        eye = torch.eye(self.r, dtype=self.dtype, device=self.device)
        return self.factor_matmul(eye)

    def matrix(self) -> Tensor:
        """g = B Bᵀ as a dense (n, n) matrix."""
        b = self.factor()
        return b @ b.T

    def factor_norm(self) -> Tensor:
        """‖B‖₂ = √λ_max(g), the largest singular value of B."""
        return torch.linalg.matrix_norm(self.factor(), ord=2)

    dtype: torch.dtype
    device: torch.device


class Metric(ABC):
    """A Riemannian metric on output space; ``at(z)`` evaluates it at the model point z."""

    @abstractmethod
    def at(self, z: Tensor, call: str = "metric") -> LocalMetric:
        """The metric at z (any shape; vectors act on ``z.flatten()``), validated against z."""

    def matrix(self, z: Tensor) -> Tensor:
        """The dense n×n matrix g(z) on ``z.flatten()``."""
        return self.at(z, call=f"{type(self).__name__}.matrix").matrix()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class DiagonalLocal(LocalMetric):
    """g = diag(w) with w ≥ 0, B = diag(√w)."""

    def __init__(self, weights: Tensor) -> None:
        self.weights = weights.reshape(-1)
        self.root = self.weights.sqrt()
        self.n = self.r = self.weights.numel()
        self.dtype, self.device = weights.dtype, weights.device

    def _scale(self, x: Tensor, s: Tensor) -> Tensor:
        return s[:, None] * x if x.ndim == 2 else s * x

    def factor_matmul(self, w: Tensor) -> Tensor:
        return self._scale(w, self.root)

    def factor_t_matmul(self, u: Tensor) -> Tensor:
        return self._scale(u, self.root)

    def factor_solve(self, u: Tensor) -> Tensor:
        positive = self.root > 0
        inv = torch.where(positive, 1.0 / torch.where(positive, self.root, 1.0), 0.0)
        return self._scale(u, inv)

    def factor(self) -> Tensor:
        return torch.diag(self.root)

    def factor_norm(self) -> Tensor:
        return self.root.max()

    def matrix(self) -> Tensor:
        return torch.diag(self.weights)


class DenseLocal(LocalMetric):
    """g given by a dense factor B (n, r)."""

    def __init__(self, factor: Tensor) -> None:
        self.b = factor
        self.n, self.r = factor.shape
        self.dtype, self.device = factor.dtype, factor.device
        self._pinv: Tensor | None = None

    def factor_matmul(self, w: Tensor) -> Tensor:
        return self.b @ w

    def factor_t_matmul(self, u: Tensor) -> Tensor:
        return self.b.T @ u

    def factor_solve(self, u: Tensor) -> Tensor:
        if self._pinv is None:
            self._pinv = torch.linalg.pinv(self.b)
        return self._pinv @ u

    def factor(self) -> Tensor:
        return self.b


def psd_factor(call: str, matrix: Tensor, what: str = "metric matrix") -> Tensor:
    """B with B Bᵀ = matrix for a symmetric PSD matrix; refuses asymmetric or indefinite input."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{call}: {what} must be square (n, n), got shape {tuple(matrix.shape)}")
    if not matrix.is_floating_point():
        raise TypeError(f"{call}: {what} must be floating point, got dtype {matrix.dtype}")
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError(f"{call}: {what} contains non-finite values (NaN or inf)")
    scale = matrix.abs().max().clamp_min(torch.finfo(matrix.dtype).tiny)
    eps = torch.finfo(matrix.dtype).eps
    asym = (matrix - matrix.T).abs().max() / scale
    if asym > 100 * eps:
        raise ValueError(
            f"{call}: {what} must be symmetric, got max |g - gᵀ| / max |g| = {float(asym):.3g}; "
            "pass (g + g.T) / 2 if the asymmetry is rounding"
        )
    sym = (matrix + matrix.T) / 2
    evals, evecs = torch.linalg.eigh(sym)
    tol = 100 * eps * matrix.shape[0] * evals.abs().max().clamp_min(torch.finfo(matrix.dtype).tiny)
    if evals.min() < -tol:
        raise ValueError(
            f"{call}: {what} must be positive semi-definite, got smallest eigenvalue {float(evals.min()):.3g} "
            f"(largest {float(evals.max()):.3g}); a metric must satisfy vᵀ g v ≥ 0"
        )
    # Eigenvalues at rounding level are exact zeros of g: drop them so that B has full column rank and
    # matrix-free solvers, which have no cutoff, never divide by them.
    keep = evals > tol
    return evecs[:, keep] * evals[keep].sqrt()


def check_output_size(call: str, metric: str, z: Tensor, n: int) -> None:
    """The metric was built for n outputs; z must have n entries."""
    if z.numel() != n:
        raise ValueError(
            f"{call}: {metric} is {n}×{n} but the model has {z.numel()} outputs (shape {tuple(z.shape)}); "
            "the metric acts on phi(params).flatten()"
        )
