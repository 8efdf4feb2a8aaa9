"""The structured routes on CUDA in float32 and float64 against the float64 reference (skipped without CUDA).

Run by ``make gpu-check``; on a machine without CUDA every test is skipped.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import natgrad as ng
from cases import relative_error

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("method", ["structured", "structured-krylov", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_structured_routes_on_cuda_match_reference(method, dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 5))
    x, labels = torch.randn(12, 8), torch.randint(0, 5, (12,))
    phi64, params64 = ng.from_module(model.double(), x.double())

    def loss(z):
        return nn.functional.cross_entropy(z, labels.to(z.device), reduction="sum")

    ref = ng.reference.natural_gradient(phi64, params64, loss, ng.metrics.Categorical())
    phi, params = ng.from_module(model.to("cuda", dtype), x.to("cuda", dtype))
    res = ng.natural_gradient(phi, params, loss, ng.metrics.Categorical(), method=method)
    v = ng.flatten_params(res.direction)
    assert v.device.type == "cuda" and v.dtype == dtype
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    assert relative_error(v.cpu(), ng.flatten_params(ref.direction)) <= tol
