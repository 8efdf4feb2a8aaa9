"""Module-specific structure: which layer types have a closed-form kernel contribution, and how.

Supported with structure (forward not overridden): ``nn.Linear`` (any number of leading axes, summed as
shared positions), ``nn.Conv1d``/``nn.Conv2d`` (stride, padding incl. 'same' and non-zero padding modes,
dilation, groups), ``nn.Embedding`` (without max_norm, scale_grad_by_freq or sparse gradients), affine
``nn.LayerNorm``, ``nn.GroupNorm``, and ``nn.BatchNorm1d/2d/3d`` in eval mode with running statistics.
Every other module owning trainable parameters goes through the generic fallback: batched vector-Jacobian
products of the module's output with respect to its own parameters, with the module re-run on its recorded
inputs so that only this call's use of the parameters counts.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from natgrad.exceptions import StructuredUnsupported

from ._capture import ModuleCall

SharedLinearBlock = tuple[torch.Tensor, torch.Tensor]  # x (N, T, P), s (N, k, T, O)


def _plain(module: nn.Module, cls: type[nn.Module]) -> bool:
    """True when ``module`` is a ``cls`` whose forward is the library's own."""
    return isinstance(module, cls) and type(module).forward is cls.forward


def structure_of(module: nn.Module) -> str:
    """Name of the structured formula used for ``module``, or ``"generic"``."""
    if _plain(module, nn.Linear):
        return "linear"
    if _plain(module, nn.Conv1d) or _plain(module, nn.Conv2d):
        return "conv"
    if _plain(module, nn.Embedding):
        plain = module.max_norm is None and not module.scale_grad_by_freq and not module.sparse
        return "embedding" if plain else "generic"
    if _plain(module, nn.LayerNorm) or _plain(module, nn.GroupNorm):
        return "norm"
    batchnorm = nn.modules.batchnorm._BatchNorm
    if isinstance(module, batchnorm) and type(module).forward is batchnorm.forward:
        return "norm"
    return "generic"


def _with_bias(x: torch.Tensor, params: dict, weight: str = "weight", bias: str = "bias") -> torch.Tensor:
    parts = [x] if weight in params else []
    if bias in params:
        parts.append(torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device))
    return torch.cat(parts, dim=-1)


def linear_blocks(call: ModuleCall, s: torch.Tensor) -> list[SharedLinearBlock]:
    """Linear y = W x + b over positions t (all axes between batch and features)."""
    module: Any = call.module
    x = call.args[0]
    n = x.shape[0]
    x = x.reshape(n, -1, module.in_features)
    s = s.transpose(0, 1).reshape(n, s.shape[0], -1, module.out_features)
    return [(_with_bias(x, call.params), s)]


def conv_blocks(call: ModuleCall, s: torch.Tensor) -> list[SharedLinearBlock]:
    """Conv1d/Conv2d as a linear map of unfolded patches, one block per group."""
    module: Any = call.module
    x = call.args[0]
    spatial = x.dim() - 2
    if spatial != (1 if isinstance(module, nn.Conv1d) else 2):
        raise StructuredUnsupported.at(
            "structured_kernel",
            f"{type(module).__name__} {call.name!r} expects batched input (N, C, ...), "
            f"got shape {tuple(x.shape)}",
        )
    padding = module.padding
    if module.padding_mode != "zeros" or isinstance(padding, str):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        padding = (0,) * spatial
    kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    if spatial == 1:
        x = x.unsqueeze(2)
        kernel, stride, dilation, padding = (1, *kernel), (1, *stride), (1, *dilation), (0, *padding)
    patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (N, Cin·kk, L)
    n, _, positions = patches.shape
    patches = patches.transpose(1, 2)
    width = s.shape[0]
    s = s.reshape(width, n, module.out_channels, positions).permute(1, 0, 3, 2)  # (N, k, L, Cout)
    groups = module.groups
    per_in = patches.shape[2] // groups
    per_out = module.out_channels // groups
    return [
        (
            _with_bias(patches[:, :, g * per_in : (g + 1) * per_in], call.params),
            s[..., g * per_out : (g + 1) * per_out],
        )
        for g in range(groups)
    ]


def embedding_blocks(call: ModuleCall, s: torch.Tensor) -> list[SharedLinearBlock]:
    """Embedding y_t = E[idx_t]: a linear map of one-hot rows over the tokens present in the batch."""
    module: Any = call.module
    idx = call.args[0]
    n = idx.shape[0]
    idx = idx.reshape(n, -1)
    tokens, inverse = torch.unique(idx, return_inverse=True)
    onehot = F.one_hot(inverse, tokens.numel()).to(s.dtype)
    if module.padding_idx is not None:
        # The row at padding_idx receives no gradient.
        onehot = onehot * (idx != module.padding_idx).unsqueeze(-1).to(s.dtype)
    s = s.transpose(0, 1).reshape(n, s.shape[0], idx.shape[1], module.embedding_dim)
    return [(onehot, s)]


def _normalised_input(module: Any, x: torch.Tensor, name: str) -> tuple[torch.Tensor, int]:
    """x̂ (before the affine map) and the axis where the affine parameters start."""
    if isinstance(module, nn.LayerNorm):
        shape = module.normalized_shape
        return F.layer_norm(x, shape, eps=module.eps), x.dim() - len(shape)
    if isinstance(module, nn.GroupNorm):
        return F.group_norm(x, module.num_groups, eps=module.eps), 1
    if module.training or module.running_mean is None:
        raise StructuredUnsupported.at(
            "structured_kernel",
            f"{type(module).__name__} {name!r} normalises with batch statistics "
            "(training mode or track_running_stats=False), which couples the examples; call model.eval() "
            "or use a route that does not assume independent examples (method='dual')",
        )
    view = (1, -1) + (1,) * (x.dim() - 2)
    mean = module.running_mean.reshape(view)
    var = module.running_var.reshape(view)
    return (x - mean) / torch.sqrt(var + module.eps), 1


def norm_rows(call: ModuleCall, s: torch.Tensor) -> torch.Tensor:
    """Jacobian rows of the affine parameters: ∂y/∂w = x̂, ∂y/∂b = 1, summed over the non-parameter axes."""
    module = call.module
    x_hat, start = _normalised_input(module, call.args[0], call.name)
    width, n = s.shape[:2]
    s = s.transpose(0, 1)  # (N, k, ...)
    # Axes of s (N, k, ...) summed over: everything that is neither batch, column nor parameter.
    if isinstance(module, nn.LayerNorm):
        axes = tuple(range(2, 2 + start - 1))
    else:
        axes = tuple(range(3, s.dim()))
    rows = []
    if "weight" in call.params:
        prod = s * x_hat.unsqueeze(1)
        rows.append((prod.sum(axes) if axes else prod).reshape(n * width, -1))
    if "bias" in call.params:
        rows.append((s.sum(axes) if axes else s).reshape(n * width, -1))
    return torch.cat(rows, dim=1)


def generic_rows(
    call: ModuleCall, s: torch.Tensor, examples_per_chunk: int | None, pause
) -> dict[str, torch.Tensor]:
    """Jacobian rows of a module's own parameters by batched VJPs, column (i, j) = signal j on example i.

    Args:
        call: the recorded call.
        s: signals (k, N, *out).
        examples_per_chunk: examples whose k columns are pushed through one batched VJP.
        pause: context manager that suspends recording while the module is re-run.

    Returns:
        local parameter name -> rows (N·k, *param.shape).
    """
    with torch.enable_grad(), pause():
        output = call.module(*call.args, **call.kwargs)
    width, n = s.shape[:2]
    names = list(call.params)
    step = n if not examples_per_chunk else max(1, examples_per_chunk)
    chunks: list[tuple[torch.Tensor | None, ...]] = []
    for start in range(0, n, step):
        stop = min(start + step, n)
        examples = torch.arange(start, stop, device=s.device)
        cot = s.new_zeros((stop - start, width, *s.shape[1:]))
        cot[torch.arange(stop - start, device=s.device), :, examples] = s[:, examples].transpose(0, 1)
        grads = torch.autograd.grad(
            output,
            [call.params[k] for k in names],
            grad_outputs=cot.reshape(-1, *s.shape[1:]),
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=True,
        )
        chunks.append(grads)
    rows = {}
    for position, name in enumerate(names):
        parts: list[torch.Tensor] = [
            cast(torch.Tensor, g[position])
            if g[position] is not None
            else torch.zeros(
                ((min(start + step, n) - start) * width, *call.params[name].shape),
                dtype=s.dtype,
                device=s.device,
            )
            for g, start in zip(chunks, range(0, n, step), strict=True)
        ]
        rows[name] = torch.cat(parts, dim=0)
    return rows
