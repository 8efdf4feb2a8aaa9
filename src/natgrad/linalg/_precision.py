"""The default Moore–Penrose cutoff of kernels that are contracted and solved in float64 from a model's factors.

The kernel K = A Aᵀ assembled from a float32 model's per-layer factors differs from the exact one by the rounding
of those factors: measured on MLPs 784-512-512-10 (categorical Fisher, N = 64, r = 576; isotropic and
low-rank inputs), ‖K̂ − K‖₂ ≈ 0.8–1.7·eps₃₂·λ_max, whether the contraction ran in float32 or float64. By Weyl's
inequality an eigenvalue of K̂ at or below ‖K̂ − K‖₂ cannot be told from zero, and every eigenvalue above it is
a real direction. The old default, 10·min(r, d)·eps on the eigenvalues (5,760·eps₃₂ = 6.9e-4 at r = 576), sits
three orders of magnitude above that error: on the low-rank-input case (cond K ≈ 2,100, λ_min/λ_max = 4.8e-4) it
dropped 8 real directions and the float32 answer was 0.33 away from float64's. The rule here cuts at
``KERNEL_ERROR_FACTOR``·eps(model dtype)·λ_max (50·eps₃₂ = 6e-6: a margin of about 30 over the measured error),
and never below the float64 solve's own resolution 10·min(r, d)·eps₆₄; the float32 answer on that case is then
1.4e-5 (float32 Cholesky) and 2.1e-6 (float64 solve) from float64's. For float64 models the rule is the old
default, so the float64 reference (``natgrad.reference``) keeps the same rank.
"""

from __future__ import annotations

import torch

from natgrad.linalg._inverses import default_rtol

KERNEL_ERROR_FACTOR = 50.0


def kernel_rtol(rtol: float, model_dtype: torch.dtype, r: int, d: int) -> float:
    """The cutoff on λ/λ_max for a kernel of ``model_dtype`` factors solved in float64.

    ``rtol`` is the cutoff resolved for the inverse; when it is the old default of ``model_dtype`` (no explicit
    ``MoorePenrose(rtol)``) and the model is not float64, the rule above replaces it; otherwise it stands.
    """
    if torch.finfo(model_dtype).eps <= torch.finfo(torch.float64).eps or rtol != default_rtol(
        model_dtype, r, d
    ):
        return rtol
    return max(default_rtol(torch.float64, r, d), KERNEL_ERROR_FACTOR * torch.finfo(model_dtype).eps)


# Residual (least-squares) kernels G = JᵀJ in float64, measured on the PINN problems of natgrad's experiments
# (2-D Poisson and 1-D heat, 2-64-1, N ≈ 1,000, d = 257, at initialisation and after 20, 100 and 400
# Gauss–Newton steps; the 2-64-64-48-48-1 network's 300 × 9,873 kernel K = JJᵀ): the float64 product differs
# from the exact product of the same J (computed in extended precision) by ‖Ĝ − G‖₂ = 0.9–2.9·eps₆₄·λ_max, and
# J's own rounding (forward-propagated against per-point torch.func derivatives) moves G by at most
# 0.6·eps₆₄·λ_max. The eigenvalues eigh returns agree with σ(J)² to within a factor 2 down to 0.4·eps₆₄·λ_max,
# and the most negative one of a singular kernel sits at −2·eps₆₄·λ_max. By Weyl's inequality every eigenvalue
# above ‖Ĝ − G‖₂ + the eigensolver's error is a real direction, so the cutoff belongs at a small multiple of
# eps₆₄, not at 10·min(r, d)·eps₆₄ (2,570·eps₆₄ = 5.7e-13 at d = 257), which drops the directions the last
# digits of a PINN solution live in (2-D Poisson stops at 1.2e-6 with it).
RESIDUAL_KERNEL_ERROR_FACTOR = 5.0


def residual_rtol(dtype: torch.dtype, rows: int, cols: int) -> float:
    """Default Moore–Penrose cutoff on λ/λ_max for a least-squares (residual) kernel G = JᵀJ.

    float64: ``RESIDUAL_KERNEL_ERROR_FACTOR``·eps₆₄ = 1.1e-15, whatever the size: the measured rounding of the
    assembled kernel is at most 2.9·eps₆₄·λ_max (see the notes above), and :func:`default_rtol` is never
    lower (10·min(r, d)·eps₆₄ ≥ 10·eps₆₄). Other dtypes: :func:`default_rtol` (not measured; in float32 the
    kernel's error is that of its float32 factors).

    Args:
        dtype: dtype of the Jacobian (the model's parameters).
        rows: r, the number of residuals.
        cols: d, the number of parameters.
    """
    if dtype != torch.float64:
        return default_rtol(dtype, rows, cols)
    return RESIDUAL_KERNEL_ERROR_FACTOR * torch.finfo(torch.float64).eps
