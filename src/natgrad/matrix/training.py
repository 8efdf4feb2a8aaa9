"""Training a deep matrix factorisation on a completion problem: gradient descent and natural gradient descent.

Both loops record the same trajectory (train / test error, singular values of E, drift of the unobserved
entries), so that the two can be compared entry by entry. The natural gradient is the library's
:func:`natgrad.natural_gradient` on the layer parameters, with either the full Fisher (φ = E, Euclidean metric
on all n² entries) or the observed-entry Fisher (φ = E restricted to Ω).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

import natgrad as ng
from natgrad.matrix.completion import CompletionProblem, completion_errors
from natgrad.matrix.factorization import end_to_end, layer_gradients, observed_entries

FISHERS = ("full", "observed")
"""Where the Fisher is taken: on all n² entries (``"full"``) or on the observed ones only."""


def natural_direction(
    problem: CompletionProblem,
    layers: dict[str, torch.Tensor],
    fisher: str,
    *,
    method: str = "auto",
    tol: float | None = None,
    max_iter: int | None = None,
) -> ng.NaturalGradient:
    """The Moore–Penrose natural gradient of L = ½‖P_Ω(E − W*)‖² on the layers, for one choice of Fisher.

    ``fisher="full"``: φ(W) = E (all n² entries), G = Jᵀ J; with J surjective the pushforward is
    J v = P_Ω(E − W*), so NGF gives Ė = −P_Ω(E − W*). ``fisher="observed"``: φ(W) = E_Ω, G = J_Ωᵀ J_Ω; the
    pushforward on Ω is E_Ω − W*_Ω and the unobserved entries move by J_Ωᶜ v, which depends on the depth.
    """
    if fisher == "full":
        return ng.natural_gradient(
            end_to_end, layers, problem.observed_loss, method=method, tol=tol, max_iter=max_iter
        )
    if fisher == "observed":
        index = problem.observed_index
        observed_target = problem.target.flatten()[index]

        def loss(z: torch.Tensor) -> torch.Tensor:
            return 0.5 * ((z - observed_target) ** 2).sum()

        return ng.natural_gradient(
            observed_entries(index), layers, loss, method=method, tol=tol, max_iter=max_iter
        )
    raise ValueError(f"natural_direction: fisher must be one of {FISHERS}, got {fisher!r}")


class _Recorder:
    """Collects the trajectory of E every ``every`` steps (and at the last step)."""

    def __init__(self, problem: CompletionProblem, initial: torch.Tensor, num_singular: int, every: int):
        self.problem = problem
        self.unobserved = ~problem.mask
        self.initial_unobserved = initial.detach()[self.unobserved].clone()
        self.initial_norm = float(torch.linalg.vector_norm(self.initial_unobserved))
        self.num_singular = num_singular
        self.every = max(1, every)
        self.data: dict[str, list[Any]] = {
            key: []
            for key in ("step", "time", "train_mse", "test_mse", "unobserved_drift", "unobserved_rms_change")
        }
        self.data["singular_values"] = []

    def __call__(self, step: int, time: float, matrix: torch.Tensor, force: bool = False) -> dict[str, float]:
        errors = completion_errors(matrix, self.problem)
        already = bool(self.data["step"]) and self.data["step"][-1] == step
        if (force or step % self.every == 0) and not already:
            change = matrix.detach()[self.unobserved] - self.initial_unobserved
            change_norm = float(torch.linalg.vector_norm(change))
            self.data["step"].append(step)
            self.data["time"].append(time)
            self.data["train_mse"].append(errors["train_mse"])
            self.data["test_mse"].append(errors["test_mse"])
            # relative drift ‖E_u(t) − E_u(0)‖ / ‖E_u(0)‖ and its size next to unit-variance targets
            self.data["unobserved_drift"].append(change_norm / max(self.initial_norm, 1e-300))
            self.data["unobserved_rms_change"].append(change_norm / math.sqrt(max(1, change.numel())))
            self.data["singular_values"].append(
                torch.linalg.svdvals(matrix.detach())[: self.num_singular].tolist()
            )
        return errors

    def finish(self, steps: int, converged: bool, matrix: torch.Tensor) -> dict[str, Any]:
        errors = completion_errors(matrix, self.problem)
        return {
            **self.data,
            "steps": steps,
            "converged": converged,
            "final_train_mse": errors["train_mse"],
            "final_test_mse": errors["test_mse"],
            "final_all_mse": errors["all_mse"],
            "unobserved_variance": errors["unobserved_variance"],
            "final_unobserved_drift": self.data["unobserved_drift"][-1],
            "final_unobserved_rms_change": self.data["unobserved_rms_change"][-1],
        }


def gradient_descent(
    problem: CompletionProblem,
    layers: dict[str, torch.Tensor],
    *,
    lr: float,
    max_steps: int,
    train_tol: float = 1e-6,
    record_every: int = 50,
    num_singular: int = 10,
) -> dict[str, Any]:
    """Full-batch GD W_j ← W_j − lr·∇_{W_j} L on L = ½ Σ_Ω (E − W*)², stopped once train MSE < ``train_tol``.

    Returns:
        The recorded trajectory (lists over recorded steps; ``time`` = lr·step) and final errors; ``converged``
        says whether the train MSE reached ``train_tol`` within ``max_steps`` (a diverged run stops early
        with ``converged=False``).
    """
    if not lr > 0 or max_steps < 0:
        raise ValueError(
            f"gradient_descent: expected lr > 0 and max_steps >= 0, got lr={lr}, max_steps={max_steps}"
        )
    layers = {name: weight.detach().clone() for name, weight in layers.items()}
    matrix = end_to_end(layers)
    record = _Recorder(problem, matrix, num_singular, record_every)
    step, converged = 0, False
    while True:
        errors = record(step, lr * step, matrix)
        converged = errors["train_mse"] < train_tol
        if converged or step >= max_steps or not math.isfinite(errors["train_mse"]):
            break
        grads = layer_gradients(layers, problem.observed_residual(matrix))
        layers = {name: layers[name] - lr * grads[name] for name in layers}
        matrix = end_to_end(layers)
        step += 1
    record(step, lr * step, matrix, force=True)
    return record.finish(step, converged, matrix)


def natural_gradient_descent(
    problem: CompletionProblem,
    layers: dict[str, torch.Tensor],
    *,
    fisher: str,
    max_step: float,
    max_relative_change: float,
    max_steps: int,
    train_tol: float = 1e-6,
    method: str = "auto",
    tol: float | None = None,
    max_iter: int | None = None,
    record_every: int = 1,
    num_singular: int = 10,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Discrete NGD W ← W − η_k v_k with v_k from :func:`natural_direction` and a capped step size.

    η_k = min(max_step, κ / max_j ‖V_j‖_F/‖W_j‖_F) with κ = ``max_relative_change``: no layer moves by more
    than a fraction κ of its norm in one step. From a small initialisation ‖v‖ ~ init^{-(L−1)/L}, so a fixed
    step explodes (the O(η²‖v‖²) terms of W_L⋯W_1 dominate); the cap keeps the second-order terms at O(κ²)
    relative to E while E grows geometrically, and lets η reach ``max_step`` once E is of order W*.

    Returns:
        The recorded trajectory (``time`` = Σ η_k, the flow time) and final errors, plus ``step_sizes``.
    """
    if not max_step > 0 or not max_relative_change > 0:
        raise ValueError(
            "natural_gradient_descent: expected max_step > 0 and max_relative_change > 0, got "
            f"max_step={max_step}, max_relative_change={max_relative_change}"
        )
    layers = {name: weight.detach().clone() for name, weight in layers.items()}
    matrix = end_to_end(layers)
    record = _Recorder(problem, matrix, num_singular, record_every)
    step, time, converged, step_sizes = 0, 0.0, False, []
    while True:
        errors = record(step, time, matrix)
        converged = errors["train_mse"] < train_tol
        if converged or step >= max_steps or not math.isfinite(errors["train_mse"]):
            break
        direction = natural_direction(
            problem, layers, fisher, method=method, tol=tol, max_iter=max_iter
        ).direction
        ratio = max(
            float(torch.linalg.matrix_norm(direction[name]) / torch.linalg.matrix_norm(layers[name]))
            for name in layers
        )
        eta = min(max_step, max_relative_change / max(ratio, 1e-300))
        layers = {name: layers[name] - eta * direction[name] for name in layers}
        matrix = end_to_end(layers)
        step += 1
        time += eta
        step_sizes.append(eta)
        if on_step is not None:
            on_step(step)
    record(step, time, matrix, force=True)
    return {**record.finish(step, converged, matrix), "step_sizes": step_sizes}
