"""Invariance diagnostics: numerical checks of the statements about natural parameter gradients.

All checks materialise J = Dφ(ξ) and the metric g (n × n), so they are meant for small models; every
natural gradient they use comes from the engine (:func:`natgrad.natural_gradient`).
"""

from natgrad.diagnostics.cutoff import CutoffReport, cutoff_sensitivity
from natgrad.diagnostics.damping import DampingReport, damping_bias, loglog_slope
from natgrad.diagnostics.projector import (
    GInverseReport,
    ProjectorReport,
    ginverse_independence,
    projector_check,
    projector_matrix,
)
from natgrad.diagnostics.pushforward import PushforwardReport, model_gradient, pushforward_check
from natgrad.diagnostics.rank import SubmersionReport, submersion_test
from natgrad.diagnostics.reparametrisation import (
    ReparametrisationReport,
    chart_jacobian,
    kernel_invariance,
    pullback_metric,
    reparametrisation_check,
)

__all__ = [
    "CutoffReport",
    "DampingReport",
    "GInverseReport",
    "ProjectorReport",
    "PushforwardReport",
    "ReparametrisationReport",
    "SubmersionReport",
    "chart_jacobian",
    "cutoff_sensitivity",
    "damping_bias",
    "ginverse_independence",
    "kernel_invariance",
    "loglog_slope",
    "model_gradient",
    "projector_check",
    "projector_matrix",
    "pullback_metric",
    "pushforward_check",
    "reparametrisation_check",
    "submersion_test",
]
