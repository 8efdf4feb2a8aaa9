"""Deep matrix factorisation and low-rank matrix completion (torch only)."""

from natgrad.matrix.completion import CompletionProblem, completion_errors, make_completion_problem
from natgrad.matrix.factorization import (
    arora_layers,
    end_to_end,
    end_to_end_velocity,
    imbalanced_layers,
    layer_gradients,
    layer_names,
    observed_entries,
)
from natgrad.matrix.training import FISHERS, gradient_descent, natural_direction, natural_gradient_descent

__all__ = [
    "FISHERS",
    "CompletionProblem",
    "arora_layers",
    "completion_errors",
    "end_to_end",
    "end_to_end_velocity",
    "gradient_descent",
    "imbalanced_layers",
    "layer_gradients",
    "layer_names",
    "make_completion_problem",
    "natural_direction",
    "natural_gradient_descent",
    "observed_entries",
]
