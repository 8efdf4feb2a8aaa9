"""Reference classifiers and interpolants to compare trajectories against.

* :func:`svm_l2`: the ℓ2 hard-margin SVM through the origin, ``argmin ‖w‖₂ s.t. y_i x_iᵀw ≥ 1``, solved as a
  least-distance program by non-negative least squares (scipy.optimize.nnls, Lawson–Hanson): with
  ``Z = diag(y) X``, minimise ``‖Eu − f‖`` over ``u ≥ 0`` for ``E = [Zᵀ; 1ᵀ]``, ``f = e_{d+1}``; then
  ``w = Zᵀu / (1 − 1ᵀu)`` and the dual variables are ``α = u / (1 − 1ᵀu) ≥ 0``.
* :func:`l1_max_margin`: ``argmin ‖w‖₁ s.t. y_i x_iᵀw ≥ 1`` as a linear program (scipy.optimize.linprog).
* :func:`min_norm_interpolant`: ``X⁺y`` (torch only).

scipy is an optional extra, imported when a scipy-backed reference is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from natgrad.linear.data import check_design


def _scipy_optimize(name: str):
    try:
        from scipy import optimize
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"{name}: needs scipy (pip install 'natgrad[experiments]')") from err
    return optimize


def _check(name: str, X: Tensor, y: Tensor) -> tuple[np.ndarray, np.ndarray]:
    check_design(name, X, y)
    return X.detach().cpu().double().numpy(), y.detach().cpu().double().numpy()


@dataclass(frozen=True)
class MaxMargin:
    """A max-margin classifier: ``w`` (margins ≥ 1, active = 1), dual ``alpha``, ``support`` indices."""

    w: Tensor
    alpha: Tensor
    support: Tensor


def svm_l2(X: Tensor, y: Tensor, *, support_tol: float = 1e-8) -> MaxMargin:
    """Hard-margin ℓ2 SVM without bias: ``argmin ‖w‖ s.t. y_i x_iᵀw ≥ 1`` (labels ±1, data separable).

    Support vectors are the points with ``α_i > support_tol · max α``.
    """
    Xn, yn = _check("svm_l2", X, y)
    optimize = _scipy_optimize("svm_l2")
    Z = yn[:, None] * Xn
    n, d = Z.shape
    E = np.vstack([Z.T, np.ones((1, n))])
    f = np.zeros(d + 1)
    f[-1] = 1.0
    u, _ = optimize.nnls(E, f, maxiter=50 * (n + d))
    denom = 1.0 - u.sum()
    if denom <= 1e-14:
        raise ValueError("svm_l2: the data are not linearly separable through the origin")
    alpha = u / denom
    w = Z.T @ alpha
    support = np.flatnonzero(alpha > support_tol * alpha.max())
    like: dict[str, Any] = {"dtype": X.dtype, "device": X.device}
    return MaxMargin(torch.as_tensor(w, **like), torch.as_tensor(alpha, **like), torch.as_tensor(support))


def l1_max_margin(X: Tensor, y: Tensor) -> Tensor:
    """``argmin ‖w‖₁ s.t. y_i x_iᵀw ≥ 1`` via ``w = p − q``, ``p, q ≥ 0``, ``min 1ᵀ(p + q)`` (HiGHS LP)."""
    Xn, yn = _check("l1_max_margin", X, y)
    optimize = _scipy_optimize("l1_max_margin")
    Z = yn[:, None] * Xn
    n, d = Z.shape
    result = optimize.linprog(
        np.ones(2 * d), A_ub=np.hstack([-Z, Z]), b_ub=-np.ones(n), bounds=(0, None), method="highs"
    )
    if result.status != 0:
        raise ValueError(
            f"l1_max_margin: the linear program failed ({result.message}); are the data separable?"
        )
    return torch.as_tensor(result.x[:d] - result.x[d:], dtype=X.dtype, device=X.device)


def min_norm_interpolant(X: Tensor, y: Tensor) -> Tensor:
    """``X⁺y``: the minimum-ℓ2-norm solution of ``Xw = y`` (least squares when ``n > d``)."""
    if not isinstance(X, Tensor) or X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(
            f"min_norm_interpolant: expected X (n, d) and y (n,), got {getattr(X, 'shape', X)} and {y.shape}"
        )
    return torch.linalg.pinv(X) @ y
