"""Chunked assembly of the dense structured kernel: K block by block when the factors of all examples do not fit.

K_ab = Σ_layers ⟨G_a, G_b⟩ couples the rows of two examples only through their own factors, so the block
K_IJ of two chunks I, J of examples needs the factors of I and J alone. The factors are emitted per chunk
(forward pass and batched backward passes on the chunk's examples only; valid because examples are
independent, which is checked: each chunk's output must equal its rows of the full batch's output).

Scheme and cost. Only two chunks are resident. Chunk i is emitted, contracted with itself, with chunk i − 1
(still resident from the previous step) and then with chunks i − 2, …, 0, each emitted again. With c chunks
that is c + (c − 1)(c − 2)/2 emissions of a chunk, where one emission of the whole batch costs one forward
pass and k batched backward passes; in units of a full emission, (c + (c − 1)(c − 2)/2)/c ≈ c/2 for large c
(1 for c = 2). The contraction work is that of the unchunked kernel (each block once, by symmetry). Keeping
the cheap parts resident instead (layer inputs, without the k-fold signals) would save the re-emitted
backward passes only when signals dominate, and gives nothing for explicit Jacobian rows; re-emission holds
for every layer kind. Aᵀy is formed chunk by chunk as well (a forward pass and a VJP per chunk), so no
autograd graph of the whole batch is kept either.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from natgrad.exceptions import StructuredUnsupported

from ._contract import KernelFactors, cross_kernel
from ._factors import normalise_factor
from ._kernel import emit_factors

_CALL = "structured_kernel"


def example_slices(num_examples: int, examples_per_chunk: int) -> list[slice]:
    """Consecutive chunks of at most ``examples_per_chunk`` examples."""
    step = max(1, examples_per_chunk)
    return [slice(start, min(start + step, num_examples)) for start in range(0, num_examples, step)]


def batch_slice(value: Any, part: slice, num_examples: int) -> Any:
    """``value`` with every tensor whose leading axis has ``num_examples`` entries cut to ``part``.

    Nested tuples, lists and dicts are followed; other values (masks without a batch axis, flags) are shared
    by every chunk.
    """
    if isinstance(value, Tensor):
        return value[part] if value.dim() > 0 and value.shape[0] == num_examples else value
    if isinstance(value, tuple | list):
        items = [batch_slice(v, part, num_examples) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return {k: batch_slice(v, part, num_examples) for k, v in value.items()}
    return value


def _check_rows(chunk_output: Tensor, expected: Tensor, part: slice) -> None:
    """A chunk's output must equal its rows of the full batch's output (examples independent)."""
    got, want = chunk_output.reshape(expected.shape), expected.to(chunk_output.dtype)
    gap = float(torch.linalg.vector_norm(got - want))
    scale = float(torch.linalg.vector_norm(want)) + torch.finfo(want.dtype).tiny
    if gap > torch.finfo(want.dtype).eps ** 0.5 * scale:
        raise StructuredUnsupported.at(
            _CALL,
            f"the model's output on examples {part.start}…{part.stop - 1} alone differs from those rows of the "
            f"full batch's output (relative gap {gap / scale:.3g}): the examples are coupled (e.g. batch "
            "statistics), so the kernel cannot be assembled chunk by chunk; raise memory_budget or use "
            "method='dual'",
        )


class ChunkedAssembly:
    """The dense kernel of a module assembled over chunks of examples, and Aᵀy formed chunk by chunk.

    Args:
        module: the network; ``inputs`` and ``kwargs`` as for :func:`emit_factors`.
        output: the full batch's output z (N, ...), for the independence check and the cotangent shapes.
        output_factor: B as per-example blocks (N, C, k), a dense (n, r) factor, or None (identity).
        examples_per_chunk: m ≥ 1.
        check_outside: as for :func:`emit_factors`.
        calling: context in which the module is called (``from_module``'s output selection).

    Attributes:
        chunks, examples_per_chunk, emissions: the plan as run (emissions of a chunk's factors).
        routes: module name -> layer formula, from the first chunk.
    """

    def __init__(
        self,
        module: nn.Module,
        inputs: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Tensor,
        output_factor: Tensor | None,
        examples_per_chunk: int,
        check_outside: bool = True,
        calling: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        if examples_per_chunk < 1:
            raise ValueError(f"{_CALL}: examples_per_chunk must be ≥ 1, got {examples_per_chunk}")
        self.module, self.inputs, self.kwargs, self.calling = module, inputs, kwargs, calling
        self.output = output.detach()
        self.num_examples = output.shape[0]
        self.factor, self.dense = normalise_factor(output_factor, self.output, _CALL)
        self.slices = example_slices(self.num_examples, examples_per_chunk)
        self.examples_per_chunk = examples_per_chunk
        self.chunks = len(self.slices)
        self.check_outside = check_outside
        self.emissions = 0
        self.routes: dict[str, str] = {}
        self.params = {name: p for name, p in module.named_parameters() if p.requires_grad}

    def _chunk_inputs(self, part: slice) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return batch_slice(self.inputs, part, self.num_examples), batch_slice(
            self.kwargs, part, self.num_examples
        )

    def _emit(self, part: slice) -> KernelFactors:
        args, kwargs = self._chunk_inputs(part)
        blocks = None if self.factor.blocks is None else self.factor.blocks[part]
        try:
            with self.calling():
                factors, context = emit_factors(self.module, args, blocks, None, self.check_outside, kwargs)
        except StructuredUnsupported:
            raise
        except (RuntimeError, ValueError, IndexError) as error:
            raise StructuredUnsupported.at(
                _CALL,
                f"the model failed on a chunk of {part.stop - part.start} examples ({error}); chunked assembly "
                "cuts every input whose leading axis has N entries; raise memory_budget to assemble the "
                "kernel in one piece",
            ) from error
        context.release()
        self.emissions += 1
        _check_rows(context.output, self.output[part], part)
        if not self.routes:
            self.routes = dict(factors.routes)
        return factors

    def _rows(self, part: slice) -> slice:
        width = self.factor.width
        return slice(part.start * width, part.stop * width)

    def kernel(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The dense K (r × r) in ``dtype``, two chunks' factors resident at a time (see the module notes)."""
        inner = self.factor.width * self.num_examples
        # With a dense factor D (n × r) the chunks give blocks of the identity kernel K₀ and K = Σ D_Iᵀ K₀_IJ D_J.
        dense = None if self.dense is None else self.dense.to(dtype)
        size = inner if dense is None else dense.shape[1]
        kernel = torch.zeros((size, size), dtype=dtype, device=self.output.device)

        def add(i: slice, j: slice, block: Tensor) -> None:
            ri, rj = self._rows(i), self._rows(j)
            if dense is None:
                kernel[ri, rj] = block
                if i != j:
                    kernel[rj, ri] = block.T
                return
            product = dense[ri].T @ block @ dense[rj]
            kernel.add_(product)
            if i != j:
                kernel.add_(product.T)

        previous: KernelFactors | None = None
        for index, part in enumerate(self.slices):
            current = self._emit(part)
            add(part, part, current.kernel(dtype))
            if previous is not None:
                add(part, self.slices[index - 1], cross_kernel(current, previous, dtype))
            previous = None  # free before re-emitting the earlier chunks
            for earlier in reversed(self.slices[: max(0, index - 1)]):
                add(part, earlier, cross_kernel(current, self._emit(earlier), dtype))
            previous = current
        return kernel

    def vjp(self, y: Tensor) -> dict[str, Tensor]:
        """Jᵀ B y, a forward pass and a VJP per chunk; parameter name -> tensor of the parameter's shape."""
        rows = self.factor.width * self.num_examples if self.dense is None else self.dense.shape[1]
        if y.numel() != rows:
            raise ValueError(f"structured_vjp: y must have r = {rows} entries, got shape {tuple(y.shape)}")
        y = y.reshape(-1).to(self.output.dtype)
        cotangent = self.dense @ y if self.dense is not None else self.factor.apply(y)
        cotangent = cotangent.reshape(self.num_examples, -1)
        total = {name: torch.zeros_like(p) for name, p in self.params.items()}
        names = list(self.params)
        for part in self.slices:
            args, kwargs = self._chunk_inputs(part)
            with self.calling(), torch.enable_grad():
                out = self.module(*args, **kwargs)
            grads = torch.autograd.grad(
                out,
                [self.params[k] for k in names],
                grad_outputs=cotangent[part].reshape(out.shape),
                allow_unused=True,
            )
            for name, g in zip(names, grads, strict=True):
                if g is not None:
                    total[name] += g
        return total

    def info(self) -> dict[str, int]:
        """``chunks``, ``examples_per_chunk`` and ``emissions`` (chunk factor emissions so far)."""
        return {
            "chunks": self.chunks,
            "examples_per_chunk": self.examples_per_chunk,
            "emissions": self.emissions,
        }

    def release(self) -> None:
        """Nothing to free: no autograd graph is kept between products."""
        return None
