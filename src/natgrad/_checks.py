"""Validation helpers: errors name the call, say what was expected and what came."""

from __future__ import annotations

from typing import SupportsFloat, cast

import torch
from torch import Tensor

from natgrad._tree import Params, leaf_names, leaves
from natgrad.exceptions import InvalidInputError, InvalidTypeError


def check_finite(call: str, what: str, tensor: Tensor, hint: str = "") -> None:
    """Raise ``ValueError`` if ``tensor`` has NaN or inf entries."""
    # A finite sum proves every entry finite (NaN and ±inf propagate) and costs no boolean copy; only a
    # sum that overflows or hits a bad entry needs the entrywise test.
    if tensor.is_floating_point() and bool(torch.isfinite(tensor.sum())):
        return
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        msg = f"{call}: {what} contains {bad} non-finite value(s) (NaN or inf)"
        raise InvalidInputError(msg + (f"; {hint}" if hint else ""))


def check_params(call: str, params: Params) -> tuple[torch.dtype, torch.device]:
    """Params must be floating tensors of one dtype and device, all finite. Returns (dtype, device)."""
    if isinstance(params, dict) or hasattr(params, "items"):
        if len(params) == 0:
            raise InvalidInputError(
                f"{call}: params is an empty dict; expected at least one parameter tensor"
            )
        for name, t in params.items():
            if not isinstance(t, Tensor):
                raise InvalidTypeError(
                    f"{call}: params[{name!r}] must be a torch.Tensor, got {type(t).__name__}"
                )
    elif not isinstance(params, Tensor):
        raise InvalidTypeError(
            f"{call}: params must be a Tensor or a dict of Tensors, got {type(params).__name__}"
        )
    tensors = leaves(params)
    names = leaf_names(params)
    dtype, device = tensors[0].dtype, tensors[0].device
    for name, t in zip(names, tensors, strict=True):
        if not t.is_floating_point():
            raise InvalidTypeError(f"{call}: parameter {name!r} must be floating point, got dtype {t.dtype}")
        if t.dtype != dtype or t.device != device:
            raise InvalidTypeError(
                f"{call}: all parameters must share one dtype and device; {names[0]!r} is "
                f"{dtype}/{device} but {name!r} is {t.dtype}/{t.device}; convert them with .to()"
            )
        check_finite(call, f"parameter {name!r}", t)
    return dtype, device


def check_tensor(call: str, what: str, value: object) -> None:
    """``value`` must be a ``torch.Tensor`` (not a list or array)."""
    if not isinstance(value, Tensor):
        raise InvalidTypeError(f"{call}: {what} must be a torch.Tensor, got {type(value).__name__}")


def check_real(call: str, what: str, value: object) -> float:
    """``value`` as a float; a TypeError naming ``what`` if it is not a real number (bools and strings refused)."""
    if isinstance(value, Tensor):
        ok = value.numel() == 1 and not value.is_complex()
    else:
        ok = not isinstance(value, bool | str | complex) and hasattr(value, "__float__")
    if not ok:
        got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else repr(value)
        raise InvalidTypeError(f"{call}: {what} must be a real number, got {got}")
    return float(cast(SupportsFloat, value))  # a Tensor of one element, or has __float__ (checked above)


def check_like(call: str, what: str, tensor: Tensor, shape: tuple[int, ...], like: Tensor) -> None:
    """``tensor`` must have ``shape``, the dtype and device of ``like``, and finite entries."""
    check_tensor(call, what, tensor)
    if tuple(tensor.shape) != tuple(shape):
        raise InvalidInputError(f"{call}: {what} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")
    if tensor.dtype != like.dtype:
        raise InvalidTypeError(
            f"{call}: {what} must have dtype {like.dtype} (that of the parameters), got {tensor.dtype}"
        )
    if tensor.device != like.device:
        raise InvalidTypeError(
            f"{call}: {what} must be on device {like.device} (that of the parameters), got {tensor.device}"
        )
    check_finite(call, what, tensor)
