"""Parametrisations: nn.Module adapters and Jacobian products."""

from natgrad.models._linearized import Linearization, jacobian
from natgrad.models._module import ModuleRecord, from_module, module_record

__all__ = ["Linearization", "ModuleRecord", "from_module", "jacobian", "module_record"]
