"""A parametrisation that carries its own materialised Jacobian (``phi.dense_jacobian``): the engine uses it,
after checking it against one autodiff product, and gives the natural gradient it gives without it."""

from __future__ import annotations

import pytest
import torch

import natgrad as ng
from natgrad import pde
from natgrad.exceptions import InvalidInputError
from natgrad.models import Linearization

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
