"""The factored problem at one point: A = Bᵀ J S (r × d), and the right-hand sides a loss gives it.

S is the identity, or h^{-1/2} for ``MinNorm(h)``: the minimum h-norm solution is S (A S)⁺ ... computed as the
Moore–Penrose solution of the problem with A replaced by A S, so that no route needs a MinNorm case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from natgrad._tree import Params
from natgrad.metrics import LocalMetric
from natgrad.models import Linearization, ModuleRecord

# A batched product of k rows holds k·(n + d) numbers of input and output, and autograd keeps about as many
# again for intermediates: chunks of k rows with 4·k·(n + d) items stay inside the memory budget.
_CHUNK_OVERHEAD = 4


@dataclass(frozen=True)
class Scaling:
    """x ↦ S x for S = h^{-1/2}: a (d,) diagonal or a (d, d) symmetric matrix."""

    matrix: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return self.matrix * x if self.matrix.ndim == 1 else self.matrix @ x

    def right(self, a: Tensor) -> Tensor:
        """A S for A of shape (r, d)."""
        return a * self.matrix if self.matrix.ndim == 1 else a @ self.matrix


@dataclass
class Problem:
    """Everything a route needs to factorise G = AᵀA (K = AAᵀ) at one point; no loss is involved yet.

    Attributes:
        lin: φ linearised at ξ (products with J and Jᵀ).
        metric: g at z = φ(ξ), through its factor B (n × r).
        record: the module behind φ when it came from ``from_module``, else None.
        params: the point ξ as the caller passed it.
        rtol: the eigenvalue cutoff λ > rtol·λ_max of G (of K) the factorisation applies.
        tol: relative residual tolerance of iterative solves.
        max_iter: iteration cap of each iterative solve.
        budget: bytes the route may allocate.
        scaling: S = h^{-1/2} for MinNorm, else None.
        preconditioner: a ``structured-krylov`` preconditioner of an earlier factorisation to start from
            (``KernelPreconditioner``), or None; other routes ignore it.
    """

    lin: Linearization
    metric: LocalMetric
    record: ModuleRecord | None
    params: Params
    rtol: float
    tol: float
    max_iter: int
    budget: int
    scaling: Scaling | None = None
    factor_bytes: int | None = None  # the structured routes' per-layer factors, once estimated
    preconditioner: Any = None

    @property
    def r(self) -> int:
        return self.metric.r

    @property
    def d(self) -> int:
        return self.lin.d

    @property
    def itemsize(self) -> int:
        return self.lin.flat.element_size()

    @property
    def chunk(self) -> int:
        """Rows per batched product when A is materialised (see ``_CHUNK_OVERHEAD``)."""
        per_row = _CHUNK_OVERHEAD * self.itemsize * (self.lin.n + self.d)
        return max(1, min(self.r, self.d, self.budget // max(1, per_row)))

    def a_matvec(self, x: Tensor) -> Tensor:
        """A x = Bᵀ J S x (one JVP)."""
        x = x if self.scaling is None else self.scaling(x)
        return self.metric.factor_t_matmul(self.lin.jvp(x))

    def at_matvec(self, y: Tensor) -> Tensor:
        """Aᵀ y = S Jᵀ B y (one VJP)."""
        out = self.lin.vjp(self.metric.factor_matmul(y))
        return out if self.scaling is None else self.scaling(out)

    def a_dense(self) -> Tensor:
        """A as a dense (r, d) matrix: Bᵀ J from the model's own J when it has one, else by VJPs of B's
        columns or by JVPs, whichever needs fewer products."""
        dtype, device, chunk = self.lin.flat.dtype, self.lin.flat.device, self.chunk
        if self.lin.dense_jacobian is not None:
            known = self.lin.dense_jacobian
            # in the memory layout of the product-built A (column-major from JVP columns when d < r): same
            # values and layout give bitwise the same Gram matrix, so results do not move by a rounding
            a = self.metric.factor_t_matmul(known.T.contiguous().T if self.d < self.r else known)
        elif self.d < self.r:
            eye = torch.eye(self.d, dtype=dtype, device=device)
            cols = [self.lin.jvp_rows(eye[i : i + chunk]) for i in range(0, self.d, chunk)]
            a = self.metric.factor_t_matmul(torch.cat(cols).T)
        else:
            eye = torch.eye(self.r, dtype=dtype, device=device)
            rows = [
                self.lin.vjp_rows(self.metric.factor_matmul(eye[:, i : i + chunk]).T)
                for i in range(0, self.r, chunk)
            ]
            a = torch.cat(rows)
        return a if self.scaling is None else self.scaling.right(a)


@dataclass(frozen=True)
class RightHandSide:
    """What a loss contributes: ∇z L, ∇ = Jᵀ ∇z L, and c with ∇z L = B c when that c exists (∇ = Aᵀc then).

    ``grad`` is the unscaled gradient; for MinNorm the routes see S ∇ = (A S)ᵀ c, the same c.
    """

    output_grad: Tensor
    grad: Tensor
    c: Tensor | None


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
