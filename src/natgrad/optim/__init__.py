"""Training with exact natural gradients: the `NGD` optimizer and the losses that carry their metric.

Example::

    opt = NGD(model.parameters())                           # safeguarded exact steps
    f = opt.functional(model)
    for x, y in batches:
        opt.step(lambda p: f(p, x), CrossEntropy(y))       # categorical Fisher from the loss

    opt.step(lambda p: residuals(f, p))                     # Gauss–Newton on a residual vector

    opt = NGD.from_module(model, metric=ng.metrics.Categorical())
    opt.step(closure)                                       # torch-style closure (zero_grad, loss, backward)
"""

from ._averaged import AveragedGram
from ._core import Factorized, engine_factorize
from ._damping import LevenbergMarquardt
from ._errors import NGDStepError
from ._line_search import (
    Backtracking,
    FullStep,
    GridSearch,
    LineProblem,
    backtracking,
    default_grid,
    grid_search,
)
from ._losses import BinaryCrossEntropy, CrossEntropy, GaussianNLL, LeastSquares, monte_carlo_factor
from .ngd import NGD

__all__ = [
    "NGD",
    "AveragedGram",
    "Backtracking",
    "FullStep",
    "GridSearch",
    "LineProblem",
    "NGDStepError",
    "Factorized",
    "engine_factorize",
    "BinaryCrossEntropy",
    "CrossEntropy",
    "GaussianNLL",
    "LeastSquares",
    "LevenbergMarquardt",
    "backtracking",
    "default_grid",
    "grid_search",
    "monte_carlo_factor",
]
