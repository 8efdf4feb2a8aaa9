"""eigh failures (LAPACK non-convergence, non-finite factors) fall back and are recorded, or raise natgrad's error."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import natgrad as ng
from cases import METRICS, _module_case, relative_error
from natgrad.linalg._spectral import robust_eigh

TOL64 = 1e-9
_eigh = torch.linalg.eigh


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def _problem():
    # Each input twice: K = AAᵀ is rank deficient, so the kernel routes use eigh (not the certified Cholesky)
    build = _module_case(_mlp, lambda g: torch.randn(2, 3, generator=g).repeat(2, 1), 0)
    phi, params = build(torch.float64)
    metric, loss = next(m for m in METRICS if m.name == "categorical").make(phi(params))
    return phi, params, metric, loss


def _raise(*args, **kwargs):
    raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")


def _nan(matrix, *args, **kwargs):
    evals, evecs = _eigh(matrix, *args, **kwargs)
    return evals * float("nan"), evecs


def _failing(first: Callable, calls: int) -> Callable:
    """torch.linalg.eigh with its first ``calls`` calls replaced by ``first``."""
    seen = [0]

    def eigh(matrix, *args, **kwargs):
        seen[0] += 1
        return first(matrix, *args, **kwargs) if seen[0] <= calls else _eigh(matrix, *args, **kwargs)

    return eigh


@pytest.mark.parametrize("route", ["primal", "dual", "structured", "structured-krylov"])
@pytest.mark.parametrize(
    ("failure", "calls", "recorded"),
    [(_raise, 1, "float64"), (_nan, 1, "float64"), (_raise, 2, "float64-shifted")],
)
def test_failed_eigh_falls_back_to_the_reference_answer(monkeypatch, route, failure, calls, recorded):
    phi, params, metric, loss = _problem()
    ref = ng.reference.natural_gradient(phi, params, loss, metric)
    plain = ng.natural_gradient(phi, params, loss, metric, method=route)
    assert "spectral_fallback" not in plain.info
    assert plain.info.get("kernel_solve", "eigh") == "eigh"
    monkeypatch.setattr(torch.linalg, "eigh", _failing(failure, calls))
    res = ng.natural_gradient(phi, params, loss, metric, method=route)
    assert res.method == route
    assert res.info["spectral_fallback"] == recorded
    assert res.rank == ref.rank
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) < TOL64


@pytest.mark.parametrize(
    ("route", "named"),
    [
        ("primal", "G = AᵀA"),
        ("dual", "kernel K = AAᵀ"),
        ("structured", "kernel K = AAᵀ"),
        ("structured-krylov", "preconditioner Gram LᵀL"),
    ],
)
def test_eigh_failing_every_attempt_raises_natgrad_error(monkeypatch, route, named):
    phi, params, metric, loss = _problem()
    monkeypatch.setattr(torch.linalg, "eigh", _raise)
    with pytest.raises(
        ng.FactorizationError, match=rf"eigh of the \d+ × \d+ .*{named}.*Damped.*structured-krylov"
    ):
        ng.natural_gradient(phi, params, loss, metric, method=route)


def test_failed_svd_falls_back_on_the_lstsq_route(monkeypatch):
    phi, params, metric, loss = _problem()
    ref = ng.reference.natural_gradient(phi, params, loss, metric)
    svd, seen = torch.linalg.svd, [0]

    def failing(matrix, *args, **kwargs):
        seen[0] += 1
        return _raise() if seen[0] == 1 else svd(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", failing)
    res = ng.natural_gradient(phi, params, loss, metric, method="lstsq")
    assert res.info["spectral_fallback"] == "float64"
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) < TOL64
    monkeypatch.setattr(torch.linalg, "svd", _raise)
    with pytest.raises(ng.FactorizationError, match=r"svd of the \d+ × \d+ matrix A"):
        ng.natural_gradient(phi, params, loss, metric, method="lstsq")


def test_shift_keeps_eigenpairs_float32_casts_back(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    kernel = a @ a.T  # rank 4: two zero eigenvalues
    exact, _ = _eigh(kernel)
    monkeypatch.setattr(torch.linalg, "eigh", _failing(_raise, 2))
    evals, evecs, how = robust_eigh(kernel.to(torch.float32), "test")
    assert how == "float64-shifted" and evals.dtype == torch.float32
    scale = float(exact.abs().max())
    assert float((evals.double() - exact).abs().max()) < 1e-6 * scale
    recon = evecs.double() @ torch.diag(evals.double()) @ evecs.double().T
    assert float((recon - kernel).abs().max()) < 1e-5 * scale
