"""Parametrisations of a linear predictor: exact w0, Jacobian rank, errors."""

import pytest
import torch

import natgrad as ng
import natgrad.linear as nl


@pytest.fixture(autouse=True)
def _float64_by_default():
    """These tests build their tensors in float64; the default is restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _w0(d=6, seed=0):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "make",
    [
        lambda w: nl.DepthOne.from_end_to_end(w),
        lambda w: nl.DeepLinear.from_end_to_end(w, 3, generator=torch.Generator().manual_seed(1)),
        lambda w: nl.DeepLinear.from_end_to_end(w, 4, width=5, generator=torch.Generator().manual_seed(1)),
        lambda w: nl.DeepLinear.from_end_to_end(w, 3, balanced=True),
        lambda w: nl.ProductDiagonal.from_end_to_end(w, 3),
        lambda w: nl.ProductDiagonal.from_end_to_end(w, 2, imbalance=0.5),
        lambda w: nl.SignedDiagonal.from_end_to_end(w, 2, scale=0.1),
        lambda w: nl.SignedDiagonal.from_end_to_end(w, 3, scale=1.0),
    ],
)
def test_from_end_to_end_reproduces_w0(make):
    w0 = _w0()
    model = make(w0)
    torch.testing.assert_close(model(), w0, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(model.end_to_end(model.params()), w0, rtol=1e-13, atol=1e-14)


def test_deep_linear_is_the_layer_product():
    model = nl.DeepLinear.from_end_to_end(_w0(), 3, width=4, generator=torch.Generator().manual_seed(2))
    W1, W2, W3 = (p.detach() for p in model.layers)
    torch.testing.assert_close(model(), (W3 @ W2 @ W1).reshape(-1))


def test_balanced_deep_linear_is_balanced():
    model = nl.DeepLinear.from_end_to_end(_w0(), 3, balanced=True)
    layers = [p.detach() for p in model.layers]
    for lower, upper in zip(layers[:-1], layers[1:], strict=True):
        torch.testing.assert_close(upper.T @ upper, lower @ lower.T)


def _rank(model):
    return int(torch.linalg.matrix_rank(ng.jacobian(model.end_to_end, model.params())))


def test_balanced_product_diagonal_loses_rank_at_zeros():
    w0 = _w0()
    w0[[1, 4]] = 0.0
    assert _rank(nl.ProductDiagonal.from_end_to_end(w0, 2)) == 4
    assert _rank(nl.ProductDiagonal.from_end_to_end(w0, 3)) == 4
    assert _rank(nl.ProductDiagonal.from_end_to_end(w0, 2, imbalance=0.7)) == 6
    assert nl.jacobian_rank(nl.ProductDiagonal.from_end_to_end(w0, 2)) == 4


def test_signed_diagonal_and_imbalanced_deep_linear_keep_rank_at_zero():
    zero = torch.zeros(6)
    assert _rank(nl.SignedDiagonal.from_end_to_end(zero, 3, scale=0.01)) == 6
    assert _rank(nl.DeepLinear.from_end_to_end(zero, 3, generator=torch.Generator().manual_seed(0))) == 6
    assert _rank(nl.DeepLinear.from_end_to_end(zero, 3, balanced=True)) == 0


def test_signed_diagonal_jacobian_closed_form():
    model = nl.SignedDiagonal.from_end_to_end(_w0(), 3, scale=0.5)
    J = ng.jacobian(model.end_to_end, model.params())
    up, um = model.u_plus.detach(), model.u_minus.detach()
    torch.testing.assert_close(J, torch.cat([torch.diag(3 * up**2), torch.diag(-3 * um**2)], dim=1))


def test_float32_supported():
    w0 = _w0().float()
    model = nl.SignedDiagonal.from_end_to_end(w0, 2)
    assert model().dtype == torch.float32
    torch.testing.assert_close(model(), w0)


def test_errors_name_the_call():
    with pytest.raises(ValueError, match=r"^SignedDiagonal.from_end_to_end: scale must be > 0"):
        nl.SignedDiagonal.from_end_to_end(_w0(), 2, scale=0.0)
    with pytest.raises(ValueError, match=r"^ProductDiagonal.from_end_to_end: w0 must have shape \(d,\)"):
        nl.ProductDiagonal.from_end_to_end(torch.zeros(2, 2), 2)
    with pytest.raises(TypeError, match=r"^DepthOne.from_end_to_end: w0 must be a torch.Tensor"):
        nl.DepthOne.from_end_to_end([1.0, 2.0])
    with pytest.raises(ValueError, match=r"^DeepLinear.from_end_to_end: depth must be an int >= 1"):
        nl.DeepLinear.from_end_to_end(_w0(), 0)
    with pytest.raises(ValueError, match=r"^DeepLinear: widths must be"):
        nl.DeepLinear([3, 2])
