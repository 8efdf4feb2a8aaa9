"""Matrix-free route: Krylov solves on A x = Bᵀ(J x) and Aᵀ y = Jᵀ(B y); nothing of size r×d or d×d exists."""

from __future__ import annotations

import warnings

from torch import Tensor

from natgrad._routes._problem import Problem
from natgrad.linalg import Damped, GInverse, Inverse, MinNorm, MoorePenrose, cg, lsqr


def solve_krylov(problem: Problem, inverse: Inverse, tol: float, max_iter: int) -> tuple[Tensor, None, dict]:
    """v = G⁻∇ with LSQR (Moore–Penrose, GInverse, MinNorm) or CG on G + λI (Damped).

    Moore–Penrose: v = A⁺c when ∇ = Aᵀc, else v = A⁺ (Aᵀ)⁺ ∇ = G⁺∇ (two least-squares solves).
    The numerical rank is not available on this route (reported as None).
    """
    r, d = problem.r, problem.d
    a, at = problem.a_matvec, problem.at_matvec
    grad, c = problem.grad, problem.c
    solves = []
    mp = inverse if isinstance(inverse, MoorePenrose) else getattr(inverse, "moore_penrose", None)
    # The Moore–Penrose cutoff, watched through LSQR's Ritz values: never resolve a dropped direction.
    cutoff = None if mp is None else mp.resolve_rtol(grad.dtype, r, d)

    def least_squares(mv, rmv, b, cols):
        x, info = lsqr(mv, rmv, b, cols, tol=tol, max_iter=max_iter, cutoff=cutoff)
        solves.append(info)
        return x

    if isinstance(inverse, Damped):
        lam = float(inverse.damping)
        v, info = cg(lambda x: at(a(x)) + lam * x, grad, tol=tol, max_iter=max_iter)
        solves.append(info)
    else:
        if isinstance(inverse, MinNorm):
            h_is = inverse.inv_sqrt("natural_gradient")
            scale = (lambda x: h_is * x) if h_is.ndim == 1 else (lambda x: h_is @ x)
            a_h, at_h = (lambda x: a(scale(x))), (lambda y: scale(at(y)))
            grad_h = scale(grad)
        else:
            a_h, at_h, grad_h = a, at, grad
        if c is not None:
            v = least_squares(a_h, at_h, c, d)
        else:
            y = least_squares(at_h, a_h, grad_h, r)
            v = least_squares(a_h, at_h, y, d)
        if isinstance(inverse, MinNorm):
            v = scale(v)
        elif isinstance(inverse, GInverse):

            def complement(x: Tensor) -> Tensor:
                return x - least_squares(a, at, a(x), d)

            if inverse.U is not None:
                v = v + complement(inverse.U @ grad)
            if inverse.V is not None:
                v = v + inverse.V @ complement(grad)
    info = {
        "iterations": sum(s.iterations for s in solves),
        "residual": max(s.residual for s in solves),
        "converged": all(s.converged for s in solves),
        "near_singular": any(s.near_singular for s in solves),
    }
    if info["near_singular"]:
        warnings.warn(
            "natural_gradient: krylov route stopped before resolving a direction whose singular value is below "
            f"the Moore–Penrose cutoff (rtol {cutoff:.3g}); the answer is the last iterate before it, not a "
            "certified one; use method='structured-krylov' (module models) or a dense route",
            RuntimeWarning,
            stacklevel=3,
        )
    elif not info["converged"]:
        warnings.warn(
            f"natural_gradient: krylov route stopped after {max_iter} iterations at relative residual "
            f"{info['residual']:.3g} > tol {tol:.3g}; raise max_iter, loosen tol, or use method='dual'",
            RuntimeWarning,
            stacklevel=3,
        )
    return v, None, info
