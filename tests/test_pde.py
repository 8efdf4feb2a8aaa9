"""natgrad.pde: operators against closed forms, residual Jacobians against jacrev, one NGD step against lstsq."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import natgrad as ng
from natgrad import pde
from natgrad.optim import NGD

DT = torch.float64
BOX2 = [(0.0, 1.0), (0.0, 1.0)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Polynomial(nn.Module):
    """u(x, y, t) = a x² y + b y³ + c t x (a module torch.func differentiates per point)."""

    def __init__(self) -> None:
        super().__init__()
        self.coef = nn.Parameter(torch.tensor([1.3, -0.7, 2.1], dtype=DT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.coef
        return (a * x[:, 0] ** 2 * x[:, 1] + b * x[:, 1] ** 3 + c * x[:, 2] * x[:, 0]).unsqueeze(1)


class SinProduct(nn.Module):
    """u = A sin(πx) sin(2πy), Δu = −5π² u."""

    def __init__(self) -> None:
        super().__init__()
        self.amplitude = nn.Parameter(torch.tensor(0.8, dtype=DT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.amplitude * torch.sin(math.pi * x[:, 0]) * torch.sin(2 * math.pi * x[:, 1])).unsqueeze(1)


def test_operators_on_a_polynomial_match_the_closed_forms() -> None:
    net = pde.Network(Polynomial(), input_dim=3)
    assert not net.forward_propagation
    p = net.params()
    a, b, c = (float(v) for v in p["coef"])
    x = pde.uniform(17, [(-1, 1)] * 3, _gen(0))
    X, Y, T = x.unbind(1)
    close = dict(rtol=0, atol=1e-10)
    torch.testing.assert_close(pde.value(net, p, x), a * X**2 * Y + b * Y**3 + c * T * X, **close)
    grad = torch.stack([2 * a * X * Y + c * T, a * X**2 + 3 * b * Y**2, c * X], 1)
    torch.testing.assert_close(pde.gradient(net, p, x), grad, **close)
    torch.testing.assert_close(pde.laplacian(net, p, x), 2 * a * Y + 6 * b * Y, **close)
    torch.testing.assert_close(pde.laplacian(net, p, x, dims=(0,)), 2 * a * Y, **close)
    torch.testing.assert_close(pde.time_derivative(net, p, x), c * X, **close)
    heat = pde.LinearOperator(laplacian=-0.5, laplacian_dims=(0, 1), advection=(0, 0, 1), reaction=2.0)
    expected = c * X - 0.5 * (2 * a * Y + 6 * b * Y) + 2 * (a * X**2 * Y + b * Y**3 + c * T * X)
    torch.testing.assert_close(heat.apply(net, p, x), expected, **close)


def test_operators_on_a_sin_product_match_the_closed_forms() -> None:
    net = pde.Network(SinProduct(), input_dim=2)
    p = net.params()
    x = pde.uniform(23, BOX2, _gen(1))
    s, c = torch.sin(math.pi * x), torch.cos(math.pi * x)
    s2, c2 = torch.sin(2 * math.pi * x), torch.cos(2 * math.pi * x)
    u = 0.8 * s[:, 0] * s2[:, 1]
    close = dict(rtol=0, atol=1e-10)
    torch.testing.assert_close(pde.laplacian(net, p, x), -5 * math.pi**2 * u, **close)
    grad = 0.8 * torch.stack([math.pi * c[:, 0] * s2[:, 1], 2 * math.pi * s[:, 0] * c2[:, 1]], 1)
    torch.testing.assert_close(pde.gradient(net, p, x), grad, **close)
    varying = pde.LinearOperator(laplacian=lambda x: 1 + x[:, 0], reaction=lambda x: x[:, 1])
    torch.testing.assert_close(
        varying.apply(net, p, x), -(1 + x[:, 0]) * 5 * math.pi**2 * u + x[:, 1] * u, **close
    )


def test_forward_propagation_of_a_one_layer_tanh_network_matches_the_closed_form() -> None:
    """u = Σ_j c_j tanh(w_j·x + b_j) + c₀: ∇u = Σ c_j tanh'(z_j) w_j, Δu = Σ c_j tanh''(z_j) |w_j|²."""
    module = pde.mlp([3, 7, 1], generator=_gen(2))
    with torch.no_grad():
        module[0].bias.normal_(generator=_gen(3))
    net = pde.Network(module)
    assert net.forward_propagation
    p = net.params()
    W, b, C, c0 = p["0.weight"], p["0.bias"], p["2.weight"][0], p["2.bias"]
    x = pde.uniform(19, [(-2, 2)] * 3, _gen(4))
    a = torch.tanh(x @ W.T + b)
    d1, d2 = 1 - a**2, -2 * a * (1 - a**2)
    close = dict(rtol=0, atol=1e-10)
    torch.testing.assert_close(pde.value(net, p, x), a @ C + c0, **close)
    torch.testing.assert_close(pde.gradient(net, p, x), (d1 * C) @ W, **close)
    torch.testing.assert_close(pde.laplacian(net, p, x), (d2 * C) @ (W**2).sum(1), **close)
    torch.testing.assert_close(
        pde.laplacian(net, p, x, dims=(1, 2)), (d2 * C) @ (W[:, 1:] ** 2).sum(1), **close
    )


@pytest.mark.parametrize("activation", [nn.Tanh, nn.Sigmoid, nn.SiLU])
def test_forward_propagation_matches_torch_func_on_deep_vector_networks(activation) -> None:
    module = pde.mlp([3, 6, 5, 3], activation, generator=_gen(5))
    fast = pde.Network(module)
    slow = pde.Network(nn.Sequential(module, nn.Identity(), nn.Flatten()), input_dim=3)
    assert fast.forward_propagation and not slow.forward_propagation
    p = fast.params()
    slow_p = {f"0.{k}": v for k, v in p.items()}
    x = pde.uniform(11, [(-1, 1)] * 3, _gen(6))
    for dims in (None, (0, 2)):
        jf, js = fast.jet(p, x, dims), slow.jet(slow_p, x, dims)
        torch.testing.assert_close(jf.value, js.value, rtol=0, atol=1e-12)
        torch.testing.assert_close(jf.gradient, js.gradient, rtol=0, atol=1e-12)
        torch.testing.assert_close(jf.laplacian(), js.laplacian(), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        pde.divergence(fast, p, x), sum(js.gradient[:, k, k] for k in range(3)), rtol=0, atol=1e-12
    )


def _poisson_problem(widths=(2, 6, 1), per_side=4, module=None) -> pde.Problem:
    net = pde.Network(module if module is not None else pde.mlp(list(widths), generator=_gen(7)), input_dim=2)

    def f(x):
        return torch.sin(math.pi * x[:, 0]) * x[:, 1]

    return pde.Problem(
        net,
        [
            pde.interior(pde.grid(per_side, BOX2), lambda jet, x: jet.laplacian() + f(x)),
            pde.boundary(
                pde.box_boundary_grid(per_side, BOX2), lambda jet, x: jet.value - x[:, 0], weight=3.0
            ),
        ],
    )


def _jacrev_of_residuals(problem: pde.Problem, params) -> torch.Tensor:
    rows = torch.func.jacrev(problem.residuals)(params)
    return torch.cat([rows[k].reshape(problem.num_residuals, -1) for k in params], 1)


@pytest.mark.parametrize("path", ["forward", "torch.func"])
def test_residual_jacobian_matches_jacrev_of_the_literal_residual(path) -> None:
    module = pde.mlp([2, 6, 5, 1], generator=_gen(8))
    if path == "torch.func":
        module = nn.Sequential(module)
    problem = _poisson_problem(module=module)
    assert problem.network.forward_propagation == (path == "forward")
    params = problem.network.params()
    jac = problem.jacobian(params)
    assert jac.shape == (problem.num_residuals, ng.num_params(params))
    torch.testing.assert_close(jac, _jacrev_of_residuals(problem, params), rtol=0, atol=1e-12)
    torch.testing.assert_close(problem.jacobian(params, chunk_size=5), jac, rtol=0, atol=1e-14)
    r = problem.residuals(params)
    torch.testing.assert_close(problem.loss(params), 0.5 * r.pow(2).sum())
    # ½‖r‖² is the weighted PINN loss Σ_k (w_k/2) mean ρ_k²
    interior, edge = problem.conditions
    rho_i = interior.residual(pde.Jet(problem.network, params, interior.points), interior.points)
    rho_b = edge.residual(pde.Jet(problem.network, params, edge.points), edge.points)
    torch.testing.assert_close(problem.loss(params), 0.5 * rho_i.pow(2).mean() + 1.5 * rho_b.pow(2).mean())


@pytest.mark.parametrize("widths", [(2, 3, 1), (2, 8, 8, 1)], ids=["primal (d<=N)", "dual (d>N)"])
def test_natural_gradient_of_the_linearisation_is_the_reference_natural_gradient(widths) -> None:
    problem = _poisson_problem(widths, per_side=3)
    params = problem.network.params()
    loss = lambda r: 0.5 * r.pow(2).sum()  # noqa: E731
    fast = ng.natural_gradient(problem.linearize(params), params, loss)
    expected_route = "primal" if ng.num_params(params) <= problem.num_residuals else "dual"
    assert fast.method == expected_route
    ref = ng.reference.natural_gradient(problem.residuals, params, loss)
    # both decompose a Gram matrix of J: agreement to about cond(J)² · eps (backward-stable eigh)
    s = torch.linalg.svdvals(problem.jacobian(params))
    tol = 10 * float(s[0] / s[-1]) ** 2 * torch.finfo(DT).eps
    got, want = ng.flatten_params(fast.direction), ng.flatten_params(ref.direction)
    assert float((got - want).norm() / want.norm()) <= tol
    assert float((fast.pushforward - ref.pushforward).norm() / ref.pushforward.norm()) <= tol
    # J too large for the budget: the residual map itself, whose J·v and Jᵀ·u are one pass each (krylov)
    matrix_free = problem.linearize(params, memory_budget=8)
    assert matrix_free == problem.residuals
    krylov = ng.natural_gradient(matrix_free, params, loss, memory_budget=8)
    assert krylov.method == "krylov"
    got = ng.flatten_params(krylov.direction)
    assert float((got - want).norm() / want.norm()) <= max(tol, 1e-6)


class FixedFeatures(nn.Module):
    """u_θ(x) = θ · tanh(W x + b) + θ₀ with W, b fixed: linear in θ, so r(θ) = Aθ − y."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("W", torch.randn(features, 2, generator=_gen(9), dtype=DT))
        self.register_buffer("b", torch.randn(features, generator=_gen(10), dtype=DT))
        self.out = nn.Linear(features, 1, dtype=DT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(x @ self.W.T + self.b))


def test_one_ngd_step_on_a_linear_in_parameters_pde_lands_on_the_least_squares_solution() -> None:
    module = FixedFeatures(6)
    problem = _poisson_problem(module=module, per_side=6)
    # closed-form design matrix: Δ tanh(w·x + b) = tanh''(z) |w|², so ρ_int = Σ θ_k tanh''(z_k)|w_k|² + f
    rows, targets = [], []
    for c in problem.conditions:
        x = c.points
        a = torch.tanh(x @ module.W.T + module.b)
        scale = math.sqrt(c.weight / x.shape[0])
        if c.kind == "interior":
            feats = torch.cat(
                [-2 * a * (1 - a**2) * (module.W**2).sum(1), torch.zeros(len(x), 1, dtype=DT)], 1
            )
            rhs = -torch.sin(math.pi * x[:, 0]) * x[:, 1]
        else:
            feats, rhs = torch.cat([a, torch.ones(len(x), 1, dtype=DT)], 1), x[:, 0]
        rows.append(feats * scale)
        targets.append(rhs * scale)
    A, y = torch.cat(rows), torch.cat(targets)
    theta_star = torch.linalg.lstsq(A, y.unsqueeze(1)).solution.squeeze(1)
    opt = NGD(module.named_parameters(), lr=1.0)
    opt.step(problem)
    theta = torch.cat([module.out.weight.detach().reshape(-1), module.out.bias.detach()])
    torch.testing.assert_close(theta, theta_star, rtol=0, atol=1e-10)
    assert opt.last_step["method"] == "primal"


def test_ngd_on_a_1d_poisson_problem_reaches_the_error_after_a_fixed_number_of_steps() -> None:
    """−u'' = π² sin(πx) on (0, 1), u(0) = u(1) = 0, u* = sin(πx): 40 NGD steps, relative L2 ≤ 1e-7.

    NGD's residual cutoff (natgrad.linalg.residual_rtol) keeps directions the engine's default dropped: this seed
    passes 10⁻⁶ at step 38 with it (step 20 with the old cutoff) and ends 100× lower (seeds 0–5: 10⁻⁶ by
    step 14–32, 5·10⁻¹¹–4·10⁻¹⁰ after 40 steps).
    """
    torch.manual_seed(0)
    net = pde.Network(pde.mlp([1, 16, 1], generator=_gen(11)))
    box = [(0.0, 1.0)]
    problem = pde.Problem(
        net,
        [
            pde.interior(
                pde.grid(40, box), lambda jet, x: jet.laplacian() + math.pi**2 * torch.sin(math.pi * x[:, 0])
            ),
            pde.boundary(torch.tensor([[0.0], [1.0]], dtype=DT), lambda jet, x: jet.value),
        ],
    )
    opt = NGD(net.module.named_parameters(), line_search="grid")
    for _ in range(40):
        opt.step(problem)
    points, weights = pde.gauss_legendre(64, box)
    error = pde.l2_error(net, net.params(), lambda x: torch.sin(math.pi * x[:, 0]), points, weights)
    assert error <= 1e-7, error


# ------------------------------------------------------------------ samplers and errors
def test_samplers_are_seeded_inside_the_box_and_on_its_boundary() -> None:
    box = [(0.0, 2.0), (-1.0, 1.0), (0.0, 0.5)]
    a, b = pde.uniform(50, box, _gen(0)), pde.uniform(50, box, _gen(0))
    assert torch.equal(a, b) and a.shape == (50, 3) and a.dtype == DT
    lo, hi = torch.tensor([0.0, -1.0, 0.0], dtype=DT), torch.tensor([2.0, 1.0, 0.5], dtype=DT)
    assert bool(((a >= lo) & (a <= hi)).all())
    edge = pde.uniform_boundary(200, box, _gen(1))
    on_face = ((edge == lo) | (edge == hi)).any(1)
    assert bool(on_face.all()) and bool(((edge >= lo) & (edge <= hi)).all())
    lateral = pde.uniform_boundary(100, box, _gen(2), dims=(0, 1))
    assert bool(((lateral[:, :2] == lo[:2]) | (lateral[:, :2] == hi[:2])).any(1).all())
    g = pde.grid(4, box)
    assert g.shape == (64, 3) and bool(((g > lo) & (g < hi)).all())
    assert pde.grid(3, [(0.0, 1.0)], cell_centres=False).reshape(-1).tolist() == [0.0, 0.5, 1.0]
    square = pde.box_boundary_grid(5, BOX2)
    assert square.shape == (20, 2) and len(set(map(tuple, square.tolist()))) == 20
    assert bool(((square == 0) | (square == 1)).any(1).all())
    resample = pde.Resampler(lambda gen: pde.uniform(5, box, gen), every=3, seed=4)
    first = resample(0)
    assert resample(2) is first and not torch.equal(resample(3), first)
    again = pde.Resampler(lambda gen: pde.uniform(5, box, gen), every=3, seed=4)
    assert torch.equal(again(0), first)


def test_gauss_legendre_l2_error_is_exact_for_polynomials() -> None:
    """‖u − u*‖ for u = (a x² y + b y³ + c t x), u* = 0 except relative: against the closed-form integral."""
    box = [(0.0, 1.0), (0.0, 2.0)]
    points, weights = pde.gauss_legendre(5, box)
    assert float(weights.sum()) == pytest.approx(2.0, abs=1e-14)
    torch.testing.assert_close(
        (weights * points[:, 0] ** 4 * points[:, 1] ** 3).sum(), torch.tensor(0.2 * 4, dtype=DT)
    )
    net = pde.Network(SinProduct(), input_dim=2)
    # u = 0.8 sin(πx) sin(2πy) against u* = sin(πx) sin(2πy): relative error 0.2 exactly
    points, weights = pde.gauss_legendre(30, BOX2)
    exact = lambda x: torch.sin(math.pi * x[:, 0]) * torch.sin(2 * math.pi * x[:, 1])  # noqa: E731
    assert pde.l2_error(net, net.params(), exact, points, weights) == pytest.approx(0.2, abs=1e-12)
    assert pde.l2_error(net, net.params(), exact, points, weights, relative=False) == pytest.approx(
        0.1, abs=1e-12
    )


# ------------------------------------------------------------------ bad input
def test_bad_input_gets_errors_naming_the_call() -> None:
    net = pde.Network(pde.mlp([2, 4, 1], generator=_gen(0)))
    p = net.params()
    good = pde.grid(3, BOX2)
    with pytest.raises(ValueError, match=r"^pde\.laplacian: points must have shape \(N, 2\) .* got \(9, 3\)"):
        pde.laplacian(net, p, torch.zeros(9, 3, dtype=DT))
    nan = good.clone()
    nan[4, 1] = float("nan")
    with pytest.raises(ValueError, match=r"^pde\.gradient: 1 point\(s\) contain NaN or inf"):
        pde.gradient(net, p, nan)
    with pytest.raises(ValueError, match=r"condition 'interior': 1 point\(s\) contain NaN"):
        pde.Problem(net, [pde.interior(nan, lambda jet, x: jet.laplacian())])
    with pytest.raises(ValueError, match=r"condition 'boundary' has no points .*an empty boundary set"):
        pde.Problem(
            net,
            [pde.interior(good, lambda j, x: j.laplacian()), pde.boundary(good[:0], lambda j, x: j.value)],
        )
    with pytest.raises(ValueError, match=r"^pde\.Problem: no conditions given"):
        pde.Problem(net, [])
    wrong = pde.Problem(net, [pde.interior(good, lambda jet, x: jet.laplacian().unsqueeze(1))])
    with pytest.raises(
        ValueError, match=r"residual of condition 'interior' returned \(9, 1\), expected .* \(9,\)"
    ):
        wrong.residuals(p)
    with pytest.raises(TypeError, match=r"^pde\.value: expected a natgrad\.pde\.Network"):
        pde.value(net.module, p, good)
    with pytest.raises(ValueError, match=r"^pde\.divergence: the network has 1 output\(s\)"):
        pde.divergence(net, p, good)
    with pytest.raises(ValueError, match=r"^pde\.Jet: coordinate indices must be integers in \[-2, 2\)"):
        net.jet(p, good, laplacian_dims=(2,))
    with pytest.raises(ValueError, match=r"^pde\.uniform: box must be non-empty finite"):
        pde.uniform(3, [(1.0, 0.0)], _gen(0))
    with pytest.raises(
        TypeError, match=r"^pde\.value: points are torch\.float32 .* parameters are torch\.float64"
    ):
        pde.value(net, p, good.float())
    with pytest.raises(ValueError, match=r"^pde\.mlp: widths must be at least two"):
        pde.mlp([3])


def test_ngd_does_not_train_on_a_wrongly_shaped_residual() -> None:
    net = pde.Network(pde.mlp([2, 4, 1], generator=_gen(0)))
    problem = pde.Problem(net, [pde.interior(pde.grid(3, BOX2), lambda jet, x: jet.gradient)])
    before = {k: v.clone() for k, v in net.params().items()}
    opt = NGD(net.module.named_parameters())
    with pytest.raises(ValueError, match=r"residual of condition 'interior' returned \(9, 2\)"):
        opt.step(problem)
    assert all(torch.equal(before[k], v) for k, v in net.params().items())


def test_ngd_step_through_the_linearisation_equals_the_step_on_the_literal_residual() -> None:
    """NGD.step(problem) uses problem.linearize for the direction; the plain residual map gives the same step."""
    results = []
    for forward in ("problem", "literal"):
        problem = _poisson_problem((2, 3, 1), per_side=4)
        start = {k: v.clone() for k, v in problem.network.params().items()}
        opt = NGD(problem.network.module.named_parameters(), line_search="grid")
        opt.step(problem if forward == "problem" else (lambda p, problem=problem: problem.residuals(p)))
        step = ng.flatten_params(start) - ng.flatten_params(problem.network.params())
        results.append((step, opt.last_step))
    (fast, fast_step), (slow, slow_step) = results
    assert fast_step["step_size"] == slow_step["step_size"] and fast_step["rank"] == slow_step["rank"]
    # the two Jacobians agree to rounding; the primal solve amplifies that by up to cond(J)²
    s = torch.linalg.svdvals(problem.jacobian(start))
    tol = 10 * float(s[0] / s[-1]) ** 2 * torch.finfo(DT).eps
    assert slow.norm() > 0 and float((fast - slow).norm() / slow.norm()) <= tol, (
        fast - slow
    ).norm() / slow.norm()
    assert tol < 1e-7


def test_set_points_replaces_a_conditions_points_with_the_same_checks() -> None:
    problem = _poisson_problem((2, 4, 1), per_side=3)
    fresh = pde.uniform(7, BOX2, _gen(3))
    problem.set_points("interior", fresh)
    assert problem.conditions[0].points is fresh and problem.num_residuals == 7 + 12
    assert problem.residuals(problem.network.params()).shape == (19,)
    with pytest.raises(ValueError, match=r"condition 'interior' has no points"):
        problem.set_points("interior", fresh[:0])
    with pytest.raises(KeyError, match=r"no condition 'edge'; have \['interior', 'boundary'\]"):
        problem.set_points("edge", fresh)


def test_a_held_out_copy_shares_the_network_and_keeps_its_own_points() -> None:
    problem = _poisson_problem((2, 4, 1), per_side=3)
    held = problem.held_out()
    assert held.network is problem.network
    params = problem.network.params()
    assert torch.equal(held.residuals(params), problem.residuals(params))
    before = problem.conditions[0].points
    held.set_points("interior", pde.uniform(7, BOX2, _gen(4)))
    assert problem.conditions[0].points is before and held.num_residuals == 7 + 12
    assert problem.num_residuals == before.shape[0] + 12


def test_float32_networks_and_points_work_and_agree_with_float64() -> None:
    module64 = pde.mlp([2, 8, 1], generator=_gen(12))
    module32 = pde.mlp([2, 8, 1], dtype=torch.float32, generator=_gen(12))
    net64, net32 = pde.Network(module64), pde.Network(module32)
    x64 = pde.uniform(10, BOX2, _gen(13))
    x32 = pde.uniform(10, BOX2, _gen(13), dtype=torch.float32)
    lap32 = pde.laplacian(net32, net32.params(), x32)
    assert lap32.dtype == torch.float32
    torch.testing.assert_close(
        lap32.double(), pde.laplacian(net64, net64.params(), x64), rtol=1e-4, atol=1e-5
    )
    problem = pde.Problem(net32, [pde.interior(x32, lambda jet, x: jet.laplacian())])
    assert problem.jacobian(net32.params()).dtype == torch.float32


def test_a_network_declared_with_the_wrong_input_dimension_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"^pde\.Network: input_dim=3 but the first layer '0' takes 2 input\(s\)"
    ):
        pde.Network(pde.mlp([2, 4, 1], generator=_gen(0)), input_dim=3)
    assert pde.Network(pde.mlp([2, 4, 1], generator=_gen(0)), input_dim=2).input_dim == 2


def test_a_residual_that_is_nan_at_a_point_trains_nothing_and_names_the_condition() -> None:
    """Finite points, but a source term that is NaN at one of them: no step, no linearisation on it."""
    net = pde.Network(pde.mlp([2, 4, 1], generator=_gen(0)))
    points = pde.grid(3, BOX2)

    def source(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, 0] > 0.8, torch.full_like(x[:, 0], float("nan")), torch.sin(x[:, 0]))

    problem = pde.Problem(
        net,
        [
            pde.interior(points, lambda jet, x: jet.laplacian() + source(x)),
            pde.boundary(pde.box_boundary_grid(3, BOX2), lambda jet, x: jet.value),
        ],
    )
    before = {k: v.clone() for k, v in net.params().items()}
    opt = NGD(net.module.named_parameters(), line_search="grid")
    with pytest.raises(ValueError, match=r"^NGD\.step: the loss is not finite .* parameters are unchanged"):
        opt.step(problem)
    assert all(torch.equal(before[k], v) for k, v in net.params().items()) and opt.steps_taken == 0
    with pytest.raises(
        ValueError,
        match=r"^pde\.Problem\.linearize: the residual of condition 'interior' is NaN or inf at 3 of 9",
    ):
        problem.linearize(net.params())


def test_sobol_points_are_seeded_inside_the_box_with_face_shares_by_area() -> None:
    box = [(0.0, 2.0), (-1.0, 1.0), (0.0, 0.5)]
    lo, hi = torch.tensor([0.0, -1.0, 0.0], dtype=DT), torch.tensor([2.0, 1.0, 0.5], dtype=DT)
    a, b = pde.sobol(64, box, _gen(0)), pde.sobol(64, box, _gen(0))
    assert torch.equal(a, b) and a.shape == (64, 3) and a.dtype == DT
    assert bool(((a >= lo) & (a < hi)).all()) and not torch.equal(a, pde.sobol(64, box, _gen(1)))
    assert pde.sobol(8, box, _gen(0), dtype=torch.float32).dtype == torch.float32
    # a scrambled Sobol set of 2^k points puts exactly 2^k / 2^m points in each of the 2^m halves-cells
    # of the first m coordinates (a (0, m, s)-net property): here 8 per octant
    octants = ((a - lo) / (hi - lo) >= 0.5).long() @ torch.tensor([1, 2, 4])
    assert torch.bincount(octants, minlength=8).tolist() == [8] * 8
    edge = pde.sobol_boundary(130, box, _gen(1))
    assert edge.shape == (130, 3) and torch.equal(edge, pde.sobol_boundary(130, box, _gen(1)))
    assert bool(((edge >= lo) & (edge <= hi)).all())
    # face areas 1, 1 (x0), 1, 1 (x1), 4, 4 (x2) of 12: quotas 10.83 ×4 and 43.33 ×2, floors 126, and the
    # 4 left go to the largest remainders (0.83)
    counts = [int((edge[:, i] == side[i]).sum()) for i in range(3) for side in (lo, hi)]
    assert counts == [11, 11, 11, 11, 43, 43]
    lateral = pde.sobol_boundary(7, box, _gen(2), dims=(0,))
    assert ((lateral[:, 0] == 0).sum(), (lateral[:, 0] == 2).sum()) == (4, 3)  # a tie goes to the first face
    ends = pde.sobol_boundary(3, [(0.0, 1.0)], _gen(3))
    assert sorted(ends.reshape(-1).tolist()) == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="pde.sobol: n must be a positive integer, got 0"):
        pde.sobol(0, box, _gen(0))
    with pytest.raises(ValueError, match="pde.sobol_boundary: box must be"):
        pde.sobol_boundary(4, [(1.0, 0.0)], _gen(0))
    for sampler in (pde.sobol_boundary, pde.uniform_boundary):
        for dims in [(), (3,), (0, -3), (0.5,)]:
            with pytest.raises(
                ValueError, match=rf"pde.{sampler.__name__}: dims must be distinct coordinates"
            ):
                sampler(4, box, _gen(0), dims=dims)
        assert bool((sampler(4, box, _gen(0), dims=(-1,))[:, 2] % 0.5 == 0).all())  # −1: the last coordinate
        # any integer type names a coordinate: NumPy and 0-d tensor integers as plain ones
        plain = sampler(4, box, _gen(0), dims=(2,))
        assert torch.equal(sampler(4, box, _gen(0), dims=(np.int64(2),)), plain)
        assert torch.equal(sampler(4, box, _gen(0), dims=(torch.tensor(2),)), plain)


def test_sobol_points_integrate_a_smooth_function_far_better_than_uniform_draws() -> None:
    """Mean of f(x) = Π(1 + ½cos 2πx_i) over (0, 1)⁵ (integral 1) from 1,024 points, 20 seeded draws each."""
    box = [(0.0, 1.0)] * 5

    def f(x):
        return (1 + 0.5 * torch.cos(2 * math.pi * x)).prod(1)

    def rms_error(draw):
        return float(
            torch.tensor([(f(draw(1024, box, _gen(s))).mean() - 1) ** 2 for s in range(20)]).mean().sqrt()
        )

    uniform, sobol = rms_error(pde.uniform), rms_error(pde.sobol)
    # uniform: σ_f / √N with σ_f² = (1 + 1/8)⁵ − 1 = 0.80, i.e. 0.028; Sobol's error is orders smaller
    assert 0.5 * 0.028 < uniform < 2 * 0.028
    assert sobol < uniform / 10, (sobol, uniform)  # measured: 1.1e-3 against 3.1e-2


def test_resampler_update_puts_fresh_seeded_points_into_the_problem_every_k_steps() -> None:
    """Shapes and domain of every draw, the every-k rhythm, same seed ⇒ same sequence, nothing half-updated."""
    box = [(0.0, 1.0), (-1.0, 2.0)]
    lo, hi = torch.tensor([0.0, -1.0], dtype=DT), torch.tensor([1.0, 2.0], dtype=DT)

    def draw(gen: torch.Generator) -> dict[str, torch.Tensor]:
        return {"interior": pde.uniform(7, box, gen), "edge": pde.uniform_boundary(5, box, gen)}

    def problem() -> pde.Problem:
        return pde.Problem(
            pde.Network(pde.mlp([2, 3, 1], generator=_gen(0))),
            [
                pde.interior(pde.grid(2, box), lambda jet, x: jet.laplacian()),
                pde.boundary(pde.box_boundary_grid(2, box), lambda jet, x: jet.value, name="edge"),
            ],
        )

    first, second = problem(), problem()
    resample, again = pde.Resampler(draw, every=2, seed=5), pde.Resampler(draw, every=2, seed=5)
    seen = []
    for step in range(6):
        fresh = resample.update(first, step)
        assert fresh == (step % 2 == 0) and again.update(second, step) == fresh
        inside, edge = (c.points for c in first.conditions)
        assert inside.shape == (7, 2) and edge.shape == (5, 2) and first.num_residuals == 12
        assert bool(((inside >= lo) & (inside <= hi)).all())
        assert bool(((edge == lo) | (edge == hi)).any(1).all())
        for mine, theirs in zip(first.conditions, second.conditions, strict=True):
            assert torch.equal(mine.points, theirs.points)
        seen.append(inside)
    assert seen[0] is seen[1] and not torch.equal(seen[1], seen[2])
    assert torch.equal(seen[0], draw(_gen(5))["interior"])  # the first draw comes from the seed itself

    kept = [c.points for c in first.conditions]
    with pytest.raises(KeyError, match="name no condition"):
        pde.Resampler(lambda g: {**draw(g), "initial": pde.uniform(3, box, g)}, 1).update(first, 0)
    with pytest.raises(ValueError, match="condition 'edge'"):  # the interior set is fine, nothing changes
        pde.Resampler(lambda g: {**draw(g), "edge": pde.uniform(3, box, g)[:0]}, 1).update(first, 0)
    assert all(c.points is p for c, p in zip(first.conditions, kept, strict=True))
    with pytest.raises(TypeError, match=r"\{condition label: points\}"):
        pde.Resampler(lambda g: pde.uniform(3, box, g), 1).update(first, 0)
