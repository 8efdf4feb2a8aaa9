"""natgrad.flows against closed forms (softmax KL flow, linear least squares) and literal float64 steps."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import natgrad as ng
from natgrad.flows import (
    Trajectory,
    compare_parametrisations,
    gradient_flow,
    natural_gradient_descent,
    natural_gradient_flow,
)

F64 = torch.float64


def _softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, 0)


def _kl(q: torch.Tensor):
    return lambda p: (q * (q.log() - p.log())).sum()


def _linear_problem():
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(2, 4, generator=gen, dtype=F64)
    y = torch.randn(2, generator=gen, dtype=F64)
    xi0 = torch.randn(4, generator=gen, dtype=F64)
    return a, y, xi0, (lambda x: a @ x), (lambda z: 0.5 * ((z - y) ** 2).sum())


def test_softmax_kl_flow_matches_closed_form():
    q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    xi0 = torch.tensor([1.5, -1.0, 0.3, 0.2], dtype=F64)
    times = torch.linspace(0.0, 1.0, 3, dtype=F64)
    traj = natural_gradient_flow(
        _softmax, xi0, _kl(q), ng.metrics.FisherRao(), t_eval=times, rtol=1e-9, atol=1e-11
    )
    p0 = _softmax(xi0)
    exact = q + torch.exp(-times)[:, None] * (p0 - q)
    assert float((traj.outputs - exact).abs().max()) <= 1e-8
    assert torch.equal(traj.times, times) and traj.params.shape == (3, 4) and traj.losses.shape == (3,)
    assert torch.allclose(traj.losses, torch.stack([_kl(q)(p) for p in exact]), rtol=1e-7, atol=0)
    # Moore–Penrose keeps the parameter sum: v ⊥ ker J = span 1
    assert float((traj.params.sum(1) - xi0.sum()).abs().max()) <= 1e-9


def test_natural_gradient_flow_linear_least_squares():
    """φ = Aξ (A 2×4), Euclidean, L = ½‖z − y‖²: z(t) = y + e^{−t}(z₀ − y), ξ(t) = ξ₀ − (1 − e^{−t}) A⁺(z₀ − y)."""
    a, y, xi0, phi, loss = _linear_problem()
    times = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    traj = natural_gradient_flow(phi, xi0, loss, t_eval=times, rtol=1e-10, atol=1e-12)
    z0 = a @ xi0
    decay = torch.exp(-times)[:, None]
    exact_z = y + decay * (z0 - y)
    exact_xi = xi0 - (1 - decay) * (torch.linalg.pinv(a) @ (z0 - y))
    assert float((traj.outputs - exact_z).abs().max()) <= 1e-9
    assert float((traj.params - exact_xi).abs().max()) <= 1e-9


def test_gradient_flow_quadratic():
    """ξ̇ = −Aᵀ(Aξ − y) with A 4×2 full column rank: ξ(t) = ξ* + exp(−AᵀA t)(ξ₀ − ξ*)."""
    gen = torch.Generator().manual_seed(8)
    a = torch.randn(4, 2, generator=gen, dtype=F64)
    y = torch.randn(4, generator=gen, dtype=F64)
    xi0 = torch.randn(2, generator=gen, dtype=F64)
    times = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    traj = gradient_flow(
        lambda x: a @ x, xi0, lambda z: 0.5 * ((z - y) ** 2).sum(), t_eval=times, rtol=1e-10, atol=1e-12
    )
    star = torch.linalg.lstsq(a, y).solution
    exact = torch.stack([star + torch.linalg.matrix_exp(-a.T @ a * t) @ (xi0 - star) for t in times])
    assert float((traj.params - exact).abs().max()) <= 1e-9
    assert float((traj.outputs - exact @ a.T).abs().max()) <= 1e-9


def test_natural_gradient_descent_literal_and_closed_form():
    a, y, xi0, phi, loss = _linear_problem()
    eps, k = 0.3, 5
    traj = natural_gradient_descent(phi, xi0, loss, step_size=eps, n_steps=k)
    # literal first step: ξ₁ = ξ₀ − ε G⁺ Jᵀ ∇z L with G = AᵀA
    literal = xi0 - eps * torch.linalg.pinv(a.T @ a, hermitian=True) @ a.T @ (a @ xi0 - y)
    assert float((traj.params[1] - literal).abs().max()) <= 1e-12
    # on a linear model each step contracts the residual by (1 − ε)
    z0 = a @ xi0
    exact = torch.stack([y + (1 - eps) ** i * (z0 - y) for i in range(k + 1)])
    assert float((traj.outputs - exact).abs().max()) <= 1e-12
    assert torch.allclose(traj.times, eps * torch.arange(k + 1, dtype=F64))


def test_dict_params_and_float64_state():
    q = torch.tensor([0.4, 0.1, 0.2, 0.3], dtype=F64)

    def indep(p):
        return torch.outer(torch.softmax(p["a"], 0), torch.softmax(p["b"], 0)).reshape(-1)

    params0 = {"a": torch.tensor([0.5, -0.5]), "b": torch.tensor([1.0, 0.0])}  # float32 in, float64 state
    traj = natural_gradient_descent(indep, params0, _kl(q), ng.metrics.FisherRao(), step_size=0.1, n_steps=2)
    assert traj.params.dtype == F64 and traj.params.shape == (3, 4)
    p64 = {k: v.to(F64) for k, v in params0.items()}
    v = ng.flatten_params(ng.natural_gradient(indep, p64, _kl(q), ng.metrics.FisherRao()).direction)
    assert float((traj.params[1] - (ng.flatten_params(p64) - 0.1 * v)).abs().max()) <= 1e-14
    kept = natural_gradient_descent(
        indep, params0, _kl(q.float()), ng.metrics.FisherRao(), n_steps=1, dtype=None
    )
    assert kept.params.dtype == torch.float32


def test_compare_parametrisations_literal():
    q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    scale = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=F64)
    xi0 = torch.tensor([1.0, -0.5, 0.2, 0.4], dtype=F64)
    kw = {"metric": ng.metrics.FisherRao(), "step_size": 0.2, "n_steps": 3}
    a = natural_gradient_descent(_softmax, xi0, _kl(q), **kw)
    b = natural_gradient_descent(lambda e: _softmax(scale * e), xi0 / scale, _kl(q), **kw)
    cmp = compare_parametrisations(a, b, lambda e: scale * e)
    gaps = torch.linalg.vector_norm(a.params - b.params * scale, dim=1)
    assert cmp.param_gaps == tuple(gaps.tolist()) and cmp.max_param_gap == float(gaps.max())
    assert cmp.max_param_gap >= 1e-2  # diagonal scaling: F w ≠ v
    assert cmp.max_model_gap == float(torch.linalg.vector_norm(a.outputs - b.outputs, dim=1).max())


def test_trajectory_to_dict_is_json():
    traj = natural_gradient_descent(
        lambda x: 2 * x, torch.ones(2, dtype=F64), lambda z: (z**2).sum(), n_steps=1
    )
    data = json.loads(json.dumps(traj.to_dict()))
    assert data["params"][0] == [1.0, 1.0] and len(data["times"]) == 2
    assert isinstance(traj, Trajectory)


def test_flow_errors(monkeypatch):
    a, y, xi0, phi, loss = _linear_problem()
    with pytest.raises(ValueError, match=r"natural_gradient_flow: t_eval must be strictly increasing"):
        natural_gradient_flow(phi, xi0, loss, t_eval=[0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match=r"natural_gradient_flow: t_eval must hold at least 2 times"):
        natural_gradient_flow(phi, xi0, loss, t_eval=[0.0])
    with pytest.raises(ValueError, match=r"gradient_flow: rtol and atol must be > 0"):
        gradient_flow(phi, xi0, loss, rtol=0.0)
    with pytest.raises(ValueError, match=r"natural_gradient_descent: step_size must be a float > 0"):
        natural_gradient_descent(phi, xi0, loss, step_size=-0.1)
    with pytest.raises(ValueError, match=r"natural_gradient_descent: n_steps must be an int >= 0"):
        natural_gradient_descent(phi, xi0, loss, n_steps=1.5)
    with pytest.raises(TypeError, match=r"flows: params0 must be a Tensor or a dict of Tensors"):
        natural_gradient_descent(phi, [0.0, 1.0], loss)
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)
    with pytest.raises(ImportError, match=r"natgrad.flows: .*torchdiffeq.*'experiments' extra"):
        natural_gradient_flow(phi, xi0, loss)


def test_compare_errors():
    _, _, xi0, phi, loss = _linear_problem()
    a = natural_gradient_descent(phi, xi0, loss, n_steps=2)
    b = natural_gradient_descent(phi, xi0, loss, n_steps=3)
    with pytest.raises(ValueError, match=r"compare_parametrisations: both trajectories must be sampled"):
        compare_parametrisations(a, b)
    c = natural_gradient_descent(lambda x: x, xi0, lambda z: (z**2).sum(), n_steps=2)
    with pytest.raises(ValueError, match=r"compare_parametrisations: model outputs must have the same shape"):
        compare_parametrisations(a, c)


def test_routes_agree_on_a_flow_step():
    _, _, xi0, phi, loss = _linear_problem()
    steps = [
        natural_gradient_descent(phi, xi0, loss, n_steps=1, route=r).params[1] for r in ("primal", "lstsq")
    ]
    assert float((steps[0] - steps[1]).abs().max()) <= 1e-12


def test_core_modules_import_only_torch_and_natgrad():
    """diagnostics and flows: module-level imports are torch, natgrad and the standard library only."""
    import ast
    import pathlib

    import natgrad

    allowed = {"__future__", "collections", "dataclasses", "math", "typing", "torch", "natgrad"}
    root = pathlib.Path(natgrad.__file__).parent
    for path in [*root.joinpath("diagnostics").glob("*.py"), *root.joinpath("flows").glob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: torchdiffeq is imported lazily inside a function
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert all(n.split(".")[0] in allowed for n in names), (path.name, names)
