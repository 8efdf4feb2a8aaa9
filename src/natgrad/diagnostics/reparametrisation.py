"""Reparametrisation ξ = f(η): is the natural parameter gradient transported by F = Df(η)?"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import natgrad as ng
from natgrad.diagnostics._dense import dense_jacobian, flat, kernel_basis, model_point, norm, relative

Tensor = torch.Tensor


def chart_jacobian(f: Callable[[Tensor], Any], eta: Tensor) -> Tensor:
    """F = Df(η) (d_ξ × d_η, ξ flattened) by forward-mode differentiation (torch.func.jacfwd)."""
    if not isinstance(eta, torch.Tensor):
        raise TypeError(f"chart_jacobian: eta must be a Tensor, got {type(eta).__name__}")
    eta0 = eta.detach()
    return torch.func.jacfwd(lambda e: ng.flatten_params(f(e.reshape(eta0.shape))))(eta0.reshape(-1))


def pullback_metric(h: Tensor, jac_f: Tensor) -> Tensor:
    """h_η = Fᵀ h_ξ F: a parameter-space metric transported as a tensor (h 1-D means diag(h))."""
    h = torch.diag(h) if h.dim() == 1 else h
    return jac_f.T @ h @ jac_f


def kernel_invariance(jac_f: Tensor, kernel: Tensor) -> float:
    """Criterion for Moore–Penrose invariance: does F Fᵀ map ker J into itself?

    Returns ‖(I − N Nᵀ) F Fᵀ N‖₂ / ‖F Fᵀ‖₂ with N an orthonormal basis of ker J (0 iff F Fᵀ(ker J) ⊆ ker J).
    """
    if kernel.shape[1] == 0:
        return 0.0
    fft = jac_f @ jac_f.T
    image = fft @ kernel
    outside = image - kernel @ (kernel.T @ image)
    return float(torch.linalg.matrix_norm(outside, ord=2) / torch.linalg.matrix_norm(fft, ord=2))


@dataclass(frozen=True)
class ReparametrisationReport:
    """Outcome of :func:`reparametrisation_check` (Euclidean norms on flattened vectors).

    With w = w_η the natural parameter gradient of ψ = φ∘f at η, v = v_ξ that of φ at ξ = f(η),
    F = Df(η), J = Dφ(ξ):

    Attributes:
        parameter_gap: ‖F w − v‖ / ‖v‖ (0 for invariant choices of G⁻, e.g. transported min-h-norm).
        kernel_residual: ‖J (F w − v)‖ / ‖J v‖ (always 0: F w − v ∈ ker J).
        pushforward_gap: ‖J_ψ w − J_φ v‖ / ‖J_φ v‖ with the engine's pushforwards (always 0: theorem T2).
        criterion: ‖(I − NNᵀ) FFᵀ N‖₂ / ‖FFᵀ‖₂, N an orthonormal basis of ker J (0 iff Moore–Penrose in
            both charts gives F w = v for every loss).
        kernel_dim: dim ker J (ker of G = Jᵀ g J).
        jacobian_f: F.
        transported: F w.
        direct: v.
    """

    parameter_gap: float
    kernel_residual: float
    pushforward_gap: float
    criterion: float
    kernel_dim: int
    jacobian_f: Tensor
    transported: Tensor
    direct: Tensor


def reparametrisation_check(
    phi: Callable[[Any], Tensor],
    f: Callable[[Tensor], Any],
    eta: Tensor,
    loss: Callable[[Tensor], Tensor],
    metric: Any = None,
    inverse_eta: Any = None,
    inverse_xi: Any = None,
    rtol: float | None = None,
) -> ReparametrisationReport:
    """Compare the natural parameter gradient computed in η (pushed by F) with the one computed in ξ.

    Args:
        phi: parametrisation in the ξ chart.
        f: the change of chart η ↦ ξ (a diffeomorphism; F = Df(η) must be square and invertible).
        eta: η, a Tensor.
        loss: L.
        metric: output metric g (default Euclidean).
        inverse_eta: G⁻ in the η chart (default Moore–Penrose).
        inverse_xi: G⁻ in the ξ chart (default Moore–Penrose).
        rtol: cutoff for the numerical kernel of G_ξ = Jᵀ g J (default max(n, d)·eps on its singular values).
    """
    metric = ng.metrics.Euclidean() if metric is None else metric
    inverse_eta = ng.MoorePenrose() if inverse_eta is None else inverse_eta
    inverse_xi = ng.MoorePenrose() if inverse_xi is None else inverse_xi
    jac_f = chart_jacobian(f, eta)
    if jac_f.shape[0] != jac_f.shape[1]:
        raise ValueError(
            "reparametrisation_check: f must map η to a ξ with as many entries (Df(η) square), "
            f"got Df(η) of shape {tuple(jac_f.shape)}"
        )
    eta0 = eta.detach()
    xi = f(eta0)
    xi = {k: t.detach() for k, t in xi.items()} if isinstance(xi, dict) else xi.detach()

    def psi(e: Tensor) -> Tensor:
        return phi(f(e))

    res_eta = ng.natural_gradient(psi, eta0, loss, metric=metric, inverse=inverse_eta)
    res_xi = ng.natural_gradient(phi, xi, loss, metric=metric, inverse=inverse_xi)
    w = flat(res_eta.direction)
    v = flat(res_xi.direction)
    jac = dense_jacobian(phi, xi)
    fw = jac_f.to(w) @ w
    jv = jac @ v.to(jac)
    g = metric.matrix(model_point(phi, xi)).to(jac)
    gram = jac.T @ g @ jac
    kernel = kernel_basis(gram, rtol)
    residual = norm(jac @ (fw - v).to(jac))
    return ReparametrisationReport(
        parameter_gap=relative(fw, v),
        kernel_residual=residual / norm(jv) if norm(jv) > 0 else residual,
        pushforward_gap=relative(res_eta.pushforward.detach(), res_xi.pushforward.detach()),
        criterion=kernel_invariance(jac_f.to(jac), kernel),
        kernel_dim=kernel.shape[1],
        jacobian_f=jac_f,
        transported=fw,
        direct=v,
    )
