"""Metrics given as matrices, factors or functions of the model point."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from natgrad._checks import check_finite, check_tensor
from natgrad.metrics._base import DenseLocal, LocalMetric, Metric, check_output_size, psd_factor


def _match(call: str, what: str, m: Tensor, z: Tensor) -> Tensor:
    if m.dtype != z.dtype or m.device != z.device:
        raise TypeError(
            f"{call}: {what} is {m.dtype} on {m.device} but the outputs are {z.dtype} on {z.device}; "
            "build the metric with the outputs' dtype and device"
        )
    return m


class Dense(Metric):
    """g = matrix, a fixed symmetric PSD (n, n) matrix acting on ``z.flatten()``."""

    def __init__(self, matrix: Tensor) -> None:
        check_tensor("Dense", "matrix", matrix)
        self._factor = psd_factor("Dense", matrix)
        self.n = matrix.shape[0]

    def at(self, z: Tensor, call: str = "Dense") -> LocalMetric:
        check_output_size(call, "the Dense metric", z, self.n)
        return DenseLocal(_match(call, "the Dense metric", self._factor, z))


class Factor(Metric):
    """g = B Bᵀ for a given factor B of shape (n, r): PSD by construction."""

    def __init__(self, factor: Tensor) -> None:
        check_tensor("Factor", "B", factor)
        if factor.ndim != 2:
            raise ValueError(f"Factor: B must be a matrix (n, r), got shape {tuple(factor.shape)}")
        if not factor.is_floating_point():
            raise TypeError(f"Factor: B must be floating point, got dtype {factor.dtype}")
        check_finite("Factor", "B", factor)
        self.b = factor

    def at(self, z: Tensor, call: str = "Factor") -> LocalMetric:
        check_output_size(call, "the Factor metric", z, self.b.shape[0])
        return DenseLocal(_match(call, "the factor B", self.b, z))


class PointDependent(Metric):
    """g(z) = fn(z): a symmetric PSD (n, n) matrix computed at each model point."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        if not callable(fn):
            raise TypeError(
                f"PointDependent: fn must be callable z -> (n, n) matrix, got {type(fn).__name__}"
            )
        self.fn = fn

    def at(self, z: Tensor, call: str = "PointDependent") -> LocalMetric:
        m = self.fn(z)
        n = z.numel()
        if not isinstance(m, Tensor) or tuple(m.shape) != (n, n):
            got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(f"{call}: PointDependent fn(z) must return a ({n}, {n}) matrix, got {got}")
        return DenseLocal(psd_factor(call, _match(call, "fn(z)", m, z), "PointDependent fn(z)"))
