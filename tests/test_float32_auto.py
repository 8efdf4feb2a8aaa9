"""float32 ``auto`` agrees with the float64 answer to 1e-4 (relative) wherever cond(K) ≤ 10⁵.

Over every shared case × metric (Moore–Penrose), every zoo model and a low-rank-input MLP: the float64
reference (materialised J, pseudo-inverse) gives the answer and its retained rank; cond(K) is λ_max/λ_min over
the eigenvalues of the float64 G that the reference retains (G and K share their nonzero eigenvalues). Cases
above 10⁵ are skipped with their condition number: there eps₃₂·cond(A) approaches 1e-4 and the cutoff's
decision about the smallest directions is not float32's to make.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

import natgrad as ng
from cases import CASES, METRICS, ZOO, combos, relative_error, zoo_loss

COND_MAX = 1e5
TOL = 1e-4


def _retained_condition(phi, params, metric, rank: int) -> float:
    """λ_max/λ_min of the float64 G over the ``rank`` eigenvalues the reference keeps."""
    evals = torch.linalg.eigvalsh(ng.reference.gram(phi, params, metric)["G"])[-rank:]
    return float(evals[-1] / evals[0])


def _float32_module(phi):
    """The same module and inputs in float32."""
    record = phi.natgrad_module
    module = copy.deepcopy(record.module).float()
    args = tuple(
        a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in record.args
    )
    return ng.from_module(module, args, kwargs=record.kwargs, output=record.select, seed=record.seed)


def _low_rank_mlp(dtype: torch.dtype):
    """MLP 16-16-16-10 on 16 inputs of latent dimension 4 plus 2% noise, cross-entropy: cond(K) ≈ 3·10⁴, which
    the former float32 cutoff 10·min(r, d)·eps₃₂ (1.7e-4 at r = 144) would have cut."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 10))
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(16, 4, generator=gen) @ torch.randn(4, 16, generator=gen) + 0.02 * torch.randn(
        16, 16, generator=gen
    )
    labels = torch.randint(0, 10, (16,), generator=gen)
    phi, params = ng.from_module(model.to(dtype), x.to(dtype))

    def loss(z):
        return nn.functional.cross_entropy(z, labels, reduction="sum")

    return phi, params, ng.metrics.Categorical(), loss


def _shared_case(case_name: str, metric_name: str, dtype: torch.dtype):
    case = next(c for c in CASES if c.name == case_name)
    phi, params = case.build(dtype)
    metric, loss = next(m for m in METRICS if m.name == metric_name).make(phi(params))
    return phi, params, metric, loss


def _zoo_case(name: str):
    phi, params = next(c for c in ZOO if c.name == name).build()
    loss = zoo_loss(phi(params))
    phi32, params32 = _float32_module(phi)
    return (phi, params, None, loss), (phi32, params32, None, loss)


@functools.cache
def _pair(kind: str, name: str):
    """(float64 problem, float32 problem) as (phi, params, metric, loss)."""
    if kind == "shared":
        case, metric = name.split("/")
        return _shared_case(case, metric, torch.float64), _shared_case(case, metric, torch.float32)
    if kind == "zoo":
        return _zoo_case(name)
    return _low_rank_mlp(torch.float64), _low_rank_mlp(torch.float32)


PAIRS = [
    *(pytest.param("shared", f"{c.name}/{m.name}", id=f"{c.name}-{m.name}") for c, m in combos()),
    *(pytest.param("zoo", c.name, id=f"zoo-{c.name}") for c in ZOO),
    pytest.param("low-rank", "mlp", id="low-rank-inputs"),
]


@pytest.mark.parametrize(("kind", "name"), PAIRS)
def test_float32_auto_matches_float64(kind, name):
    (phi, params, metric, loss), (phi32, params32, metric32, loss32) = _pair(kind, name)
    ref = ng.reference.natural_gradient(phi, params, loss, metric)
    cond = _retained_condition(phi, params, metric, ref.rank)
    if cond > COND_MAX:
        pytest.skip(f"cond(K) = {cond:.3g} > {COND_MAX:g} over the reference's rank {ref.rank}")
    res = ng.natural_gradient(phi32, params32, loss32, metric32)
    v = ng.flatten_params(res.direction)
    assert v.dtype == torch.float32
    assert res.rank in (None, ref.rank), f"{res.method} kept rank {res.rank} of {ref.rank}"
    error = relative_error(v, ng.flatten_params(ref.direction))
    assert error <= TOL, f"{res.method}: {error:.3g} from float64 at cond(K) = {cond:.3g}"


def test_low_rank_case_is_ill_conditioned_for_the_former_cutoff():
    """The low-rank case is what it claims: cond(K) in [10³, 10⁵] and above the former float32 cutoff's reach."""
    (phi, params, metric, loss), _ = _pair("low-rank", "mlp")
    ref = ng.reference.natural_gradient(phi, params, loss, metric)
    cond = _retained_condition(phi, params, metric, ref.rank)
    r = 16 * 9  # categorical over 10 classes: 9 weighted outputs per example
    former = 10 * min(r, ng.num_params(params)) * torch.finfo(torch.float32).eps
    assert 1e3 <= cond <= COND_MAX and 1 / cond < former
