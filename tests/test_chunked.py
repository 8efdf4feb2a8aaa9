"""Chunked assembly of the dense structured kernel (K block by block over chunks of examples).

(1) On the model zoo and the module cases, the kernel assembled one example per chunk and Aᵀy formed chunk by
chunk equal the literal JJᵀ (float64 reference) and the unchunked kernel to rounding. (2) Under a budget that
forces chunking, ``method="structured"`` and ``auto`` give the reference natural gradient for several models,
metrics and inverses (rank-deficient kernels included) and record the plan. (3) The plan and its refusals:
below K, below a one-example chunk, coupled examples, inputs that cannot be cut into chunks.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import natgrad as ng
from cases import CASES, METRICS, ZOO, Pooled, Recurrent, TinyGPT, inverses, relative_error
from natgrad._routes._structured import STRUCTURED, chunk_plan, layer_factor_bytes
from natgrad.models._module import module_record
from natgrad.models.structured import ChunkedAssembly, plan_chunks, structured_kernel

F64 = torch.float64
TOL = 1e-9
_NOT_CHUNKABLE = {
    "mha-self-masked": "examples are coupled",  # the padding mask depends on the example's place in the batch
    "mha-cross": "examples are coupled",
    "lstm-final-state": "failed on a chunk",  # the initial state (1, N, H) has no leading batch axis
}
_ASSEMBLY = [(z.name, z.build) for z in ZOO if z.refusal is None] + [
    (c.name, lambda c=c: c.build(F64)) for c in CASES if c.module
]


@pytest.mark.parametrize(("name", "build"), _ASSEMBLY, ids=[name for name, _ in _ASSEMBLY])
def test_chunked_assembly_equals_reference_and_unchunked_kernel(name, build):
    phi, params = build()
    record = module_record(phi)
    z = phi(params)
    assembly = ChunkedAssembly(record.module, record.args, record.kwargs, z, None, 1, calling=record.calling)
    if name in _NOT_CHUNKABLE:
        with pytest.raises(ng.StructuredUnsupported, match=_NOT_CHUNKABLE[name]):
            assembly.kernel()
        return
    chunked = assembly.kernel()
    with record.calling():
        kernel, context = structured_kernel(record.module, record.args, None, dtype=F64, kwargs=record.kwargs)
    jacobian = ng.reference.gram(phi, params)["J"]
    assert relative_error(chunked, jacobian @ jacobian.T) <= TOL
    assert relative_error(chunked, kernel) <= 1e-12
    assert assembly.info()["chunks"] == z.shape[0]
    y = torch.randn(kernel.shape[0], generator=torch.Generator().manual_seed(1), dtype=F64)
    by_chunks, whole = ng.flatten_params(assembly.vjp(y)), ng.flatten_params(context.vjp(y))
    assert relative_error(by_chunks, jacobian.T @ y) <= TOL and relative_error(by_chunks, whole) <= 1e-12


def _larger(make, inputs, seed: int):
    """A zoo module on more examples, so that a budget can force three or more chunks."""

    def build():
        torch.manual_seed(seed)
        module = make().double().eval()
        return ng.from_module(module, inputs(torch.Generator().manual_seed(seed + 1)))

    return build


_MODELS = {
    "mlp-underparam": lambda: next(c for c in CASES if c.name == "mlp-underparam").build(
        F64
    ),  # rank-deficient K
    "batchnorm-eval": lambda: next(c for c in CASES if c.name == "batchnorm-eval").build(F64),
    "conv": _larger(
        lambda: nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)
        ),
        lambda g: torch.randn(9, 1, 4, 4, generator=g, dtype=F64),
        2,
    ),
    "recurrent": _larger(
        lambda: nn.Sequential(nn.Linear(4, 8), Recurrent(nn.GRU(8, 4, batch_first=True), 4)),
        lambda g: torch.randn(9, 3, 4, generator=g, dtype=F64),
        3,
    ),
    "attention": _larger(
        lambda: Pooled(nn.TransformerEncoderLayer(8, 2, 8, dropout=0.0, batch_first=True), 8),
        lambda g: torch.randn(9, 3, 8, generator=g, dtype=F64),
        4,
    ),
    "gpt-tied": _larger(TinyGPT, lambda g: torch.randint(0, 7, (9, 4), generator=g), 47),
}


def _forcing_budget(phi, params, metric, inverse, examples_per_chunk: int) -> int:
    """The smallest memory budget whose chunk plan takes ``examples_per_chunk`` examples per chunk or more.

    With a dense output factor (n × r, resident beside K with an r × r product) large chunks can need more
    than all examples at once; then one example per chunk is forced.
    """
    problem = ng.factorize(phi, params, metric, inverse, method="structured")._problem
    low = STRUCTURED.memory(problem.r, problem.d, problem.itemsize)
    high = low + layer_factor_bytes(problem) - 1  # just below what all examples at once need
    assert chunk_plan(dataclasses.replace(problem, budget=high + 1)) is None

    def enough(budget: int, examples: int) -> bool:
        plan = chunk_plan(dataclasses.replace(problem, budget=budget))
        return plan is not None and plan.examples_per_chunk >= examples

    target = examples_per_chunk if enough(high, examples_per_chunk) else 1
    assert enough(high, target)
    while low < high:  # within [K, all examples) the chunks grow with the budget
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid, target) else (mid + 1, high)
    return low


_ROUTE_CASES = [
    ("mlp-underparam", "euclidean", "moore-penrose"),
    ("mlp-underparam", "categorical", "damped"),
    ("conv", "dense-singular", "moore-penrose"),
    ("batchnorm-eval", "gaussian", "ginverse"),
    ("batchnorm-eval", "factor", "damped"),
    ("conv", "categorical", "moore-penrose"),
    ("conv", "point-dependent", "damped"),
    ("recurrent", "bernoulli", "moore-penrose"),
    ("attention", "euclidean", "moore-penrose"),
    ("gpt-tied", "categorical", "moore-penrose"),
]


@pytest.mark.parametrize(("model", "metric_name", "inverse_name"), _ROUTE_CASES)
def test_chunked_route_matches_the_reference(model, metric_name, inverse_name):
    phi, params = _MODELS[model]()
    z = phi(params)
    metric, loss = next(m for m in METRICS if m.name == metric_name).make(z)
    inverse = inverses(ng.num_params(params), F64)[inverse_name]
    budget = _forcing_budget(phi, params, metric, inverse, max(1, z.shape[0] // 4))
    res = ng.natural_gradient(phi, params, loss, metric, inverse, method="structured", memory_budget=budget)
    ref = ng.reference.natural_gradient(phi, params, loss, metric, inverse)
    whole = ng.natural_gradient(phi, params, loss, metric, inverse, method="structured")
    direction = ng.flatten_params(res.direction)
    assert relative_error(direction, ng.flatten_params(ref.direction)) <= TOL
    assert relative_error(direction, ng.flatten_params(whole.direction)) <= 1e-11
    plan = res.info["chunked"]
    assert (
        plan["chunks"] >= 3
        and plan["emissions"] == plan["chunks"] + (plan["chunks"] - 1) * (plan["chunks"] - 2) // 2
    )
    assert res.rank == ref.rank
    auto = ng.natural_gradient(phi, params, loss, metric, inverse, memory_budget=budget)
    if auto.method == "structured":
        assert auto.info["chunked"] == plan
        assert relative_error(ng.flatten_params(auto.direction), ng.flatten_params(ref.direction)) <= TOL


_ZOO_CHUNKABLE = [
    "dict-output-layer",
    "resblock-bn-eval",
    "shared-sequential",
    "tied-by-assignment",
    "parent-uses-child",  # a parameter used outside its module: the kernel check's rebuild, chunked again
    "weight-norm",
    "orthogonal-parametrization",
]


@pytest.mark.parametrize("name", _ZOO_CHUNKABLE)
def test_chunked_route_on_the_zoo(name):
    """Zoo models with three examples, one per chunk (two examples cannot be chunked below the full need)."""
    phi, params = next(z for z in ZOO if z.name == name).build()

    def loss(z):
        return (z**3).sum() + z.sum()

    budget = _forcing_budget(phi, params, None, None, 1)
    res = ng.natural_gradient(phi, params, loss, method="structured", memory_budget=budget)
    ref = ng.reference.natural_gradient(phi, params, loss)
    assert res.info["chunked"] == {"chunks": 3, "examples_per_chunk": 1, "emissions": 4}
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= TOL


def test_float32_chunked_equals_unchunked_to_rounding():
    phi, params = _MODELS["conv"]()
    module = module_record(phi).module.float()
    phi, params = ng.from_module(module, module_record(phi).args[0].float())
    z = phi(params)
    metric, loss = next(m for m in METRICS if m.name == "categorical").make(z)
    budget = _forcing_budget(phi, params, metric, None, 3)
    res = ng.natural_gradient(phi, params, loss, metric, method="structured", memory_budget=budget)
    whole = ng.natural_gradient(phi, params, loss, metric, method="structured")
    assert res.info["chunked"]["chunks"] == 3
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(whole.direction)) <= 1e-5


def test_plan_fits_its_budget_and_refuses_below_one_example():
    per_example, rows = 1000, 3
    assert plan_chunks(10 * per_example, 10, rows, 2 * per_example + 4 * 8 * rows**2 - 1) is None
    assert plan_chunks(10 * per_example, 1, rows, 10**9) is None  # one example cannot be split
    for available in (2_500, 5_000, 9_000):
        plan = plan_chunks(10 * per_example, 10, rows, available)
        assert plan is not None and plan.held <= available
        assert plan.chunks * plan.examples_per_chunk >= 10 > (plan.chunks - 1) * plan.examples_per_chunk


def _mlp_problem():
    case = next(c for c in CASES if c.name == "mlp-underparam")
    phi, params = case.build(F64)
    return phi, params, (lambda z: (z**3).sum())


def test_budget_below_the_kernel_or_one_example_is_refused():
    phi, params, loss = _mlp_problem()
    problem = ng.factorize(phi, params, method="structured")._problem
    kernel = STRUCTURED.memory(problem.r, problem.d, problem.itemsize)
    with pytest.raises(
        ng.MemoryBudgetError, match=r"; K \(r × r, float64\) and its eigenvectors alone need .*; use method="
    ):
        ng.natural_gradient(phi, params, loss, method="structured", memory_budget=kernel - 1)
    with pytest.raises(
        ng.MemoryBudgetError,
        match=r"assembling K chunk by chunk does not fit either: K and two one-example chunks .* per example",
    ):
        ng.natural_gradient(phi, params, loss, method="structured", memory_budget=kernel + 8)
    single, single_params = ng.from_module(module_record(phi).module, module_record(phi).args[0][:1])
    problem = ng.factorize(single, single_params, method="structured")._problem
    kernel = STRUCTURED.memory(problem.r, problem.d, problem.itemsize)
    with pytest.raises(
        ng.MemoryBudgetError, match="factors of a single example cannot be assembled in chunks"
    ):
        ng.natural_gradient(single, single_params, loss, method="structured", memory_budget=kernel + 8)


class _Centred(nn.Module):
    """Subtracts the batch mean of a hidden layer: every example's output depends on the others."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.first(x))
        return self.second(h - h.mean(0))


def test_coupled_examples_are_refused_and_auto_falls_back():
    torch.manual_seed(0)
    phi, params = ng.from_module(_Centred().double(), torch.randn(9, 3, dtype=F64))
    loss = lambda z: (z**3).sum()  # noqa: E731
    budget = _forcing_budget(phi, params, None, None, 2)
    with pytest.raises(
        ng.StructuredUnsupported, match="the examples are coupled .* cannot be assembled chunk"
    ):
        ng.natural_gradient(phi, params, loss, method="structured", memory_budget=budget)
    res = ng.natural_gradient(phi, params, loss, memory_budget=budget)
    ref = ng.reference.natural_gradient(phi, params, loss)
    assert res.method != "structured" and "coupled" in res.info["structured_refused"]
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= TOL


def test_batchnorm_in_train_mode_is_refused_under_a_chunking_budget():
    phi, params = next(z for z in ZOO if z.name == "resblock-bn-train").build()
    with pytest.raises(ng.StructuredUnsupported, match="normalises with batch statistics"):
        ng.natural_gradient(phi, params, lambda z: z.sum(), method="structured", memory_budget=2**16)


def test_minnorm_under_a_chunking_budget_names_a_route_that_fits():
    """MinNorm is handed to the dual route (A h^{-1/2} has no layer structure), which holds A, not factors."""
    phi, params = _MODELS["conv"]()
    z = phi(params)
    metric, loss = next(m for m in METRICS if m.name == "euclidean").make(z)
    inverse = inverses(ng.num_params(params), F64)["minnorm-diag"]
    budget = _forcing_budget(phi, params, metric, None, 2)
    with pytest.raises(
        ng.MemoryBudgetError, match=r"method='structured' needs about .* use method='(\w|-)+'"
    ):
        ng.natural_gradient(phi, params, loss, metric, inverse, method="structured", memory_budget=budget)
    res = ng.natural_gradient(phi, params, loss, metric, inverse, memory_budget=budget)
    ref = ng.reference.natural_gradient(phi, params, loss, metric, inverse)
    assert relative_error(ng.flatten_params(res.direction), ng.flatten_params(ref.direction)) <= TOL
