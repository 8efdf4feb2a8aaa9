"""One rank's part of the problem: its outputs z_p, loss term L_p, metric block g_p = B_p B_pᵀ and A_p = B_pᵀ J_p.

The global problem stacks the ranks' rows: A = [A_0; A_1; …] (r × d, r = Σ r_p), the metric is block diagonal
g = diag(g_0, g_1, …) and the loss is L = Σ_p w_p L_p(z_p) (w_p = 1 for ``reduction="sum"``, N_p / N for
``"mean"``). So ∇ξL = Σ_p w_p J_pᵀ ∇L_p and, when ∇z L = B c, c = [w_0 c_0; w_1 c_1; …] with B_p c_p = ∇L_p.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad._checks import check_finite
from natgrad._factorize import check_inverse, check_output_like_params, check_point
from natgrad._loss import output_gradient
from natgrad._routes._inverse import cutoff, scaling
from natgrad._routes._problem import Problem, Scaling
from natgrad._tree import Params
from natgrad.exceptions import InvalidInputError, InvalidTypeError
from natgrad.linalg import Inverse
from natgrad.metrics import LocalMetric, Metric
from natgrad.models import Linearization

# The fixed-length record every rank shares in the first collective (one all_gather of float64 numbers).
STATUS_FIELDS = (
    "ok",
    "r",
    "n",
    "examples",
    "d",
    "dtype",
    "param_fingerprint",
    "param_square_sum",
    "trailing_shape_fingerprint",
    "mismatch_sq",
    "grad_sq",
    "coeff_sq",
    "factor_norm",
)
DTYPE_CODES = {torch.float16: 1.0, torch.bfloat16: 2.0, torch.float32: 3.0, torch.float64: 4.0}


@dataclass
class Shard:
    """The local work of one rank, before any communication (unweighted by the loss reduction)."""

    lin: Linearization
    metric: LocalMetric
    loss: Tensor
    output_grad: Tensor  # ∇L_p(z_p), flattened
    grad: Tensor  # J_pᵀ ∇L_p, (d,)
    coefficients: Tensor  # c_p = B_p⁺ ∇L_p
    inverse: Inverse
    params: Params
    scaling: (
        Scaling | None
    )  # h^{-1/2} for MinNorm, validated here so that a bad h fails before any collective

    @property
    def z(self) -> Tensor:
        return self.lin.z

    @property
    def examples(self) -> int:
        return int(self.z.shape[0]) if self.z.ndim else 1

    def problem(self, r: int, tol: float, max_iter: int, budget: int) -> Problem:
        """The engine's :class:`Problem` for this rank's rows A_p (A_p S for MinNorm), with the cutoff of the
        whole batch's r rows."""
        return Problem(
            lin=self.lin,
            metric=self.metric,
            record=None,
            params=self.params,
            rtol=cutoff(self.inverse, self.lin.flat.dtype, r, self.lin.d),
            tol=tol,
            max_iter=max_iter,
            budget=budget,
            scaling=self.scaling,
        )

    def status(self, device: torch.device) -> Tensor:
        """This rank's record (see ``STATUS_FIELDS``) as a float64 vector on ``device``."""
        flat = self.lin.flat.to(torch.float64)
        mismatch = self.metric.factor_matmul(self.coefficients) - self.output_grad
        values = {
            "ok": 1.0,
            "r": float(self.metric.r),
            "n": float(self.lin.n),
            "examples": float(self.examples),
            "d": float(self.lin.d),
            "dtype": DTYPE_CODES.get(self.lin.flat.dtype, 0.0),
            "param_fingerprint": float(flat @ _probe(flat.numel(), flat.device)),
            "param_square_sum": float(flat @ flat),
            "trailing_shape_fingerprint": _shape_fingerprint(tuple(self.z.shape[1:])),
            "mismatch_sq": float(mismatch @ mismatch),
            "grad_sq": float(self.output_grad @ self.output_grad),
            "coeff_sq": float(self.coefficients @ self.coefficients),
            "factor_norm": float(self.metric.factor_norm()),
        }
        return torch.tensor([values[k] for k in STATUS_FIELDS], dtype=torch.float64, device=device)


def failed_status(device: torch.device) -> Tensor:
    """The record of a rank whose local work raised: ok = 0, everything else zero."""
    return torch.zeros(len(STATUS_FIELDS), dtype=torch.float64, device=device)


def _probe(d: int, device: torch.device) -> Tensor:
    """Fixed weights for the parameter fingerprint Σ_k w_k ξ_k (the same on every rank)."""
    gen = torch.Generator(device="cpu").manual_seed(20240)
    return torch.rand(d, generator=gen, dtype=torch.float64).add_(0.5).to(device)


def _shape_fingerprint(shape: tuple[int, ...]) -> float:
    """A number that differs between the per-example output shapes that matter (rank and sizes)."""
    value = float(len(shape))
    for size in shape:
        value = value * 1009.0 + float(size)
    return value


def prepare_shard(
    call: str,
    phi: Callable[[Params], Tensor],
    params: Params,
    loss: Callable[[Tensor], Tensor],
    metric: Metric,
    inverse: Inverse | None,
) -> Shard:
    """Validate and linearise this rank's shard; raises (locally) on bad input, like the single-process engine."""
    if not callable(phi) or not callable(loss):
        raise InvalidTypeError(f"{call}: phi and loss must be callables (params -> Tensor, Tensor -> scalar)")
    metric, dtype, device, _ = check_point(call, phi, metric, params)
    lin = Linearization(phi, params, call=call)
    z = lin.z
    check_output_like_params(call, z, dtype, device)
    if z.numel() == 0 or z.ndim == 0:
        raise InvalidInputError(
            f"{call}: phi(params) on this rank's shard returned shape {tuple(z.shape)}; expected a batch "
            "(N_p, ...) with at least one example per rank"
        )
    check_finite(call, "phi(params) (the model outputs on this shard)", z, "check the parameters and inputs")
    loss_value, output_grad = output_gradient(call, loss, z)
    check_finite(call, "loss(phi(params)) on this shard", loss_value, "the loss must be finite")
    check_finite(
        call, "the output gradient ∇z L on this shard", output_grad, "the loss is not differentiable at z"
    )
    output_grad = output_grad.reshape(-1)
    inverse = check_inverse(call, inverse, lin.d, lin.flat)
    local = metric.at(z, call=call)
    check_finite(
        call, "the metric factor", local.factor_t_matmul(torch.ones_like(output_grad)), f"{metric!r}"
    )
    grad = lin.vjp(output_grad)
    check_finite(call, "the parameter gradient on this shard", grad, "phi is not differentiable at params")
    coefficients = local.factor_solve(output_grad)
    # Products J t run later, inside collective phases (the matrix-free products, the pushforward): the
    # Linearization above already probed them (forward mode, or reverse mode where forward AD is missing), so
    # a model that cannot form them failed here, where every rank hears about it.
    scale = scaling(inverse, call)
    return Shard(lin, local, loss_value, output_grad, grad, coefficients, inverse, params, scale)
