"""Parametrisations: nn.Module adapters and Jacobian products."""

from natgrad.models._linearized import Linearization, jacobian
from natgrad.models._module import from_module

__all__ = ["Linearization", "from_module", "jacobian"]
