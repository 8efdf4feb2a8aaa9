"""Bad input gets a clear error naming the call, expected vs got; no path returns NaN silently.

Each case checks the wording with ``pytest.raises(match=...)``. The silent-NaN cases at the end compare
against the float64 reference (or a closed form) rather than only checking finiteness.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch.nn.functional import binary_cross_entropy_with_logits, cross_entropy

import natgrad as ng
from natgrad import metrics

F64 = torch.float64
ROUTES = ("primal", "dual", "lstsq", "krylov")
N, IN, C = 5, 4, 3  # batch, inputs, outputs: n = 15 outputs, d = 12 parameters


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


X = _randn(N, IN)


def _inputs(dtype: torch.dtype = F64) -> torch.Tensor:
    return X.to(dtype)


def _phi(p: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.tanh(_inputs(p["W"].dtype) @ p["W"].T)


def _params(dtype: torch.dtype = F64) -> dict[str, torch.Tensor]:
    return {"W": _randn(C, IN, seed=1).to(dtype)}


def _mse(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (z**2).sum()


def _ng(*args, **kwargs):
    """natural_gradient on the small tanh model unless phi/params/loss are overridden."""
    kw = {"phi": _phi, "params": _params(), "loss": _mse}
    kw.update(kwargs)
    return ng.natural_gradient(*args, **kw)


def _exact(text: str) -> str:
    return re.escape(text)


# ---------------------------------------------------------------- non-finite values


def test_nonfinite_parameter_is_named():
    params = {"W": _params()["W"], "b": torch.tensor([0.0, float("nan"), 1.0], dtype=F64)}
    with pytest.raises(
        ValueError, match=_exact("natural_gradient: parameter 'b' contains 1 non-finite value")
    ):
        _ng(phi=lambda p: _phi(p) + p["b"], params=params)


def test_nonfinite_outputs():
    with pytest.raises(
        ValueError, match=_exact("natural_gradient: phi(params) (the model outputs) contains 15")
    ):
        _ng(phi=lambda p: _phi(p) / 0.0)


def test_nonfinite_loss():
    with pytest.raises(ValueError, match=_exact("natural_gradient: loss(phi(params)) contains 1 non-finite")):
        _ng(loss=lambda z: torch.log(z - z).sum())


def test_nonfinite_output_gradient_sqrt_at_zero():
    # L(z) = Σ √|z| has an infinite derivative at z = 0.
    with pytest.raises(
        ValueError, match=r"natural_gradient: the output gradient ∇z L contains .*sqrt or log at 0"
    ):
        _ng(phi=lambda p: 0.0 * _phi(p), loss=lambda z: z.abs().sqrt().sum())


def test_nonfinite_parameter_gradient_phi_not_differentiable():
    # φ(ξ) = √ξ at ξ = 0: finite outputs, infinite Jacobian.
    with pytest.raises(
        ValueError, match=r"natural_gradient: the parameter gradient ∇ξ\(L∘φ\) contains 3 .*sqrt"
    ):
        _ng(phi=torch.sqrt, params=torch.zeros(3, dtype=F64), loss=lambda z: z.sum())


# ---------------------------------------------------------------- callables returning the wrong thing


@pytest.mark.parametrize(
    ("loss", "got"),
    [(lambda z: z**2, "(5, 3)"), (lambda z: 1.0, "float"), (lambda z: z.sum(0), "(3,)")],
    ids=["matrix", "python-float", "vector"],
)
def test_loss_must_return_scalar_tensor(loss, got):
    with pytest.raises(
        ValueError, match=_exact(f"natural_gradient: loss(z) must return a scalar Tensor, got {got}")
    ):
        _ng(loss=loss)


def test_phi_must_return_tensor():
    with pytest.raises(
        TypeError, match=_exact("natural_gradient: phi(params) must return a Tensor, got list")
    ):
        _ng(phi=lambda p: [p["W"].sum()])


def test_phi_must_keep_dtype():
    with pytest.raises(
        TypeError, match=r"natural_gradient: phi\(params\) returned torch.float32 .* torch.float64"
    ):
        _ng(phi=lambda p: _phi(p).float())


def test_empty_outputs_and_params():
    with pytest.raises(
        ValueError, match=_exact("natural_gradient: phi(params) returned an empty tensor of shape (0,)")
    ):
        _ng(phi=lambda p: p["W"].reshape(-1)[:0])
    with pytest.raises(ValueError, match=_exact("natural_gradient: params have no entries (d = 0)")):
        _ng(phi=lambda p: p.sum()[None], params=torch.zeros(0, dtype=F64))


# ---------------------------------------------------------------- metrics vs outputs


@pytest.mark.parametrize("kind", ["Dense", "Factor"])
def test_matrix_metric_size_vs_outputs(kind):
    m = (
        metrics.Dense(torch.eye(7, dtype=F64))
        if kind == "Dense"
        else metrics.Factor(torch.ones(7, 2, dtype=F64))
    )
    with pytest.raises(
        ValueError, match=_exact(f"natural_gradient: the {kind} metric is 7×7 but the model has 15 outputs")
    ):
        _ng(metric=m)


def test_matrix_metric_dtype_vs_outputs():
    with pytest.raises(
        TypeError, match="natural_gradient: the Dense metric is torch.float32 .* outputs are torch.float64"
    ):
        _ng(metric=metrics.Dense(torch.eye(15)))


def test_gaussian_variance_not_broadcastable():
    with pytest.raises(
        ValueError,
        match=_exact("Gaussian variance of shape (4,) does not broadcast to the outputs' shape (5, 3)"),
    ):
        _ng(metric=metrics.Gaussian(torch.ones(4, dtype=F64)))


@pytest.mark.parametrize("variance", [0.0, -1.0, float("inf")])
def test_gaussian_variance_positive(variance):
    with pytest.raises(ValueError, match="Gaussian: variance must be finite and > 0"):
        metrics.Gaussian(variance)


def test_gaussian_variance_type():
    with pytest.raises(
        TypeError, match="Gaussian: variance must be a positive float or a real tensor, got str"
    ):
        metrics.Gaussian("1.0")


@pytest.mark.parametrize(("slicer", "shape"), [(lambda z: z[:, :1], "(5, 1)"), (lambda z: z.sum(), "()")])
def test_categorical_needs_two_classes(slicer, shape):
    with pytest.raises(
        ValueError,
        match=_exact(
            f"Categorical expects logits with a last axis of size C ≥ 2 (classes), got output shape {shape}"
        ),
    ):
        _ng(phi=lambda p: slicer(_phi(p)), metric=metrics.Categorical())


def test_fisher_rao_needs_positive_entries():
    # tanh outputs include negative entries.
    with pytest.raises(
        ValueError, match="natural_gradient: FisherRao needs strictly positive probabilities, got min entry -"
    ):
        _ng(metric=metrics.FisherRao())
    with pytest.raises(ValueError, match="got min entry 0"):
        _ng(phi=lambda p: torch.relu(_phi(p)), metric=metrics.FisherRao())


# ---------------------------------------------------------------- metrics refused at construction


def test_dense_metric_not_psd_or_not_symmetric():
    g = torch.diag(torch.tensor([1.0, 2.0, -0.5], dtype=F64))
    with pytest.raises(
        ValueError, match=r"Dense: metric matrix must be positive semi-definite, got smallest eigenvalue -0.5"
    ):
        metrics.Dense(g)
    with pytest.raises(
        ValueError, match=r"Dense: metric matrix must be symmetric, got max \|g - gᵀ\| / max \|g\| = 1"
    ):
        metrics.Dense(torch.triu(torch.ones(3, 3, dtype=F64)))
    with pytest.raises(
        ValueError, match=_exact("Dense: metric matrix must be square (n, n), got shape (15,)")
    ):
        metrics.Dense(torch.ones(15, dtype=F64))


def test_metric_matrices_must_be_tensors():
    with pytest.raises(TypeError, match="Dense: matrix must be a torch.Tensor, got list"):
        metrics.Dense([[1.0]])
    with pytest.raises(TypeError, match="Factor: B must be a torch.Tensor, got list"):
        metrics.Factor([[1.0]])
    with pytest.raises(ValueError, match="Factor: B contains 2 non-finite value"):
        metrics.Factor(torch.tensor([[1.0, float("nan")], [float("inf"), 0.0]], dtype=F64))


def test_point_dependent_indefinite_or_asymmetric_refused():
    n = N * C
    flip = torch.eye(n, dtype=F64)
    flip[0, 0] = -1.0
    with pytest.raises(
        ValueError,
        match=r"natural_gradient: PointDependent fn\(z\) must be positive semi-definite, got smallest eigenvalue -1",
    ):
        _ng(metric=metrics.PointDependent(lambda z: flip))
    with pytest.raises(ValueError, match=r"natural_gradient: PointDependent fn\(z\) must be symmetric"):
        _ng(
            metric=metrics.PointDependent(
                lambda z: torch.eye(n, dtype=F64) + torch.diag(torch.ones(n - 1, dtype=F64), 1)
            )
        )
    with pytest.raises(
        ValueError,
        match=_exact("natural_gradient: PointDependent fn(z) must return a (15, 15) matrix, got (3, 3)"),
    ):
        _ng(metric=metrics.PointDependent(lambda z: torch.eye(3, dtype=F64)))


# ---------------------------------------------------------------- generalized inverses


@pytest.mark.parametrize("which", ["U", "V"])
def test_ginverse_wrong_shape_dtype_device(which):
    d = 12
    with pytest.raises(
        ValueError, match=_exact(f"natural_gradient: GInverse {which} must have shape (12, 12), got (3, 3)")
    ):
        _ng(inverse=ng.GInverse(**{which: torch.eye(3, dtype=F64)}))
    with pytest.raises(
        TypeError,
        match=f"natural_gradient: GInverse {which} must have dtype torch.float64 .*got torch.float32",
    ):
        _ng(inverse=ng.GInverse(**{which: torch.eye(d)}))
    with pytest.raises(
        TypeError, match=f"natural_gradient: GInverse {which} must be on device cpu .*got meta"
    ):
        _ng(inverse=ng.GInverse(**{which: torch.eye(d, dtype=F64, device="meta")}))
    with pytest.raises(
        TypeError, match=f"natural_gradient: GInverse {which} must be a torch.Tensor, got list"
    ):
        _ng(inverse=ng.GInverse(**{which: [[1.0]]}))
    with pytest.raises(ValueError, match=f"natural_gradient: GInverse {which} contains 144 non-finite"):
        _ng(inverse=ng.GInverse(**{which: torch.full((d, d), float("nan"), dtype=F64)}))


def test_minnorm_h_wrong_shape_or_not_spd():
    with pytest.raises(
        ValueError, match=_exact("natural_gradient: MinNorm h must have shape (12, 12), got (3, 3)")
    ):
        _ng(inverse=ng.MinNorm(torch.eye(3, dtype=F64)))
    with pytest.raises(
        ValueError, match=_exact("natural_gradient: MinNorm h must have shape (12,), got (11,)")
    ):
        _ng(inverse=ng.MinNorm(torch.ones(11, dtype=F64)))
    h = torch.eye(12, dtype=F64)
    h[3, 3] = -2.0
    with pytest.raises(
        ValueError, match="natural_gradient: MinNorm h must be positive definite, got smallest eigenvalue -2"
    ):
        _ng(inverse=ng.MinNorm(h))
    with pytest.raises(ValueError, match="natural_gradient: MinNorm h must be symmetric"):
        _ng(inverse=ng.MinNorm(torch.eye(12, dtype=F64) + torch.diag(torch.ones(11, dtype=F64), 1)))
    with pytest.raises(
        ValueError, match="natural_gradient: MinNorm diagonal h must be finite and > 0, got min 0"
    ):
        _ng(inverse=ng.MinNorm(torch.arange(12, dtype=F64)))
    with pytest.raises(ValueError, match="natural_gradient: MinNorm h contains 144 non-finite"):
        _ng(inverse=ng.MinNorm(torch.full((12, 12), float("nan"), dtype=F64)))
    with pytest.raises(TypeError, match="natural_gradient: MinNorm h must be a torch.Tensor, got list"):
        _ng(inverse=ng.MinNorm([1.0] * 12))


@pytest.mark.parametrize("damping", [0.0, -1.0, float("nan"), float("inf")])
def test_damped_needs_positive_finite(damping):
    with pytest.raises(
        ValueError, match=r"Damped: damping must be finite and > 0, got .*; use MoorePenrose\(\) for λ = 0"
    ):
        ng.Damped(damping)


def test_damped_needs_a_number():
    with pytest.raises(TypeError, match="Damped: damping must be a real number, got 'a'"):
        ng.Damped("a")
    with pytest.raises(TypeError, match="Damped: damping must be a real number, got None"):
        ng.Damped(None)


@pytest.mark.parametrize("rtol", [1.0, 1.5, -1e-3, float("nan")])
def test_moore_penrose_rtol_range(rtol):
    with pytest.raises(ValueError, match=r"MoorePenrose: rtol must be in \[0, 1\)"):
        ng.MoorePenrose(rtol)


def test_moore_penrose_rtol_type():
    with pytest.raises(TypeError, match="MoorePenrose: rtol must be a real number, got 'tiny'"):
        ng.MoorePenrose("tiny")


def test_inverse_and_metric_types():
    with pytest.raises(
        TypeError,
        match="natural_gradient: inverse must be MoorePenrose, GInverse, MinNorm or Damped, got str",
    ):
        _ng(inverse="pinv")
    with pytest.raises(TypeError, match="natural_gradient: metric must be a natgrad.metrics.Metric, got str"):
        _ng(metric="fisher")


# ---------------------------------------------------------------- parameters


def test_mixed_dtypes_in_params():
    params = {"W": _params()["W"], "b": torch.zeros(3)}
    with pytest.raises(
        TypeError,
        match="natural_gradient: all parameters must share one dtype and device; 'W' is torch.float64/cpu but 'b' is torch.float32/cpu",
    ):
        _ng(phi=lambda p: _phi(p) + p["b"].to(F64), params=params)


def test_mixed_devices_in_params():
    params = {"W": _params()["W"], "b": torch.zeros(3, dtype=F64, device="meta")}
    with pytest.raises(TypeError, match="'W' is torch.float64/cpu but 'b' is torch.float64/meta"):
        _ng(params=params)


def test_params_types():
    with pytest.raises(
        TypeError, match="natural_gradient: params must be a Tensor or a dict of Tensors, got list"
    ):
        _ng(params=[_params()["W"]])
    with pytest.raises(TypeError, match=r"natural_gradient: params\['W'\] must be a torch.Tensor, got float"):
        _ng(params={"W": 1.0})
    with pytest.raises(
        TypeError, match="natural_gradient: parameter 'params' must be floating point, got dtype torch.int64"
    ):
        _ng(phi=lambda p: p.double(), params=torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="natural_gradient: params is an empty dict"):
        _ng(params={})


# ---------------------------------------------------------------- method, budget, solver settings


def test_unknown_method_lists_valid_ones():
    with pytest.raises(
        ValueError,
        match=_exact(
            "natural_gradient: method must be one of 'auto', 'primal', 'dual', 'lstsq', 'krylov', 'structured', "
            "'structured-krylov', got 'svd'"
        ),
    ):
        _ng(method="svd")


def _wide_phi(p: torch.Tensor) -> torch.Tensor:
    """n = 2 outputs, d = 50 parameters: the dual route is far smaller than the primal one."""
    return torch.stack([torch.tanh(p).sum(), (p**2).sum()])


@pytest.mark.parametrize(
    ("method", "budget", "fits"),
    [("primal", 2000, "dual"), ("lstsq", 2000, "dual"), ("dual", 1000, "krylov")],
)
def test_route_over_budget_names_a_route_that_fits(method, budget, fits):
    params = torch.linspace(-1, 1, 50, dtype=F64)
    with pytest.raises(
        MemoryError,
        match=f"natural_gradient: method='{method}' needs about .* over the memory budget of .*; use method='{fits}' or raise memory_budget",
    ):
        ng.natural_gradient(_wide_phi, params, lambda z: z.sum(), method=method, memory_budget=budget)
    # The suggested route really runs under that budget and gives the reference answer.
    res = ng.natural_gradient(_wide_phi, params, lambda z: z.sum(), method=fits, memory_budget=budget)
    ref = ng.reference.natural_gradient(_wide_phi, params, lambda z: z.sum())
    assert res.method == fits
    assert torch.linalg.vector_norm(res.direction - ref.direction) <= 1e-10 * torch.linalg.vector_norm(
        ref.direction
    )


def test_memory_error_quotes_readable_sizes():
    params = torch.linspace(-1, 1, 50, dtype=F64)
    # primal: 8·(2·50 + 3·50²) = 60800 bytes = 59.4 KiB
    with pytest.raises(
        MemoryError,
        match=_exact(
            "needs about 59.4 KiB for r=2 weighted outputs and d=50 parameters, over the memory budget of 2.0 KiB"
        ),
    ):
        ng.natural_gradient(_wide_phi, params, lambda z: z.sum(), method="primal", memory_budget=2000)


def test_solver_settings_validated():
    with pytest.raises(TypeError, match="natural_gradient: memory_budget must be a real number, got '1G'"):
        _ng(memory_budget="1G")
    with pytest.raises(ValueError, match=r"natural_gradient: tol must be in \(0, 1\)"):
        _ng(method="krylov", tol=-1.0)
    with pytest.raises(ValueError, match="natural_gradient: max_iter must be a positive int, got 0"):
        _ng(method="krylov", max_iter=0)


def test_from_module_without_trainable_params():
    x = _inputs()
    with pytest.raises(
        ValueError, match="from_module: ReLU has no parameters with requires_grad=True; unfreeze"
    ):
        ng.from_module(torch.nn.ReLU(), x)
    frozen = torch.nn.Linear(IN, C).double().requires_grad_(False)
    with pytest.raises(ValueError, match="from_module: Linear has no parameters with requires_grad=True"):
        ng.from_module(frozen, x)
    with pytest.raises(TypeError, match="from_module: module must be a torch.nn.Module, got function"):
        ng.from_module(_phi, x)


# ---------------------------------------------------------------- no silent NaN


@pytest.mark.parametrize("method", ROUTES)
def test_zero_gradient_gives_exact_zeros_and_rank(method):
    params = _params()
    res = _ng(loss=lambda z: 0.0 * z.sum(), method=method)
    flat = ng.flatten_params(res.direction)
    assert torch.equal(flat, torch.zeros_like(flat))
    assert torch.equal(res.pushforward, torch.zeros_like(res.pushforward))
    G = ng.reference.gram(_phi, params)["G"]
    expected_rank = int(torch.linalg.matrix_rank(G, rtol=ng.default_rtol(F64, N * C, 12), hermitian=True))
    assert res.rank == (None if method == "krylov" else expected_rank)
    assert expected_rank == 12  # a full-rank G: the zeros come from the zero gradient, not a rank drop


@pytest.mark.parametrize("method", ROUTES)
def test_constant_model_gives_zero_direction_and_rank_zero(method):
    # J = 0 and G = 0 with a nonzero loss gradient: G⁺∇ = 0, not 0/0.
    res = ng.natural_gradient(
        lambda p: 0.0 * p + 1.0, torch.ones(4, dtype=F64), lambda z: (z**2).sum(), method=method
    )
    assert torch.equal(res.direction, torch.zeros(4, dtype=F64))
    assert res.rank == (None if method == "krylov" else 0)


def _bernoulli_case(scale: float, dtype: torch.dtype):
    """Logits with half the rows pushed to ±scale: σ(z)σ(−z) there is tiny (or underflows to 0)."""
    x = _randn(6, IN, seed=2).to(dtype)
    offset = torch.zeros(6, C, dtype=dtype)
    offset[::2] = scale
    offset[0, 1] = -scale
    targets = (torch.arange(6 * C).reshape(6, C) % 2).to(dtype)

    def phi(w: torch.Tensor) -> torch.Tensor:
        return x.to(w.dtype) @ w + offset.to(w.dtype)

    def loss(z: torch.Tensor) -> torch.Tensor:
        return binary_cross_entropy_with_logits(z, targets.to(z.dtype), reduction="sum")

    w = _randn(IN, C, seed=3).to(dtype)
    return phi, w, loss


@pytest.mark.parametrize("method", ROUTES)
@pytest.mark.parametrize("scale", [1000.0, 200.0], ids=["underflow-to-0", "weights-1e-87"])
def test_bernoulli_at_huge_logits_matches_reference(method, scale):
    # Fisher weights σ(z)σ(−z) are exactly 0 at |z| = 1000 and ~1e-87 at |z| = 200, while the BCE
    # gradient there is O(1): c = B⁺∇z L would be ~1e43, so the routes must not use the c-form.
    phi, w, loss = _bernoulli_case(scale, F64)
    weights = metrics.Bernoulli().matrix(phi(w)).diagonal()
    assert weights.min() < 1e-80 and weights.max() > 0.1
    ref = ng.reference.natural_gradient(phi, w, loss, metrics.Bernoulli())
    res = ng.natural_gradient(phi, w, loss, metrics.Bernoulli(), method=method)
    assert torch.isfinite(res.direction).all()
    assert torch.linalg.vector_norm(res.direction - ref.direction) <= 1e-10 * torch.linalg.vector_norm(
        ref.direction
    )
    assert torch.linalg.vector_norm(res.pushforward - ref.pushforward) <= 1e-10 * torch.linalg.vector_norm(
        ref.pushforward
    )
    if method != "krylov":
        assert res.rank == ref.rank == 9  # the three well-weighted rows × 3 outputs


@pytest.mark.parametrize("method", ROUTES)
def test_bernoulli_underflow_float32_finite_and_close(method):
    # In float32 σ(z)σ(−z) underflows to 0 already at |z| ≈ 104.
    phi, w, loss = _bernoulli_case(200.0, torch.float32)
    assert bool((metrics.Bernoulli().matrix(phi(w)).diagonal() == 0).any())
    ref = ng.reference.natural_gradient(phi, w, loss, metrics.Bernoulli())
    res = ng.natural_gradient(phi, w, loss, metrics.Bernoulli(), method=method)
    err = torch.linalg.vector_norm(res.direction.double() - ref.direction) / torch.linalg.vector_norm(
        ref.direction
    )
    assert err <= 1e3 * torch.finfo(torch.float32).eps


def test_categorical_confident_rows_use_the_factored_form():
    # A row with p ≈ (1 − 3e-4, 1e-4, ...): B⁺∇z L must reproduce ∇z L (closed form), not lose 1e-7 of it
    # to a rounding-level singular value of the null direction √p.
    z = torch.tensor([[0.0, -9.47, -9.94, -8.92], [0.3, -0.2, 0.1, 0.0]], dtype=F64)
    target = torch.tensor([0, 2])
    u = torch.func.grad(lambda t: cross_entropy(t, target, reduction="sum"))(z).reshape(-1)
    local = metrics.Categorical().at(z)
    c = local.factor_solve(u)
    assert torch.linalg.vector_norm(local.factor_matmul(c) - u) <= 1e-14 * torch.linalg.vector_norm(u)
    # c is B⁺u: orthogonal to the null vector √p of each row, and equal to the literal pinv on exact input.
    B = local.factor()
    assert torch.allclose(c, torch.linalg.pinv(B, rtol=1e-10) @ u, rtol=1e-12, atol=1e-14)
