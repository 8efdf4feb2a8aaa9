"""What the per-layer factors of :func:`emit_factors` will hold, from layer shapes alone (nothing emitted).

A forward pass without autograd records the input and output shape of every parametrised call; the factors
then hold, per call, the backpropagated signals (``rows`` × one example's output) and the layer inputs (N ×
one example's input, as unfolded patches for a convolution), or explicit Jacobian rows (``rows`` × its
parameter count) for the layers without a closed form. Contraction copies one block at a time into float64.
The batched backward pass that makes the signals also holds ``rows`` cotangents of every intermediate output
(parametrised or not) while it runs; that transient is counted too.

Every one of these counts is proportional to the number of examples, which is what lets :func:`plan_chunks`
size the chunks of the chunked assembly (``_chunked``) from the estimate for the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, prod
from typing import Any

import torch
from torch import nn

from ._capture import call_parameters
from ._modules import structure_of


def _entries(module: nn.Module, kind: str, args: tuple, output: Any, rows: int) -> tuple[int, int]:
    """(entries held by the call's factors, of which the largest single block) for ``rows`` kernel rows."""
    params = call_parameters(module)
    bias = int("bias" in params)
    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if not isinstance(output, torch.Tensor) or x is None or output.dim() == 0:
        held = rows * sum(p.numel() for p in params.values())
        return held, held
    n = output.shape[0]
    out_per = output[0].numel()
    signals = rows * out_per
    m: Any = module
    if kind == "linear":
        positions = out_per // m.out_features
        held = signals + n * positions * (m.in_features + bias)
        return held, held
    if kind == "conv":
        positions = out_per // m.out_channels
        patch = m.in_channels * prod(m.kernel_size) + bias * m.groups
        held = signals + n * positions * patch
        return held, held
    # Other layers: explicit rows, or blocks no larger than rows over parameters plus the inputs.
    held = signals + rows * sum(p.numel() for p in params.values()) + x.numel()
    return held, held


def factor_bytes(module: nn.Module, args: tuple, kwargs: dict[str, Any], rows: int, itemsize: int) -> int:
    """Upper estimate of the bytes :func:`emit_factors` holds for a factor of ``rows`` kernel rows (N·k).

    Counts signals and inputs in the model's dtype (``itemsize`` bytes), the backward pass's cotangents of
    every leaf module's output, and the float64 copy of the largest block that the kernel contraction makes.
    """
    shapes: list[tuple[int, int]] = []

    def hook(name: str):
        def record(sub: nn.Module, sub_args: tuple, output: Any) -> None:
            shapes.append(_entries(sub, structure_of(sub), sub_args, output, rows))

        return record

    backward: list[int] = []

    def leaf(sub: nn.Module, sub_args: tuple, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.dim() > 0:
            backward.append(rows * output[0].numel())

    modules = list(module.named_modules(remove_duplicate=True))
    handles = [sub.register_forward_hook(hook(name)) for name, sub in modules if call_parameters(sub)]
    handles += [sub.register_forward_hook(leaf) for _, sub in modules if not list(sub.children())]
    try:
        with torch.no_grad():
            module(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    held = sum(total for total, _ in shapes)
    largest = max((block for _, block in shapes), default=0)
    return itemsize * (held + sum(backward)) + 8 * largest


@dataclass(frozen=True)
class ChunkPlan:
    """Chunks of examples for assembling the dense kernel when the factors of all examples do not fit.

    Attributes:
        num_examples: N.
        examples_per_chunk: m, examples per chunk (the last chunk may be smaller).
        held: bytes held at any time: two chunks' factors and the float64 block of the pair being contracted.
    """

    num_examples: int
    examples_per_chunk: int
    held: int

    @property
    def chunks(self) -> int:
        """c = ⌈N / m⌉."""
        return -(-self.num_examples // self.examples_per_chunk)

    @property
    def emissions(self) -> int:
        """Chunk factor emissions of the assembly: c + (c − 1)(c − 2)/2 (see ``_chunked``)."""
        c = self.chunks
        return c + (c - 1) * (c - 2) // 2


def chunk_bytes(examples: int, per_example: int, rows_per_example: int) -> int:
    """Bytes of the chunked assembly beside K: two chunks of ``examples`` examples (``per_example`` bytes of
    factors each) and the float64 blocks of the pair being contracted (block and products: 4·(m·k)²)."""
    return 2 * examples * per_example + 4 * 8 * (examples * rows_per_example) ** 2


def plan_chunks(
    factor_bytes_all: int, num_examples: int, rows_per_example: int, available: int
) -> ChunkPlan | None:
    """The largest balanced chunks whose pair fits ``available`` bytes, or None when one example does not.

    Args:
        factor_bytes_all: :func:`factor_bytes` for all N examples (proportional to N, so a chunk of m examples
            holds m/N of it).
        num_examples: N ≥ 1.
        rows_per_example: kernel rows per example (k, or C for the identity kernel).
        available: bytes left for the factors beside K and what the solve holds.
    """
    per_example = ceil(factor_bytes_all / max(1, num_examples))
    if num_examples < 2 or chunk_bytes(1, per_example, rows_per_example) > available:
        return None
    low, high = 1, num_examples - 1  # the largest m that fits, by bisection (the count grows with m)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (
            (mid, high) if chunk_bytes(mid, per_example, rows_per_example) <= available else (low, mid - 1)
        )
    chunks = -(-num_examples // low)
    balanced = -(-num_examples // chunks)  # same number of chunks, sizes as equal as they can be
    return ChunkPlan(num_examples, balanced, chunk_bytes(balanced, per_example, rows_per_example))
