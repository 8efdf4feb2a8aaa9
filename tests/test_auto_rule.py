"""``auto`` follows its measured rule at given sizes and budgets (deterministic: nothing is timed), and says why.

The rule (``choose_route``): d ≤ r → primal, then structured-krylov for module models; r < d → structured for
module models, then dual, then structured-krylov; krylov last. Each route is taken only where it fits the memory
budget, so the budgets below sit one byte either side of what the registry counts for a route.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import natgrad as ng
from cases import relative_error
from natgrad.natural_gradient import route_memory

GIB = 2**30


@pytest.mark.parametrize(
    ("r", "d", "structured", "expected"),
    [
        (5000, 200, False, "primal"),
        (5000, 200, True, "primal"),
        (64, 1000, False, "dual"),
        (64, 1000, True, "structured"),
        (200, 200, True, "primal"),  # d = r: the primal side
    ],
)
def test_auto_takes_the_smaller_gram_matrix_when_it_fits(r, d, structured, expected):
    assert ng.choose_route(r, d, 4, GIB, structured=structured) == expected


@pytest.mark.parametrize("itemsize", [4, 8])
def test_d_at_most_r_goes_matrix_free_when_g_does_not_fit(itemsize):
    r, d = 40_000, 12_000
    budget = route_memory("primal", r, d, itemsize)
    assert ng.choose_route(r, d, itemsize, budget) == "primal"
    assert ng.choose_route(r, d, itemsize, budget - 1) == "krylov"  # a plain callable: no layer factors
    assert ng.choose_route(r, d, itemsize, budget - 1, structured=True) == "structured-krylov"


@pytest.mark.parametrize("itemsize", [4, 8])
def test_r_below_d_goes_from_structured_to_dual_to_matrix_free_as_the_budget_shrinks(itemsize):
    r, d = 3_000, 50_000
    structured, dual = route_memory("structured", r, d, itemsize), route_memory("dual", r, d, itemsize)
    assert structured < dual  # K alone is smaller than A with K
    assert ng.choose_route(r, d, itemsize, structured, structured=True) == "structured"
    assert ng.choose_route(r, d, itemsize, structured - 1, structured=True) == "structured-krylov"
    assert ng.choose_route(r, d, itemsize, dual) == "dual"
    assert ng.choose_route(r, d, itemsize, dual - 1) == "krylov"


def _mlp(batch: int, width: int, inputs: int = 3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(inputs, width), nn.Tanh(), nn.Linear(width, 2)).double()
    x = torch.randn(batch, inputs, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    phi, params = ng.from_module(model, x)
    return phi, params, lambda z: 0.5 * (z**2).sum() + z.sum()


def test_info_says_which_rule_chose_the_route_and_what_it_passed_over():
    phi, params, loss = _mlp(4, 16)  # r = 8 < d = 98
    res = ng.natural_gradient(phi, params, loss)
    assert res.method == "structured"
    assert res.info["auto"].startswith("structured at r=8, d=98: r < d and a module model")
    assert "passed over" not in res.info["auto"]
    res = ng.natural_gradient(phi, params, loss, inverse=ng.MinNorm(torch.ones(98, dtype=torch.float64)))
    assert res.method == "dual"
    assert "structured (hands this problem to dual" in res.info["auto"]
    tight = ng.natural_gradient(phi, params, loss, memory_budget=1024)
    assert tight.method == "krylov"
    assert (
        "structured (needs about" in tight.info["auto"] and "over the budget of 1.0 KiB" in tight.info["auto"]
    )
    assert "dual (needs about" in tight.info["auto"]
    explicit = ng.natural_gradient(phi, params, loss, method="dual")
    assert "auto" not in explicit.info


def test_d_at_most_r_module_model_beyond_primal_takes_structured_krylov():
    phi, params, loss = _mlp(200, 13, inputs=20)  # r = 400 ≥ d = 301
    primal = route_memory("primal", 400, 301, 8)
    assert route_memory("structured-krylov", 400, 301, 8) < primal
    res = ng.natural_gradient(phi, params, loss, memory_budget=primal - 1)
    ref = ng.reference.natural_gradient(phi, params, loss)
    assert res.method == "structured-krylov"
    assert res.info["auto"].startswith("structured-krylov at r=400, d=301")
    assert "primal (needs about" in res.info["auto"]
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= 1e-9


class _Centred(nn.Module):
    """Subtracts the batch mean: couples the examples, which only the structured kernel's check detects."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.out = nn.Linear(3, 48), nn.Linear(48, 8)

    def forward(self, x):
        h = torch.tanh(self.out(torch.tanh(self.hidden(x))))
        return h - h.mean(0)


def test_a_structured_refusal_rules_out_both_structured_routes():
    """Coupled examples defeat the layer formulas of both structured routes: with both of them inside the budget
    and dual over it, auto goes on to krylov (and says why) instead of trying the other structured route."""
    torch.manual_seed(2)
    phi, params = ng.from_module(_Centred().double(), torch.randn(3, 3, dtype=torch.float64))
    r, d = 24, 584

    def loss(z):
        return 0.5 * (z**2).sum() + z.sum()

    budget = route_memory("dual", r, d, 8) - 1
    with pytest.raises(ng.StructuredUnsupported, match="method='structured-krylov' cannot be used here"):
        ng.natural_gradient(
            phi, params, loss, method="structured-krylov", memory_budget=budget
        )  # fits, refuses
    res = ng.natural_gradient(phi, params, loss, memory_budget=budget)
    ref = ng.reference.natural_gradient(phi, params, loss)
    assert res.method == "krylov"
    assert res.info["structured_refused"].startswith("the layer kernel does not reproduce A Aᵀ")
    assert "structured-krylov (refused: the layer kernel does not reproduce" in res.info["auto"]
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= 1e-9
