"""Identities of SPEC §1–2 checked on the engine's output (float64)."""

from __future__ import annotations

import pytest
import torch

import natgrad as ng
from cases import CASES, relative_error


def _point(case_name: str):
    case = next(c for c in CASES if c.name == case_name)
    phi, params = case.build(torch.float64)
    z = phi(params)
    n = z.numel()
    b = torch.randn(n, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    metric = ng.metrics.Dense(b @ b.T / n + 0.5 * torch.eye(n, dtype=torch.float64))
    return phi, params, z, metric


def _projector(phi, params, z, metric, inverse, method="auto") -> torch.Tensor:
    """P = J G⁻ Jᵀ g, column by column: the loss L(z) = ⟨g eᵢ, z⟩ has ∇z L = g eᵢ, so J v = P eᵢ."""
    g = metric.matrix(z)
    cols = []
    for i in range(z.numel()):
        gi = g[:, i].reshape(z.shape)
        res = ng.natural_gradient(
            phi, params, lambda out, gi=gi: (gi * out).sum(), metric, inverse, method=method
        )
        cols.append(res.pushforward.reshape(-1))
    return torch.stack(cols, dim=1)


def _inverses(d: int):
    g = torch.Generator().manual_seed(5)
    return {
        "moore-penrose": ng.MoorePenrose(),
        "ginverse": ng.GInverse(
            torch.randn(d, d, generator=g, dtype=torch.float64),
            torch.randn(d, d, generator=g, dtype=torch.float64),
        ),
        "minnorm": ng.MinNorm(0.5 + torch.rand(d, generator=g, dtype=torch.float64)),
    }


@pytest.mark.parametrize("inverse_name", ["moore-penrose", "ginverse", "minnorm"])
@pytest.mark.parametrize("case", ["mlp-overparam", "mlp-underparam", "tied"])
def test_projector_lemma(case, inverse_name):
    """L1: P = J G⁻ Jᵀ g is the g-orthogonal projector onto im J: P² = P, gP symmetric, PJ = J."""
    phi, params, z, metric = _point(case)
    inverse = _inverses(ng.num_params(params))[inverse_name]
    P = _projector(phi, params, z, metric, inverse)
    g = metric.matrix(z)
    J = ng.jacobian(phi, params)
    assert relative_error(P @ P, P) <= 1e-10
    assert relative_error(g @ P, (g @ P).T) <= 1e-10
    assert relative_error(P @ J, J) <= 1e-10


def test_projector_is_the_same_for_every_inverse_and_damping_is_not():
    phi, params, z, metric = _point("mlp-underparam")
    inverses = _inverses(ng.num_params(params))
    P = {name: _projector(phi, params, z, metric, inv) for name, inv in inverses.items()}
    assert relative_error(P["ginverse"], P["moore-penrose"]) <= 1e-10
    assert relative_error(P["minnorm"], P["moore-penrose"]) <= 1e-10
    gaps = [
        relative_error(_projector(phi, params, z, metric, ng.Damped(lam)), P["moore-penrose"])
        for lam in (1e-6, 1e-7)
    ]
    # ‖P_λ − P‖ = O(λ): a tenfold smaller λ gives a ~tenfold smaller gap.
    assert gaps[0] > 1e-4
    assert 8 < gaps[0] / gaps[1] < 12


@pytest.mark.parametrize("case", ["mlp-overparam", "cnn", "batchnorm-eval"])
def test_pushforward_independent_of_inverse_and_directions_differ_in_ker_j(case):
    phi, params, z, metric = _point(case)
    y = torch.randn(z.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def loss(out):
        return ((out - y) ** 2).sum()

    J = ng.jacobian(phi, params)
    results = {
        name: ng.natural_gradient(phi, params, loss, metric, inv)
        for name, inv in _inverses(ng.num_params(params)).items()
    }
    v_mp = ng.flatten_params(results["moore-penrose"].direction)
    for name in ("ginverse", "minnorm"):
        res = results[name]
        v = ng.flatten_params(res.direction)
        assert relative_error(res.pushforward, results["moore-penrose"].pushforward) <= 1e-10
        assert relative_error(v, v_mp) > 1e-2  # the vectors really differ ...
        assert float((J @ (v - v_mp)).norm() / (v - v_mp).norm()) <= 1e-10  # ... by an element of ker J
        assert float(v_mp.norm()) < float(v.norm())  # Moore–Penrose is the minimum-norm solution
    # the Moore–Penrose vector has no component in ker J: it lies in the row space of J
    row_space = torch.linalg.lstsq(J.T, v_mp.unsqueeze(1)).solution
    assert relative_error((J.T @ row_space).squeeze(1), v_mp) <= 1e-10


def test_pushforward_is_the_g_projection_of_the_ambient_natural_gradient():
    """T1: J v = Π^g_{im J}(g⁻¹ ∇z L), with Π^g = J (Jᵀ g J)⁺ Jᵀ g computed literally."""
    phi, params, z, metric = _point("mlp-underparam")
    y = torch.randn(z.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def loss(out):
        return (torch.log(torch.cosh(out - y))).sum()

    res = ng.natural_gradient(phi, params, loss, metric)
    g, J = metric.matrix(z), ng.jacobian(phi, params)
    grad_z = torch.func.grad(loss)(z).reshape(-1)
    projector = J @ torch.linalg.pinv(J.T @ g @ J, hermitian=True) @ J.T @ g
    expected = projector @ torch.linalg.solve(g, grad_z)
    assert relative_error(res.pushforward.reshape(-1), expected) <= 1e-10


def test_damping_bias_shrinks_linearly_in_lambda():
    phi, params, z, metric = _point("mlp-overparam")

    def loss(out):
        return (out**2).sum()

    v_mp = ng.flatten_params(ng.natural_gradient(phi, params, loss, metric).direction)
    errors = [
        relative_error(
            ng.flatten_params(ng.natural_gradient(phi, params, loss, metric, ng.Damped(lam)).direction), v_mp
        )
        for lam in (1e-3, 1e-4, 1e-5)
    ]
    assert errors[0] > errors[1] > errors[2] > 0
    assert 8 < errors[0] / errors[1] < 12 and 8 < errors[1] / errors[2] < 12


@pytest.mark.parametrize("method", ["primal", "dual", "lstsq"])
def test_cutoff_that_drops_a_true_direction_is_reported(method):
    """A cutoff above a true (small) eigenvalue lowers the reported rank and gives an O(1) error."""
    scales = torch.tensor([1.0, 0.5, 1e-3], dtype=torch.float64)
    M = (
        torch.linalg.qr(torch.randn(6, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64))[0]
        * scales
    )

    def phi(xi):
        return M.T @ xi  # a linear map R^6 -> R^3 of rank 3, the third direction small

    def loss(out):
        return ((out - 1.0) ** 2).sum() / 2

    xi = torch.zeros(6, dtype=torch.float64)
    exact = ng.natural_gradient(phi, xi, loss, method=method)
    cut = ng.natural_gradient(phi, xi, loss, inverse=ng.MoorePenrose(rtol=1e-4), method=method)
    assert exact.rank == 3 and cut.rank == 2
    assert relative_error(cut.pushforward, exact.pushforward) > 1e-2
    ref = ng.reference.natural_gradient(phi, xi, loss, inverse=ng.MoorePenrose(rtol=1e-4))
    assert ref.rank == 2
    assert relative_error(ng.flatten_params(cut.direction), ng.flatten_params(ref.direction)) <= 1e-10


def test_zero_gradient_gives_zero_direction():
    phi, params, z, metric = _point("cnn")
    res = ng.natural_gradient(phi, params, lambda out: (out * 0).sum(), metric)
    assert float(ng.flatten_params(res.direction).abs().max()) == 0.0
    assert res.rank == 9
