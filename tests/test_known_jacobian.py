"""A parametrisation that carries its own materialised Jacobian (``phi.dense_jacobian``): the engine uses it,
after checking it against one autodiff product, and gives the natural gradient it gives without it."""

from __future__ import annotations

import pytest
import torch

import natgrad as ng
from natgrad import pde
from natgrad.exceptions import InvalidInputError
from natgrad.models import AffineMap, Linearization

DT = torch.float64
BOX = [(0.0, 1.0), (0.0, 1.0)]


def _problem(widths: tuple[int, ...]) -> pde.Problem:
    net = pde.Network(pde.mlp(list(widths), generator=torch.Generator().manual_seed(5)))
    return pde.Problem(
        net,
        [
            pde.interior(pde.grid(4, BOX), lambda jet, x: jet.laplacian() + x[:, 0] * x[:, 1]),
            pde.boundary(pde.box_boundary_grid(3, BOX), lambda jet, x: jet.value - x[:, 1]),
        ],
    )


class _Carrying:
    """A linear map θ ↦ r₀ + M (θ − θ₀) with ``dense_jacobian`` set to anything."""

    def __init__(self, linearised, dense_jacobian) -> None:
        self.linearised = linearised
        self.dense_jacobian = dense_jacobian

    def __call__(self, params):
        return self.linearised(params)


@pytest.mark.parametrize("widths", [(2, 3, 1), (2, 6, 6, 1)], ids=["primal (d<=N)", "dual (d>N)"])
@pytest.mark.parametrize("weighted", [False, True], ids=["euclidean", "weighted metric"])
def test_the_maps_own_jacobian_gives_the_natural_gradient_of_autodiff(widths, weighted) -> None:
    problem = _problem(widths)
    params = problem.network.params()
    linearised = problem.linearize(params)
    assert torch.equal(linearised.dense_jacobian, problem.jacobian(params))
    lin = Linearization(linearised, params)
    assert lin.dense_jacobian is not None and torch.equal(lin.jacobian(), linearised.dense_jacobian)
    weights = torch.linspace(0.5, 2.0, problem.num_residuals, dtype=DT)

    def loss(r):
        return 0.5 * ((weights if weighted else 1.0) * r.pow(2)).sum()

    fast = ng.natural_gradient(linearised, params, loss)
    plain = ng.natural_gradient(lambda p: linearised(p), params, loss)  # no attribute: J from VJPs
    assert (
        fast.method
        == plain.method
        == ("primal" if ng.num_params(params) <= problem.num_residuals else "dual")
    )
    got, want = ng.flatten_params(fast.direction), ng.flatten_params(plain.direction)
    assert torch.equal(got, want)  # same A in the same layout: bitwise the VJP/JVP path's answer
    ref = ng.reference.natural_gradient(problem.residuals, params, loss)
    s = torch.linalg.svdvals(problem.jacobian(params))
    tol = 10 * float(s[0] / s[-1]) ** 2 * torch.finfo(DT).eps
    assert float((got - ng.flatten_params(ref.direction)).norm() / want.norm()) <= tol


def test_a_wrong_or_misshapen_dense_jacobian_is_refused_before_any_solve() -> None:
    problem = _problem((2, 3, 1))
    params = problem.network.params()
    linearised = problem.linearize(params)
    jac = linearised.dense_jacobian
    with pytest.raises(
        InvalidInputError, match=r"dense_jacobian must be .* shape \(28, 13\), got \(28, 12\)"
    ):
        ng.natural_gradient(_Carrying(linearised, jac[:, 1:]), params, lambda r: 0.5 * r.pow(2).sum())
    with pytest.raises(InvalidInputError, match=r"dense_jacobian must be .* got list"):
        Linearization(_Carrying(linearised, [[0.0]]), params)
    wrong = jac.clone()
    wrong[3, 4] += 1e-3 * float(jac.abs().max())
    with pytest.raises(InvalidInputError, match="dense_jacobian disagrees with autodiff"):
        ng.natural_gradient(_Carrying(linearised, wrong), params, lambda r: 0.5 * r.pow(2).sum())


class _CountingAffine(AffineMap):
    """An affine map that counts its evaluations."""

    calls = 0

    def __call__(self, params):
        type(self).calls += 1
        return super().__call__(params)


def _affine(n: int, d: int, rank: int, dtype: torch.dtype, seed: int = 0, z_shape=None):
    gen = torch.Generator().manual_seed(seed)
    jac = (torch.randn(n, rank, generator=gen, dtype=DT) @ torch.randn(rank, d, generator=gen, dtype=DT)).to(
        dtype
    )
    theta = {
        "w": torch.randn(d - 2, generator=gen, dtype=DT).to(dtype),
        "b": torch.randn(2, generator=gen, dtype=DT).to(dtype),
    }
    z0 = torch.randn(n, generator=gen, dtype=DT).to(dtype)
    return _CountingAffine(z0 if z_shape is None else z0.reshape(z_shape), jac, theta), theta


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_an_affine_map_is_taken_as_it_is_without_evaluating_it(dtype) -> None:
    phi, theta = _affine(7, 11, 4, dtype, z_shape=(7, 1))
    _CountingAffine.calls = 0
    lin = Linearization(phi, theta)
    assert _CountingAffine.calls == 0
    assert (
        lin.info["jvp"] == "forward" and lin.z.shape == (7, 1) and torch.equal(lin.z_flat, phi.z0.reshape(-1))
    )
    assert lin.jacobian() is lin.dense_jacobian and torch.equal(lin.jacobian(), phi.dense_jacobian)
    gen = torch.Generator().manual_seed(1)
    t = torch.randn(11, generator=gen, dtype=DT).to(dtype)
    u = torch.randn(7, generator=gen, dtype=DT).to(dtype)
    plain = Linearization(lambda p: phi(p), theta)  # the same map seen through autodiff
    assert torch.equal(lin.jvp(t), plain.jvp(t)) and torch.equal(lin.vjp(u), plain.vjp(u))
    rows_t, rows_u = torch.stack([t, 2 * t]), torch.stack([u, -u])
    tol = 10 * torch.finfo(dtype).eps * float(phi.dense_jacobian.abs().sum())
    assert float((lin.jvp_rows(rows_t) - plain.jvp_rows(rows_t)).abs().max()) <= tol
    assert float((lin.vjp_rows(rows_u) - plain.vjp_rows(rows_u)).abs().max()) <= tol


def test_an_affine_map_away_from_its_point_has_the_value_of_the_map() -> None:
    phi, theta = _affine(6, 9, 3, DT)
    moved = {k: v + 0.25 for k, v in theta.items()}
    lin = Linearization(phi, moved)
    assert torch.allclose(lin.z_flat, phi(moved), rtol=0, atol=1e-14)
    assert torch.equal(lin.dense_jacobian, phi.dense_jacobian)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(12, 30, 5), (30, 12, 5), (20, 20, 12)], ids=["dual", "primal", "square"])
@pytest.mark.parametrize("inverse", [ng.MoorePenrose(), ng.Damped(1e-3)], ids=["moore-penrose", "damped"])
def test_the_natural_gradient_of_an_affine_map_is_that_of_autodiff_and_the_reference(
    dtype, shape, inverse
) -> None:
    n, d, rank = shape
    phi, theta = _affine(n, d, rank, dtype, seed=n + d)
    weights = torch.linspace(0.5, 2.0, n, dtype=dtype)

    def loss(z):
        return 0.5 * (weights * (z - 1.0).pow(2)).sum()

    got = ng.natural_gradient(phi, theta, loss, inverse=inverse)
    plain = ng.natural_gradient(lambda p: phi(p), theta, loss, inverse=inverse)  # J from autodiff products
    ref = ng.reference.natural_gradient(phi, theta, loss, inverse=inverse)
    g, r = ng.flatten_params(got.direction), ng.flatten_params(ref.direction)
    assert torch.equal(g, ng.flatten_params(plain.direction)) and got.method == plain.method
    if isinstance(inverse, ng.MoorePenrose):
        assert got.rank == ref.rank == rank
    # G is singular (rank < d): the solve's condition is σ₁²/σ_rank² (Moore–Penrose) or (σ₁² + λ)/λ (damped)
    s = torch.linalg.svdvals(phi.dense_jacobian.to(DT) * weights.to(DT).sqrt()[:, None])
    lam = inverse.damping if isinstance(inverse, ng.Damped) else 0.0
    kappa = float((s[0] ** 2 + lam) / (lam if lam else s[rank - 1] ** 2))
    assert float((g.to(DT) - r).norm() / r.norm()) <= 10 * kappa * torch.finfo(dtype).eps


def test_a_misshapen_affine_map_is_refused_naming_the_shapes() -> None:
    theta = {"w": torch.zeros(4, dtype=DT)}
    with pytest.raises(ValueError, match=r"AffineMap: jacobian must have shape .* \(3, 4\), got \(3, 5\)"):
        AffineMap(torch.zeros(3, dtype=DT), torch.zeros(3, 5, dtype=DT), theta)
    phi = AffineMap(torch.zeros(3, dtype=DT), torch.zeros(3, 4, dtype=DT), theta)
    with pytest.raises(InvalidInputError, match="the parameters have 5; evaluate the map at parameters like"):
        ng.natural_gradient(phi, {"w": torch.zeros(5, dtype=DT)}, lambda z: 0.5 * z.pow(2).sum())


def test_the_linearised_residuals_are_an_affine_map_the_engine_does_not_evaluate() -> None:
    problem = _problem((2, 6, 6, 1))
    params = problem.network.params()
    linearised = problem.linearize(params)
    assert isinstance(linearised, AffineMap) and torch.equal(linearised.r0, problem.residuals(params))
    calls = []
    original = type(linearised).__call__
    type(linearised).__call__ = lambda self, p: calls.append(1) or original(self, p)  # type: ignore[method-assign]
    try:
        result = ng.natural_gradient(linearised, params, lambda r: 0.5 * r.pow(2).sum())
    finally:
        type(linearised).__call__ = original  # type: ignore[method-assign]
    assert not calls
    ref = ng.reference.natural_gradient(problem.residuals, params, lambda r: 0.5 * r.pow(2).sum())
    err = ng.flatten_params(result.direction) - ng.flatten_params(ref.direction)
    s = torch.linalg.svdvals(linearised.dense_jacobian)
    tol = 10 * float(s[0] / s[-1]) ** 2 * torch.finfo(DT).eps
    assert float(err.norm() / ng.flatten_params(ref.direction).norm()) <= tol
