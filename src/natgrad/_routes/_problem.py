"""The factored problem: A = Bᵀ J (r × d), the gradient ∇ = Jᵀ ∇z L and, when it exists, c with ∇z L = B c."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad.metrics import LocalMetric
from natgrad.models import Linearization


@dataclass
class Problem:
    """Everything a route needs. G = AᵀA, K = AAᵀ; ∇ = Aᵀc whenever ``c`` is not None."""

    lin: Linearization
    metric: LocalMetric
    output_grad: Tensor  # ∇z L, flattened (n,)
    grad: Tensor  # ∇ξ = Jᵀ ∇z L, (d,)
    c: Tensor | None  # B⁺ ∇z L when B c reproduces ∇z L

    @property
    def r(self) -> int:
        return self.metric.r

    @property
    def d(self) -> int:
        return self.lin.d

    def a_matvec(self, x: Tensor) -> Tensor:
        """A x = Bᵀ J x (one JVP)."""
        return self.metric.factor_t_matmul(self.lin.jvp(x))

    def at_matvec(self, y: Tensor) -> Tensor:
        """Aᵀ y = Jᵀ B y (one VJP)."""
        return self.lin.vjp(self.metric.factor_matmul(y))

    def a_dense(self, chunk: int) -> Tensor:
        """A as a dense (r, d) matrix, by VJPs of B's columns or by JVPs, whichever needs fewer products."""
        dtype, device = self.grad.dtype, self.grad.device
        if self.d < self.r:
            eye = torch.eye(self.d, dtype=dtype, device=device)
            cols = [self.lin.jvp_rows(eye[i : i + chunk]) for i in range(0, self.d, chunk)]
            return self.metric.factor_t_matmul(torch.cat(cols).T)
        eye = torch.eye(self.r, dtype=dtype, device=device)
        rows = [
            self.lin.vjp_rows(self.metric.factor_matmul(eye[:, i : i + chunk]).T)
            for i in range(0, self.r, chunk)
        ]
        return torch.cat(rows)


def output_factor_coefficients(metric: LocalMetric, output_grad: Tensor) -> Tensor | None:
    """c = B⁺ ∇z L if B c reproduces ∇z L to rounding (∇z L in the range of g) and c is well determined.

    Returns None otherwise, and the routes use the general forms in ∇ = Jᵀ ∇z L. "Well determined" means
    ‖B‖·‖c‖ ≤ ‖∇z L‖/√eps: a larger c lives along tiny singular values of B (e.g. Fisher weights σ(z)σ(−z)
    ≈ e^{−|z|} at large logits), where the rounding of the factored routes' singular vectors, multiplied by
    ‖c‖, would swamp the answer.
    """
    c = metric.factor_solve(output_grad)
    scale = torch.linalg.vector_norm(output_grad)
    if scale == 0:
        return c
    mismatch = torch.linalg.vector_norm(metric.factor_matmul(c) - output_grad)
    tol = torch.finfo(output_grad.dtype).eps ** 0.5
    if not bool(mismatch <= tol * scale):
        return None
    amplification = metric.factor_norm() * torch.linalg.vector_norm(c)
    return c if bool(amplification * tol <= scale) else None
