"""Linear predictors under GD and natural gradient descent (the *Depth Without the Magic* building blocks).

* :mod:`~natgrad.linear.parametrisations`: ``w(θ)`` as modules — depth-1, deep linear, product- and
  signed-diagonal nets, each constructible from an end-to-end ``w0``.
* :mod:`~natgrad.linear.fisher`: where the Fisher is taken — training inputs, population (closed form or a
  fixed sample), empirical (not a true Fisher).
* :mod:`~natgrad.linear.dynamics`: GD / NGD steps and flows, margins (raw and normalised) and their closed
  form.
* :mod:`~natgrad.linear.references`: ℓ2 SVM, ℓ1 max-margin, minimum-norm interpolant.
* :mod:`~natgrad.linear.data`: Gaussian inputs, sparse teachers.
"""

from .data import gaussian_inputs, sparse_teacher, teacher_labels
from .dynamics import (
    METHODS,
    Trajectory,
    cosine,
    descend,
    direction,
    end_to_end_velocity,
    flow,
    jacobian_rank,
    margins,
    normalised_margin,
    step,
    training_fisher_margin,
)
from .fisher import (
    FisherSite,
    empirical_fisher,
    logistic_population_coefficients,
    logistic_population_factor,
    logistic_population_fisher,
    population_fisher,
    training_fisher,
    training_loss,
)
from .parametrisations import DeepLinear, DepthOne, LinearParametrisation, ProductDiagonal, SignedDiagonal
from .references import MaxMargin, l1_max_margin, min_norm_interpolant, svm_l2

__all__ = [
    "METHODS",
    "DeepLinear",
    "DepthOne",
    "FisherSite",
    "LinearParametrisation",
    "MaxMargin",
    "ProductDiagonal",
    "SignedDiagonal",
    "Trajectory",
    "cosine",
    "descend",
    "direction",
    "empirical_fisher",
    "end_to_end_velocity",
    "flow",
    "jacobian_rank",
    "gaussian_inputs",
    "l1_max_margin",
    "logistic_population_coefficients",
    "logistic_population_factor",
    "logistic_population_fisher",
    "margins",
    "min_norm_interpolant",
    "normalised_margin",
    "population_fisher",
    "sparse_teacher",
    "step",
    "svm_l2",
    "teacher_labels",
    "training_fisher",
    "training_fisher_margin",
    "training_loss",
]
