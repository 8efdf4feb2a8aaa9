"""Parametrisations: nn.Module adapters and Jacobian products."""

from natgrad.models._affine import AffineMap
from natgrad.models._linearized import Linearization, jacobian
from natgrad.models._module import ModuleRecord, from_module, functional_call, module_record

__all__ = [
    "AffineMap",
    "Linearization",
    "ModuleRecord",
    "from_module",
    "functional_call",
    "jacobian",
    "module_record",
]
