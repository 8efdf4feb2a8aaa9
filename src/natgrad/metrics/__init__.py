"""Output-space metrics g(z). Each is represented by a factor B with g = B Bᵀ."""

from natgrad.metrics._base import LocalMetric, Metric
from natgrad.metrics._categorical import Categorical, categorical_factor_blocks
from natgrad.metrics._dense import Dense, Factor, PointDependent
from natgrad.metrics._diagonal import Bernoulli, Euclidean, FisherRao, Gaussian
from natgrad.metrics._monte_carlo import categorical_scores, monte_carlo_blocks

__all__ = [
    "Bernoulli",
    "Categorical",
    "Dense",
    "Euclidean",
    "Factor",
    "FisherRao",
    "Gaussian",
    "LocalMetric",
    "Metric",
    "PointDependent",
    "categorical_factor_blocks",
    "categorical_scores",
    "monte_carlo_blocks",
]
