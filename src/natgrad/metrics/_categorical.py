"""Fisher metric of a categorical distribution given by logits."""

from __future__ import annotations

import torch
from torch import Tensor

from natgrad.metrics._base import LocalMetric, Metric


class _CategoricalLocal(LocalMetric):
    """Per row p = softmax(z): g = diag(p) − ppᵀ = B Bᵀ with B = diag(√p) Q (C × (C−1)).

    Q is an orthonormal basis of √p⊥: the Householder reflection H = I − 2wwᵀ/wᵀw, w = √p + e_k, maps √p to
    −e_k, so its columns other than k span √p⊥. Then B Bᵀ = diag(√p)(I − √p√pᵀ)diag(√p) = diag(p) − ppᵀ, and B
    has full column rank when every p > 0: the factored problem has r = N·(C−1) rows and no built-in null
    direction (the square root diag(√p) − p√pᵀ would have one per row). The pivot k is the most probable
    class, so w_k ≥ 1 and H never mixes the large entries that tiny probabilities produce in B⁺.
    """

    def __init__(self, z: Tensor) -> None:
        self.shape = z.shape
        self.classes = z.shape[-1]
        self.p = torch.softmax(z.reshape(-1, self.classes), dim=-1)
        self.sqrt_p = self.p.sqrt()
        self.n = z.numel()
        self.r = self.p.shape[0] * (self.classes - 1)
        self.dtype, self.device = z.dtype, z.device
        pivot = self.p.argmax(dim=1, keepdim=True)
        self._w = self.sqrt_p.scatter_add(1, pivot, torch.ones_like(self.sqrt_p[:, :1]))
        self._w_sq = (self._w * self._w).sum(dim=1)[:, None, None]
        self._kept = torch.ones_like(self.p, dtype=torch.bool).scatter_(1, pivot, False)

    def _reflect(self, y: Tensor) -> Tensor:
        """H y per row, y of shape (rows, C, m)."""
        w = self._w[..., None]
        return y - 2.0 * w * (w * y).sum(dim=1, keepdim=True) / self._w_sq

    def _q(self, x: Tensor) -> Tensor:
        """Q x: (rows, C−1, m) -> (rows, C, m), x placed in the rows other than the pivot."""
        y = x.new_zeros((x.shape[0], self.classes, x.shape[2]))
        y[self._kept] = x.reshape(-1, x.shape[2])
        return self._reflect(y)

    def _qt(self, y: Tensor) -> Tensor:
        """Qᵀ y: (rows, C, m) -> (rows, C−1, m)."""
        return self._reflect(y)[self._kept].reshape(y.shape[0], self.classes - 1, y.shape[2])

    def _rows(self, x: Tensor, size: int) -> tuple[Tensor, bool]:
        vector = x.ndim == 1
        x = x.reshape(-1, size, 1) if vector else x.reshape(-1, size, x.shape[-1])
        return x, vector

    @staticmethod
    def _out(x: Tensor, vector: bool) -> Tensor:
        return x.reshape(-1) if vector else x.reshape(-1, x.shape[-1])

    def factor_matmul(self, w: Tensor) -> Tensor:
        x, vector = self._rows(w, self.classes - 1)
        return self._out(self.sqrt_p[..., None] * self._q(x), vector)

    def factor_t_matmul(self, u: Tensor) -> Tensor:
        x, vector = self._rows(u, self.classes)
        return self._out(self._qt(self.sqrt_p[..., None] * x), vector)

    def blocks(self) -> Tensor:
        """The per-row factors diag(√p) Q, (rows, C, C−1)."""
        eye = torch.eye(self.classes - 1, dtype=self.dtype, device=self.device)
        return self.sqrt_p[:, :, None] * self._q(eye.expand(self.p.shape[0], -1, -1))

    def factor_solve(self, u: Tensor) -> Tensor:
        # diag(√p) Q c = u: on the support p > 0 the range of diag(√p)(I − √p√pᵀ) is {y: Σ y = 0}, solved by
        # x = (u − mean_S(u)) / √p there and 0 off it; then c = Qᵀx, since Q Qᵀ = I − √p√pᵀ. Closed form: an
        # SVD-based pinv would keep rounding-level singular values where p underflows and blow them up.
        x, vector = self._rows(u, self.classes)
        support = (self.p > 0)[..., None]
        count = support.sum(dim=1, keepdim=True)
        centred = x - (x * support).sum(dim=1, keepdim=True) / count
        root = torch.where(support, self.sqrt_p[..., None], 1.0)
        return self._out(self._qt(torch.where(support, centred / root, 0.0)), vector)

    def factor(self) -> Tensor:
        return torch.block_diag(*self.blocks())

    def _g_blocks(self) -> Tensor:
        # The diagonal p_i(1 − p_i) as p_i Σ_{j≠i} p_j: p_i − p_i² cancels when p_i ≈ 1.
        eye = torch.eye(self.classes, dtype=self.dtype, device=self.device)
        others = self.p @ (1 - eye)
        return torch.diag_embed(self.p * others) - (1 - eye) * self.p[:, :, None] * self.p[:, None, :]

    def matrix(self) -> Tensor:
        return torch.block_diag(*self._g_blocks())

    def factor_norm(self) -> Tensor:
        # ‖B‖₂² = largest eigenvalue over the rows' C×C blocks diag(p) − ppᵀ.
        return torch.linalg.eigvalsh(self._g_blocks()).amax().clamp_min(0).sqrt()


def categorical_factor_blocks(logits: Tensor) -> Tensor:
    """Per-row factors B_i = diag(√p) Q (C × (C−1)) of the categorical Fisher diag(p) − ppᵀ, p = softmax(logits).

    Q spans √p⊥ (a Householder reflection pivoted on the most probable class, see ``_CategoricalLocal``), so
    B_i B_iᵀ = diag(p) − ppᵀ and B_i has full column rank whenever every p > 0. ``logits``: (..., C);
    returns (rows, C, C − 1) with rows = the product of the leading axes.
    """
    return _CategoricalLocal(logits).blocks()


class Categorical(Metric):
    """Fisher metric of softmax(z) per row of the last axis: diag(p) − ppᵀ.

    Singular by construction (the all-ones vector of each row is a null vector); the cross-entropy
    gradient p − onehot lies in its range.
    """

    def at(self, z: Tensor, call: str = "Categorical") -> LocalMetric:
        if z.ndim == 0 or z.shape[-1] < 2:
            raise ValueError(
                f"{call}: Categorical expects logits with a last axis of size C ≥ 2 (classes), "
                f"got output shape {tuple(z.shape)}"
            )
        return _CategoricalLocal(z)
