"""An affine map θ ↦ z₀ + J (θ − θ₀) with J materialised: its own Jacobian, exactly, by construction.

A linearised model (natgrad.pde's residuals linearised at θ₀, for one) is such a map. Its derivative is J at
every θ whatever J holds, so nothing about it needs checking by autodiff, and its value at θ₀ is z₀ without a
product: `Linearization` takes both as they are instead of evaluating the map and comparing J with a JVP.
"""

from __future__ import annotations

from torch import Tensor

from natgrad._tree import Params, flatten_params


class AffineMap:
    """θ ↦ z₀ + J (θ − θ₀), J of shape (z₀.numel(), d) on flattened parameters (in θ₀'s order).

    Args:
        z0: the value at θ₀ (any shape; J's rows follow its flattened order).
        jacobian: J, (z0.numel(), d).
        params: θ₀.
    """

    def __init__(self, z0: Tensor, jacobian: Tensor, params: Params) -> None:
        self.z0 = z0
        self.dense_jacobian = jacobian
        self.theta0 = flatten_params(params)
        if jacobian.ndim != 2 or tuple(jacobian.shape) != (z0.numel(), self.theta0.numel()):
            raise ValueError(
                f"AffineMap: jacobian must have shape (z0.numel(), d) = ({z0.numel()}, {self.theta0.numel()}), "
                f"got {tuple(jacobian.shape)}"
            )

    def __call__(self, params: Params) -> Tensor:
        """z₀ + J (θ − θ₀), shaped like z₀."""
        step = flatten_params(params) - self.theta0
        # J in the parameters' dtype (a float64 reference evaluating a float32 map); no copy when they agree
        return self.z0 + (self.dense_jacobian.to(step.dtype) @ step).reshape(self.z0.shape)
