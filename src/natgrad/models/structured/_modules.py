"""Module-specific structure: which layer types have a closed-form kernel contribution, and how.

Supported with structure (forward not overridden): ``nn.MultiheadAttention`` (batch first, packed
in-projection, without bias_k/bias_v or zero attention: the in- and out-projections are linear maps shared
over positions, attention itself has no parameters), ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (batch first, without
proj_size: input and hidden weights are linear maps shared over time steps), ``nn.Linear`` (any number of leading axes, summed as
shared positions), ``nn.Conv1d``/``nn.Conv2d`` (stride, padding incl. 'same' and non-zero padding modes,
dilation, groups), ``nn.Embedding`` (without max_norm, scale_grad_by_freq or sparse gradients), affine
``nn.LayerNorm``, ``nn.GroupNorm``, and ``nn.BatchNorm1d/2d/3d`` in eval mode with running statistics.
Every other module owning trainable parameters goes through the generic fallback: batched vector-Jacobian
products of the module's output with respect to its own parameters, with the module re-run on its recorded
inputs so that only this call's use of the parameters counts.
"""

from __future__ import annotations

import inspect
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from natgrad.exceptions import StructuredUnsupported

from ._capture import ModuleCall, own_trainable_parameters, plain_attention, plain_recurrent

SharedLinearBlock = tuple[torch.Tensor, torch.Tensor]  # x (N, T, P), s (N, k, T, O)


def _plain(module: nn.Module, cls: type[nn.Module]) -> bool:
    """True when ``module`` is a ``cls`` whose forward is the library's own."""
    return isinstance(module, cls) and type(module).forward is cls.forward


def structure_of(module: nn.Module) -> str:
    """Name of the structured formula used for ``module``, or ``"generic"``."""
    if plain_recurrent(module):
        simple = module.batch_first and getattr(module, "proj_size", 0) == 0
        deterministic = not module.training or module.dropout == 0 or module.num_layers == 1
        return "recurrent" if simple and deterministic and not module._forward_pre_hooks else "generic"
    if plain_attention(module):
        packed = module._qkv_same_embed_dim and module.bias_k is None and not module.add_zero_attn
        deterministic = not module.training or module.dropout == 0
        return (
            "attention"
            if packed and module.batch_first and deterministic and not module._forward_pre_hooks
            else "generic"
        )
    if module._forward_pre_hooks or not set(own_trainable_parameters(module)) <= {"weight", "bias"}:
        return "generic"  # e.g. nn.utils.weight_norm: weight recomputed from weight_g, weight_v by a hook
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
    tokens, inverse = torch.unique(idx, return_inverse=True)  # the one-hot basis: see embedding_tokens
    onehot = F.one_hot(inverse, tokens.numel()).to(s.dtype)
    if module.padding_idx is not None:
        # The row at padding_idx receives no gradient.
        onehot = onehot * (idx != module.padding_idx).unsqueeze(-1).to(s.dtype)
    s = s.transpose(0, 1).reshape(n, s.shape[0], idx.shape[1], module.embedding_dim)
    return [(onehot, s)]


def embedding_tokens(call: ModuleCall) -> torch.Tensor:
    """The token ids that the one-hot columns of :func:`embedding_blocks` stand for (sorted, present in the batch)."""
    return torch.unique(call.args[0])


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
    with pause():
        output = call.rerun()
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


def _attention_arguments(call: ModuleCall) -> dict:
    bound = inspect.signature(nn.MultiheadAttention.forward).bind(call.module, *call.args, **call.kwargs)
    bound.apply_defaults()
    return bound.arguments


def attention_blocks(call: ModuleCall, s: torch.Tensor) -> list[SharedLinearBlock]:
    """MultiheadAttention as four linear maps shared over positions.

    With q = x_q W_qᵀ + b_q, k = x_k W_kᵀ + b_k, v = x_v W_vᵀ + b_v (row blocks of ``in_proj_weight``),
    a = attention(q, k, v) and y = a W_oᵀ + b_o, the signals at q, k, v are the signal at y pulled back
    through W_o and the (parameter-free) attention, per example; the blocks partition the parameters.
    """
    from natgrad.models._linearized import _math_attention

    module: Any = call.module
    params = call.params
    args = _attention_arguments(call)
    query, key, value = args["query"], args["key"], args["value"]
    if query.dim() != 3:
        raise StructuredUnsupported.at(
            "structured_kernel",
            f"MultiheadAttention {call.name!r} needs batched (N, L, E) inputs, got shape {tuple(query.shape)}",
        )
    e = module.embed_dim
    weight, bias = module.in_proj_weight.detach(), module.in_proj_bias
    bias = None if bias is None else bias.detach()
    eye = torch.eye(e, dtype=query.dtype, device=query.device)
    width = s.shape[0]
    with torch.enable_grad(), _math_attention():
        projected = [
            F.linear(x, weight[i * e : (i + 1) * e], None if bias is None else bias[i * e : (i + 1) * e])
            .detach()
            .requires_grad_(True)
            for i, x in enumerate((query, key, value))
        ]
        q, k, v = (t.transpose(0, 1) for t in projected)
        attended, _ = F.multi_head_attention_forward(
            q, k, v, e, module.num_heads, None, None, None, None, False, 0.0, eye, None,
            training=False, key_padding_mask=args["key_padding_mask"], need_weights=False,
            attn_mask=args["attn_mask"], use_separate_proj_weight=True, q_proj_weight=eye, k_proj_weight=eye,
            v_proj_weight=eye, is_causal=args["is_causal"],
        )  # fmt: skip
        attended = attended.transpose(0, 1)  # (N, L, E): the attention output before the out-projection
        pulled = s @ module.out_proj.weight.detach()  # signal at the attention output, (k, N, L, E)
        signals = torch.autograd.grad(attended, projected, pulled, is_grads_batched=True, allow_unused=True)
    blocks = []
    names = [("in_proj_weight", "in_proj_bias")] * 3
    for x, signal, (w_name, b_name) in zip((query, key, value), signals, names, strict=True):
        if (w_name in params or b_name in params) and signal is not None:
            n = x.shape[0]
            blocks.append(
                (_with_bias(x, params, w_name, b_name), signal.transpose(0, 1).reshape(n, width, -1, e))
            )
    if "out_proj.weight" in params or "out_proj.bias" in params:
        x = _with_bias(attended.detach(), params, "out_proj.weight", "out_proj.bias")
        blocks.append((x, s.transpose(0, 1)))
    return blocks


def _cell(
    kind: str, gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor, c: torch.Tensor, relu: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of torch's RNN/LSTM/GRU cell from the input part gi and the hidden part gh of the gates
    (the cell state c is carried through unchanged except by the LSTM)."""
    if kind == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if kind == "GRU":
        ir, iz, in_ = gi.chunk(3, dim=-1)
        hr, hz, hn = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        return (1 - z) * torch.tanh(in_ + r * hn) + z * h, c
    return (torch.relu if relu else torch.tanh)(gi + gh), c


def recurrent_blocks(call: ModuleCall, s: torch.Tensor) -> list[SharedLinearBlock]:
    """RNN/LSTM/GRU: per layer and direction, W_ih acts on the inputs x_t and W_hh on the previous state h_{t−1},
    both shared over time steps t. The signals at the gate parts gi_t = W_ih x_t + b_ih and gh_t = W_hh h_{t−1}
    + b_hh are the signal at the output sequence pulled back through a re-run of the recurrence (the weights
    held fixed), per example.
    """
    module: Any = call.module
    params = call.params
    kind = "LSTM" if isinstance(module, nn.LSTM) else "GRU" if isinstance(module, nn.GRU) else "RNN"
    x = call.args[0]
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise StructuredUnsupported.at(
            "structured_kernel",
            f"{type(module).__name__} {call.name!r} needs a batched (N, T, features) tensor input, got {got}",
        )
    hx = call.args[1] if len(call.args) > 1 else call.kwargs.get("hx")
    n, steps, hidden = x.shape[0], x.shape[1], module.hidden_size
    directions = 2 if module.bidirectional else 1
    h0 = x.new_zeros(module.num_layers * directions, n, hidden)
    c0 = h0
    if hx is not None:
        h0, c0 = hx if kind == "LSTM" else (hx, h0)
    relu = getattr(module, "nonlinearity", "tanh") == "relu"
    # Inputs and initial states require grad so that every gate part is a node of the re-run's graph.
    x, h0, c0 = (t.detach().requires_grad_(True) for t in (x, h0, c0))
    records = []  # (layer inputs, previous states, gi list, gh list, parameter suffix, steps in visiting order)
    with torch.enable_grad():
        layer_in = x
        for layer in range(module.num_layers):
            outputs = []
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                w_ih, w_hh = (getattr(module, f"weight_{p}{suffix}").detach() for p in ("ih", "hh"))
                b_ih, b_hh = (
                    getattr(module, f"bias_{p}{suffix}").detach() if module.bias else None
                    for p in ("ih", "hh")
                )
                h, c = h0[layer * directions + direction], c0[layer * directions + direction]
                order = range(steps - 1, -1, -1) if direction else range(steps)
                gis: list[torch.Tensor] = []
                ghs: list[torch.Tensor] = []
                states: list[torch.Tensor] = []
                hs: list[torch.Tensor] = [x] * steps  # every entry is overwritten below
                for t in order:
                    gi, gh = F.linear(layer_in[:, t], w_ih, b_ih), F.linear(h, w_hh, b_hh)
                    states.append(h)
                    gis.append(gi)
                    ghs.append(gh)
                    h, c = _cell(kind, gi, gh, h, c, relu)
                    hs[t] = h
                outputs.append(torch.stack(hs, dim=1))
                records.append((layer_in, torch.stack(states, dim=1), gis, ghs, suffix, list(order)))
            layer_in = torch.cat(outputs, dim=-1) if directions == 2 else outputs[0]
        gates = [g for rec in records for g in (*rec[2], *rec[3])]
        signals = torch.autograd.grad(layer_in, gates, s, is_grads_batched=True, allow_unused=True)
    blocks: list[SharedLinearBlock] = []
    position = 0
    for inputs_seen, previous, gis, ghs, suffix, visited in records:
        gi_s = signals[position : position + len(gis)]
        gh_s = signals[position + len(gis) : position + len(gis) + len(ghs)]
        position += len(gis) + len(ghs)
        inputs = inputs_seen.detach()[:, visited]
        for part, source, sig in (("ih", inputs, gi_s), ("hh", previous.detach(), gh_s)):
            w_name, b_name = f"weight_{part}{suffix}", f"bias_{part}{suffix}"
            if w_name not in params and b_name not in params:
                continue
            stacked = torch.stack(
                [torch.zeros_like(g) if z is None else z for z, g in zip(sig, gis, strict=True)], 2
            )
            blocks.append((_with_bias(source, params, w_name, b_name), stacked.transpose(0, 1)))
    return blocks
