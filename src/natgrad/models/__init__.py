"""Parametrisations: nn.Module adapters and Jacobian products."""

from natgrad.models._linearized import Linearization, jacobian
from natgrad.models._module import ModuleRecord, from_module, functional_call, module_record

__all__ = ["Linearization", "ModuleRecord", "from_module", "functional_call", "jacobian", "module_record"]
