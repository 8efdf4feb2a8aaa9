"""Ritz values of LSQR's bidiagonal B_k without forming it: the tridiagonal B_kᵀB_k, Sturm counts and bisection.

The squared singular values of B_k (diagonal α₁…α_k, subdiagonal β₂…β_{k+1}) are the Ritz values of AᵀA on the
Krylov space. A Sturm count answers "is any Ritz value below x?" in O(k), so watching for a Ritz value below a
cutoff costs nothing next to a product with A.
"""

from __future__ import annotations


def normal_tridiagonal(alphas: list[float], betas: list[float]) -> tuple[list[float], list[float]]:
    """B_kᵀB_k for the lower bidiagonal B_k (diagonal α₁…α_k, subdiagonal β₂…β_{k+1}): (diagonal, off-diagonal)."""
    k = len(betas)
    diagonal = [alphas[i] ** 2 + betas[i] ** 2 for i in range(k)]
    off = [alphas[i + 1] * betas[i] for i in range(k - 1)]
    return diagonal, off


def count_below(diagonal: list[float], off: list[float], x: float) -> int:
    """Eigenvalues of the symmetric tridiagonal matrix below x (Sturm sequence, O(k))."""
    count, q = 0, 1.0
    tiny = 1e-300
    for i, d in enumerate(diagonal):
        q = d - x - (off[i - 1] ** 2 / q if i else 0.0)
        if q == 0.0:
            q = -tiny
        count += q < 0
    return count


def eigenvalue_bounds(diagonal: list[float], off: list[float]) -> tuple[float, float]:
    """(smallest, largest) eigenvalue of the tridiagonal matrix by bisection to 1e-3 relative accuracy."""
    radius = [abs(off[i - 1]) if i else 0.0 for i in range(len(diagonal))]
    for i in range(len(off)):
        radius[i] += abs(off[i])
    high = max(d + rad for d, rad in zip(diagonal, radius, strict=True))
    k = len(diagonal)

    def kth(target: int) -> float:
        low, up = 0.0, high
        for _ in range(200):
            mid = 0.5 * (low + up)
            if count_below(diagonal, off, mid) >= target:
                up = mid
            else:
                low = mid
            if up - low <= 1e-3 * up:
                break
        return up

    return kth(1), kth(k)


def watch(iteration: int) -> bool:
    """Whether to check the Ritz values at this iteration (every one early on, then every fifth)."""
    return iteration <= 60 or iteration % 5 == 0
