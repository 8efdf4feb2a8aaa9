"""K⁺ and (K + λI)⁻¹ for a PSD kernel K (r × r): a Cholesky factor when the cutoff keeps every eigenvalue, else eigh.

The Moore–Penrose cutoff keeps eigenvalues λ > rtol·λ_max. When λ_min > rtol·λ_max it keeps all of them and
K⁺ = K⁻¹, which a Cholesky factor applies at a fraction of the cost of an eigendecomposition. That case is
proved, not guessed, with two more Cholesky factorisations (a symmetric matrix is positive definite exactly
when its Cholesky factorisation exists):

* an upper bound α ≥ λ_max: twice a few steps of block power iteration, accepted when αI − K factorises,
  else min(‖K‖_F, max row sum of |K|);
* K − (rtol + 4(r+1)·eps)·α·I factorises, so λ_min > rtol·α ≥ rtol·λ_max; the extra 4(r+1)·eps·α covers the
  rounding of the factorisation itself (about (r+1)·eps·‖K‖), so a kernel whose smallest eigenvalue sits within
  rounding of the cutoff is never certified.

A kernel that fails either test goes to eigh, which applies the cutoff literally.
"""

from __future__ import annotations

import torch
from torch import Tensor

from natgrad.linalg._spectral import robust_eigh

POWER_STEPS = 3
BLOCK = 4


def retained(eigenvalues: Tensor, rtol: float) -> Tensor:
    """The mask of eigenvalues λ > rtol·λ_max (and > 0): the cutoff of every route."""
    top = eigenvalues.max() if eigenvalues.numel() else eigenvalues.new_zeros(())
    return (eigenvalues > rtol * top) & (eigenvalues > 0)


def _factorises(matrix: Tensor) -> bool:
    return int(torch.linalg.cholesky_ex(matrix)[1]) == 0


def _largest_eigenvalue_bound(kernel: Tensor) -> float:
    """α ≥ λ_max(K), as tight as a cheap test allows."""
    rigorous = min(float(torch.linalg.matrix_norm(kernel)), float(kernel.abs().sum(dim=1).max()))
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(BLOCK, kernel.shape[0], generator=gen, dtype=torch.float64)
    x = x.to(dtype=kernel.dtype, device=kernel.device)
    for _ in range(POWER_STEPS):  # rows times K (= K times columns, K symmetric): the faster layout
        x = (x / torch.linalg.vector_norm(x, dim=1, keepdim=True)) @ kernel
    guess = 2.0 * float(
        torch.linalg.vector_norm(x, dim=1).max()
    )  # power iteration approaches λ_max from below
    if guess < rigorous:
        eye = torch.eye(kernel.shape[0], dtype=kernel.dtype, device=kernel.device)
        if _factorises(guess * eye - kernel):
            return guess
    return rigorous


def certified_cholesky(kernel: Tensor, rtol: float) -> Tensor | None:
    """The lower Cholesky factor of K when every eigenvalue is proved above rtol·λ_max, else None."""
    chol, info = torch.linalg.cholesky_ex(kernel)
    if int(info) != 0 or not bool(torch.isfinite(chol).all()):
        return None
    top = _largest_eigenvalue_bound(kernel)
    if not top > 0:
        return None
    r = kernel.shape[0]
    eye = torch.eye(r, dtype=kernel.dtype, device=kernel.device)
    # The shift adds 4·(r+1)·eps·α to the cutoff: a factorisation computed in floating point is exact for a
    # matrix within about (r+1)·eps·‖K‖ of the one given, so a smaller shift would prove nothing.
    allowance = 4 * (r + 1) * torch.finfo(kernel.dtype).eps
    return chol if _factorises(kernel - ((rtol + allowance) * top) * eye) else None


class KernelInverse:
    """Products with K⁺ (retained eigenpairs only) and (K + λI)⁻¹ for a PSD kernel K.

    The eigendecomposition of an uncertified K is computed only when a product needs it: (K + λI)⁻¹x alone
    is a Cholesky solve of K + λI (positive definite for λ > 0), and the rank alone needs the eigenvalues
    only (``eigvalsh``); each is several times cheaper than the eigenvectors.

    The certificate of full rank (``certified_cholesky``) is attempted on first use of K⁺, the rank or ``method``.

    Attributes:
        fallback: the eigh attempt that succeeded when the first failed (see ``robust_eigh``), else None.
    """

    def __init__(self, kernel: Tensor, rtol: float) -> None:
        self.kernel, self.rtol = kernel, rtol
        self._certified: bool = False  # whether the certificate below was attempted (on first need)
        self._chol: Tensor | None = None
        self._damped_chol: dict[float, Tensor | None] = {}
        self.fallback: str | None = None
        self._rank: int | None = None
        self.damped_by: str | None = None  # how the last damped product was applied ("cholesky" or "eigh")

    def _certify(self) -> Tensor | None:
        # only K⁺, the rank and ``method`` need it: a damped solve alone factorises K + λI and nothing else
        if not self._certified:
            self._certified = True
            self._chol = certified_cholesky(self.kernel, self.rtol)
            if self._chol is not None:
                self._rank = self.kernel.shape[0]
        return self._chol

    @property
    def certified(self) -> bool:
        """Whether the full-rank certificate has run (`method` is then known without further work)."""
        return self._certified

    @property
    def method(self) -> str:
        """ "cholesky" (certified full rank) or "eigh"."""
        return "cholesky" if self._certify() is not None else "eigh"

    def _spectrum(self) -> None:
        if not hasattr(self, "U"):
            r = self.kernel.shape[0]
            self.evals, self.U, self.fallback = robust_eigh(
                self.kernel, f"eigh of the {r} × {r} kernel K = AAᵀ"
            )
            keep = retained(self.evals, self.rtol)
            self._rank, self._Uk, self._ek = int(keep.sum()), self.U[:, keep], self.evals[keep]

    @property
    def known_rank(self) -> int | None:
        """The rank when it is already known (certified or computed), else None; computes nothing."""
        return self._rank

    @property
    def rank(self) -> int:
        """Number of eigenvalues kept by the cutoff λ > rtol·λ_max."""
        self._certify()
        if self._rank is None:
            try:
                self._rank = int(retained(torch.linalg.eigvalsh(self.kernel), self.rtol).sum())
            except torch.linalg.LinAlgError:  # eigh's fallbacks (robust_eigh) then decide
                self._spectrum()
        assert self._rank is not None
        return self._rank

    def pinv(self, x: Tensor) -> Tensor:
        """K⁺ x on the retained eigenpairs."""
        chol = self._certify()
        if chol is not None:
            return torch.cholesky_solve(x[:, None], chol)[:, 0]
        self._spectrum()
        return self._Uk @ ((self._Uk.T @ x) / self._ek)

    def _shifted_cholesky(self, lam: float) -> Tensor | None:
        if lam not in self._damped_chol:
            eye = torch.eye(self.kernel.shape[0], dtype=self.kernel.dtype, device=self.kernel.device)
            chol, info = torch.linalg.cholesky_ex(self.kernel + lam * eye)
            ok = int(info) == 0 and bool(torch.isfinite(chol).all())
            self._damped_chol[lam] = chol if ok else None
        return self._damped_chol[lam]

    def damped(self, x: Tensor, lam: float) -> Tensor:
        """(K + λI)⁻¹ x for λ > 0 (all eigenpairs: damping needs no cutoff).

        A Cholesky solve of K + λI; eigh (negative rounding eigenvalues of K clamped to 0) only when the
        shifted matrix does not factorise in the kernel's precision (λ below the rounding of K).
        """
        chol = self._shifted_cholesky(lam)
        self.damped_by = "cholesky" if chol is not None else "eigh"
        if chol is not None:
            return torch.cholesky_solve(x[:, None], chol)[:, 0]
        self._spectrum()
        return self.U @ ((self.U.T @ x) / (self.evals.clamp_min(0) + lam))

    def damped_coefficients(self, a_grad: Tensor, lam: float) -> Tensor:
        """w with (G + λI)⁻¹∇ = Aᵀw + ∇/λ for K = AAᵀ, from a_grad = A∇ (any ∇, in the range of Aᵀ or not).

        ∇ = Aᵀy + ∇⊥ with y = K⁺A∇; (G + λI)⁻¹Aᵀy = Aᵀ(K + λI)⁻¹y and (G + λI)⁻¹∇⊥ = ∇⊥/λ, so
        w = (K + λI)⁻¹y − y/λ.
        """
        y = self.pinv(a_grad)
        return self.damped(y, lam) - y / lam
