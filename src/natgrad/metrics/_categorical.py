"""Fisher metric of a categorical distribution given by logits."""

from __future__ import annotations

import torch
from torch import Tensor

from natgrad.metrics._base import LocalMetric, Metric


class _CategoricalLocal(LocalMetric):
    """Per row p = softmax(z): g = diag(p) − ppᵀ = B Bᵀ with B = diag(√p) − p √pᵀ."""

    def __init__(self, z: Tensor) -> None:
        self.shape = z.shape
        self.classes = z.shape[-1]
        self.p = torch.softmax(z.reshape(-1, self.classes), dim=-1)
        self.sqrt_p = self.p.sqrt()
        self.n = self.r = z.numel()
        self.dtype, self.device = z.dtype, z.device

    def _rows(self, x: Tensor) -> tuple[Tensor, bool]:
        vector = x.ndim == 1
        x = x.reshape(-1, self.classes, 1) if vector else x.reshape(-1, self.classes, x.shape[-1])
        return x, vector

    def _out(self, x: Tensor, vector: bool) -> Tensor:
        return x.reshape(-1) if vector else x.reshape(self.n, -1)

    def factor_matmul(self, w: Tensor) -> Tensor:
        x, vector = self._rows(w)
        s, p = self.sqrt_p[..., None], self.p[..., None]
        out = s * x - p * (s * x).sum(dim=1, keepdim=True)
        return self._out(out, vector)

    def factor_t_matmul(self, u: Tensor) -> Tensor:
        x, vector = self._rows(u)
        s, p = self.sqrt_p[..., None], self.p[..., None]
        out = s * x - s * (p * x).sum(dim=1, keepdim=True)
        return self._out(out, vector)

    def _blocks(self) -> Tensor:
        eye = torch.eye(self.classes, dtype=self.dtype, device=self.device)
        return self.sqrt_p[:, :, None] * eye - self.p[:, :, None] * self.sqrt_p[:, None, :]

    def factor_solve(self, u: Tensor) -> Tensor:
        # B = diag(√p)(I − √p√pᵀ) on the support p > 0, zero elsewhere; its range is {y: Σ y = 0} there, so
        # B⁺u = (u − mean_S(u)) / √p on the support S, 0 off it. Closed form: an SVD-based pinv would keep
        # the rounding-level singular value of the null direction √p and blow it up.
        x, vector = self._rows(u)
        support = (self.p > 0)[..., None]
        count = support.sum(dim=1, keepdim=True)
        centred = x - (x * support).sum(dim=1, keepdim=True) / count
        root = torch.where(support, self.sqrt_p[..., None], 1.0)
        return self._out(torch.where(support, centred / root, 0.0), vector)

    def factor(self) -> Tensor:
        return torch.block_diag(*self._blocks())

    def _g_blocks(self) -> Tensor:
        return torch.diag_embed(self.p) - self.p[:, :, None] * self.p[:, None, :]

    def matrix(self) -> Tensor:
        return torch.block_diag(*self._g_blocks())

    def factor_norm(self) -> Tensor:
        # ‖B‖₂² = largest eigenvalue over the rows' C×C blocks diag(p) − ppᵀ.
        return torch.linalg.eigvalsh(self._g_blocks()).amax().clamp_min(0).sqrt()


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
