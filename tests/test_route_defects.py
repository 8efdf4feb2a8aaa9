"""Defects of the routes a review found, each pinned by a test that failed before its fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import natgrad as ng
from cases import relative_error

F64 = torch.float64


class _Masked(nn.Module):
    """forward(x, *, mask): a keyword-only input the structured route must pass on."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1 = nn.Linear(3, 5)
        self.lin2 = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor) -> torch.Tensor:
        return self.lin2(torch.tanh(self.lin1(x)) * mask)


def test_structured_route_passes_keyword_inputs_on():
    torch.manual_seed(0)
    model = _Masked().double()
    x = torch.randn(4, 3, dtype=F64)
    mask = (torch.arange(5) % 2).to(F64).expand(4, 5)
    phi, params = ng.from_module(model, x, kwargs={"mask": mask})
    metric = ng.metrics.Categorical()
    labels = torch.tensor([0, 1, 1, 0])

    def loss(z):
        return nn.functional.cross_entropy(z, labels, reduction="sum")

    ref = ng.reference.natural_gradient(phi, params, loss, metric)
    res = ng.natural_gradient(phi, params, loss, metric, method="structured")
    assert res.method == "structured" and "fallback" not in res.info
    assert res.rank == ref.rank
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= 1e-9
    auto = ng.natural_gradient(phi, params, loss, metric)
    assert auto.method == "structured" and "structured_refused" not in auto.info


class _TimeFirst(nn.Module):
    """Applies its Linear with the sequence axis first: outside the layer formulas (batch axis not first)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(20, 3)

    def forward(self, x):
        return self.lin(x.transpose(0, 1)).transpose(0, 1).reshape(x.shape[0], -1)


def _square(z):
    return 0.5 * (z**2).sum() + z.sum()


def test_unsupported_model_message_has_one_prefix_and_auto_records_the_bare_reason():
    torch.manual_seed(1)
    phi, params = ng.from_module(_TimeFirst().double(), torch.randn(2, 4, 20, dtype=F64))
    with pytest.raises(ng.StructuredUnsupported) as refused:
        ng.natural_gradient(phi, params, _square, method="structured")
    message = str(refused.value)
    assert message.startswith("natural_gradient: method='structured' cannot be used here: module 'lin'")
    assert message.count(": method=") == 1 and "structured_kernel:" not in message
    res = ng.natural_gradient(phi, params, _square)
    assert res.method == "dual"  # r = 24 outputs, d = 63 parameters: the rule without the structured route
    assert res.info["structured_refused"].startswith("module 'lin' (Linear) returned shape (4, 2, 3)")
    ref = ng.reference.natural_gradient(phi, params, _square)
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= 1e-9


def test_a_bug_in_kernel_assembly_is_not_reported_as_unsupported(monkeypatch):
    """A ValueError that is not the 'unsupported' signal propagates instead of a silent fallback to dual."""
    from natgrad._routes import _structured

    torch.manual_seed(2)
    phi, params = ng.from_module(nn.Linear(6, 2).double(), torch.randn(4, 6, dtype=F64))  # r = 8 < d = 14
    monkeypatch.setattr(_structured, "factor_for", lambda local, z: torch.ones(3, 2, 2, dtype=F64))
    for method in ("auto", "structured"):
        with pytest.raises(
            ValueError, match=r"^structured_kernel: a block output_factor must have shape"
        ) as err:
            ng.natural_gradient(phi, params, _square, method=method)
        assert not isinstance(err.value, ng.StructuredUnsupported)


def test_moore_penrose_error_states_the_default_cutoff_it_uses():
    with pytest.raises(ValueError, match=r"None for the default 10·min\(r, d\)·eps") as err:
        ng.MoorePenrose(rtol=2.0)
    assert isinstance(err.value, ng.InvalidInputError)
    # the stated default is the one applied
    assert (
        ng.MoorePenrose().resolve_rtol(F64, 7, 3)
        == 10 * 3 * torch.finfo(F64).eps
        == ng.default_rtol(F64, 7, 3)
    )
