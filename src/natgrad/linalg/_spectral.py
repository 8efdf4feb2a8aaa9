"""eigh and SVD that never let LAPACK's convergence failures or non-finite factors escape.

LAPACK's symmetric eigensolvers and SVD can fail to converge (``torch.linalg.LinAlgError``), and float32
factors of badly scaled matrices can come back with NaN or inf. Each call here tries, in order:

1. the matrix's own dtype;
2. float64 (results cast back to the input dtype, so downstream arithmetic is unchanged);
3. eigh only: float64 of the symmetrised (M + Mᵀ)/2 + δI with δ = eps₆₄·‖M‖_F, and δ subtracted again.

Why the shift in 3. keeps the retained eigenpairs: M + δI has the eigenvectors of M and eigenvalues λ + δ, so
subtracting δ restores λ up to rounding of order eps₆₄·(‖M‖ + δ), the backward error float64 eigh has anyway.
δ ≤ √n·eps₆₄·λ_max also lies below every default cutoff (10·min(r, d)·eps·λ_max for routes, n·eps₆₄·λ_max for
the preconditioner), so even unsubtracted it could move only eigenvalues already within rounding of the cutoff.
The shift (and the symmetrisation, since eigh reads one triangle) changes the floating-point input, which is
what gives a failed iteration another chance to converge.

Which attempt succeeded is returned ("float64" or "float64-shifted"; None when the first did), for
``info["spectral_fallback"]``. When all fail a :class:`~natgrad.FactorizationError` names the call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from natgrad.exceptions import FactorizationError

_ADVICE = "pass natgrad.Damped(λ) (no eigendecomposition needed), or method='structured-krylov'"


def _finite(parts: Sequence[Tensor]) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in parts)


def _first_success(
    attempts: list[tuple[str | None, Callable[[], tuple[Tensor, ...]]]], dtype: torch.dtype, call: str
) -> tuple[tuple[Tensor, ...], str | None]:
    failures: list[str] = []
    for how, attempt in attempts:
        try:
            parts = attempt()
        except torch.linalg.LinAlgError as error:
            failures.append(f"{how or 'own dtype'}: {str(error).splitlines()[0]}")
            continue
        if _finite(parts):
            return tuple(p.to(dtype) for p in parts), how
        failures.append(f"{how or 'own dtype'}: non-finite factor")
    raise FactorizationError(f"{call}: every attempt failed ({'; '.join(failures)}); {_ADVICE}")


def robust_eigh(matrix: Tensor, call: str) -> tuple[Tensor, Tensor, str | None]:
    """(eigenvalues ascending, eigenvectors, which fallback succeeded or None) of a symmetric matrix."""
    wide = matrix.to(torch.float64)

    def shifted() -> tuple[Tensor, Tensor]:
        n = matrix.shape[0]
        # eps₆₄·‖M‖_F: float64 rounding of M, so the subtracted shift costs no accuracy (module docstring)
        shift = torch.finfo(torch.float64).eps * float(torch.linalg.matrix_norm(wide))
        eye = torch.eye(n, dtype=torch.float64, device=matrix.device)
        evals, evecs = torch.linalg.eigh((wide + wide.T) / 2 + shift * eye)
        return evals - shift, evecs

    (evals, evecs), how = _first_success(
        [
            (None, lambda: tuple(torch.linalg.eigh(matrix))),
            ("float64", lambda: tuple(torch.linalg.eigh(wide))),
            ("float64-shifted", shifted),
        ],
        matrix.dtype,
        call,
    )
    return evals, evecs, how


def robust_svd(matrix: Tensor, call: str) -> tuple[Tensor, Tensor, Tensor, str | None]:
    """Thin SVD (U, s, Vh, which fallback succeeded or None); a shift has no SVD analogue, so two attempts."""
    (U, s, Vh), how = _first_success(
        [
            (None, lambda: tuple(torch.linalg.svd(matrix, full_matrices=False))),
            ("float64", lambda: tuple(torch.linalg.svd(matrix.to(torch.float64), full_matrices=False))),
        ],
        matrix.dtype,
        call,
    )
    return U, s, Vh, how
