"""Contracting per-layer factors: the dense kernel K, kernel products K u, columns and the diagonal of K.

The structured route splits into two steps. *Emission* (``emit_factors`` in ``_kernel``) runs the model once
and backpropagates the metric factor's columns, leaving per-layer factors; *contraction* (here) turns them
into whatever the solver needs, without ever forming J or A = Bᵀ J (r × d).

Kernel rows and columns are indexed a = (i, j): example i, factor column j, a = i·k + j. Two kinds of
factors occur (see ``_layers`` for where they come from):

* a shared linear block with layer inputs x (N, T, P) and signals s (N, k, T, O): the Jacobian row of a is
  G_a = Σ_t s_{a,t} x_{i,t}ᵀ (O × P), so K_ab = Σ_{t,t'} (s_{a,t}·s_{b,t'}) (x_{i,t}·x_{i',t'}). For T = 1
  this is the Hadamard form (S Sᵀ) ∘ (X Xᵀ ⊗ 1 1ᵀ).
* explicit Jacobian rows R (r, p) (normalisation layers, the generic VJP fallback, tied parameters): K = R Rᵀ.

A product K u never forms K. For a shared linear block it goes through the block's weight space, which costs
what one VJP and one JVP cost for that layer and is the cheapest exact form once more than a few vectors are
multiplied: first Aᵀu = Σ_{i,t} (Σ_j u_{ij} s_{ij,t}) x_{i,t}ᵀ (the k columns of an example share x, so they
are summed before the outer product), then (A w)_{ij} = Σ_t s_{ij,t}·(w x_{i,t}). Per block and vector this is
2·N·T·O·P + 2·r·T·O multiply-adds against r²·O for the Hadamard form. A single column K e_a, on the other hand,
is cheapest in the Hadamard form (r·T²·O + N·T²·P), which is what makes the columns of a pivoted Cholesky
factorisation cheap. Both choices are made per block from these counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from natgrad.exceptions import StructuredUnsupported

from ._layers import add_rows, add_shared_linear, jacobian_rows


@dataclass
class SharedLinearFactor:
    """One shared linear block: layer inputs x (N, T, P) (a trailing 1 for a bias) and signals s (N, k, T, O).

    ``tokens`` (P,) names the input coordinates when they are a batch-dependent basis (an embedding's one-hot
    rows over the tokens present): two chunks of examples are contracted in the union of their bases.
    """

    inputs: Tensor
    signals: Tensor
    tokens: Tensor | None = None

    def weight_space(self, u: Tensor) -> Tensor:
        """Aᵀ u restricted to this block, (m, O, P), for u of shape (N, k, m)."""
        n, width, positions, outputs = self.signals.shape
        if positions == 1:  # plain matrix products (einsum does not always find them)
            summed = torch.bmm(u.transpose(1, 2), self.signals.reshape(n, width, outputs))  # (N, m, O)
            return torch.matmul(summed.permute(1, 2, 0), self.inputs.reshape(n, -1))  # (m, O, P)
        summed = torch.einsum("nkto,nkm->mnto", self.signals, u)  # the k columns of example i share x_i
        return torch.einsum("mnto,ntp->mop", summed, self.inputs)

    def output_space(self, w: Tensor) -> Tensor:
        """A w restricted to this block, (N, k, m), for w of shape (m, O, P)."""
        n, width, positions, outputs = self.signals.shape
        if positions == 1:
            hidden = torch.matmul(self.inputs.reshape(n, -1), w.transpose(1, 2))  # (m, N, O)
            return torch.bmm(self.signals.reshape(n, width, outputs), hidden.permute(1, 2, 0))  # (N, k, m)
        hidden = torch.einsum("mop,ntp->mnto", w, self.inputs)
        return torch.einsum("nkto,mnto->nkm", self.signals, hidden)

    def columns(self, examples: Tensor, index: Tensor) -> Tensor:
        """K_block[:, a] for the flat indices a = ``index`` (m,), of examples ``examples``; (N, k, m)."""
        n, width, positions, outputs = self.signals.shape
        flat = self.signals.reshape(n * width, positions, outputs)
        picked = flat[index]  # (m, T, O)
        if positions == 1:
            gram_s = flat[:, 0] @ picked[:, 0].T  # (r, m)
            gram_x = self.inputs[:, 0] @ self.inputs[examples, 0].T  # (N, m)
            return gram_s.view(n, width, -1) * gram_x[:, None, :]
        gram_s = torch.einsum("nkto,muo->nkmtu", self.signals, picked)
        gram_x = torch.einsum("ntp,mup->nmtu", self.inputs, self.inputs[examples])
        return torch.einsum("nkmtu,nmtu->nkm", gram_s, gram_x)

    def diagonal(self) -> Tensor:
        """diag K_block, (N, k): Σ_{t,t'} (s_{a,t}·s_{a,t'}) (x_{i,t}·x_{i,t'})."""
        if self.signals.shape[2] == 1:
            return (self.signals[:, :, 0] ** 2).sum(-1) * (self.inputs[:, 0] ** 2).sum(-1)[:, None]
        gram_s = torch.einsum("nkto,nkuo->nktu", self.signals, self.signals)
        gram_x = torch.einsum("ntp,nup->ntu", self.inputs, self.inputs)
        return torch.einsum("nktu,ntu->nk", gram_s, gram_x)

    def product_cost(self, vectors: int) -> int:
        """Multiply-adds of K u for ``vectors`` vectors through the weight space."""
        n, width, positions, outputs = self.signals.shape
        inputs = self.inputs.shape[2]
        return vectors * (2 * n * positions * outputs * inputs + 2 * n * width * positions * outputs)

    def column_cost(self, columns: int) -> int:
        """Multiply-adds of ``columns`` kernel columns in the Hadamard form."""
        n, width, positions, outputs = self.signals.shape
        inputs = self.inputs.shape[2]
        return columns * positions**2 * (n * width * outputs + n * inputs)

    def nbytes(self) -> int:
        """Bytes held by the factor's tensors."""
        return _nbytes(self.inputs) + _nbytes(self.signals)

    def to(self, dtype: torch.dtype) -> SharedLinearFactor:
        """The same factor in ``dtype``."""
        return SharedLinearFactor(self.inputs.to(dtype), self.signals.to(dtype), self.tokens)


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class KernelFactors:
    """Per-layer factors of K = A Aᵀ (r × r), A = Bᵀ J, with the contractions the solvers need.

    The kernel is Dᵀ K₀ D when a dense output factor D (n × r) is given (K₀ is then the identity-factor kernel,
    r₀ = n), else K₀ itself. All products are exact in exact arithmetic: they differ from the dense kernel only
    by rounding.

    Attributes:
        num_examples: N.
        width: k, factor columns per example (r₀ = N·k).
        linear: shared linear blocks.
        rows: explicit Jacobian row blocks R (r₀, p).
        dense_factor: D (n, r) or None.
        routes: module name -> formula used, as in :class:`~natgrad.models.structured.StructuredContext`.
        examples_per_chunk: examples per chunk when rows are formed in the dense assembly (None: all at once).
    """

    num_examples: int
    width: int
    linear: list[SharedLinearFactor] = field(default_factory=list)
    rows: list[Tensor] = field(default_factory=list)
    dense_factor: Tensor | None = None
    routes: dict[str, str] = field(default_factory=dict)
    examples_per_chunk: int | None = None
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def inner_rows(self) -> int:
        """r₀ = N·k, the size of K₀."""
        return self.num_examples * self.width

    @property
    def rows_count(self) -> int:
        """r, the size of K."""
        return self.inner_rows if self.dense_factor is None else self.dense_factor.shape[1]

    def nbytes(self) -> int:
        """Bytes held by the factors (signals, inputs, rows, dense factor)."""
        held = sum(block.nbytes() for block in self.linear) + sum(_nbytes(r) for r in self.rows)
        return held + (0 if self.dense_factor is None else _nbytes(self.dense_factor))

    def _inner_kernel(self, dtype: torch.dtype) -> Tensor:
        r0 = self.inner_rows
        kernel = torch.zeros((r0, r0), dtype=dtype, device=self.device)
        for block in self.linear:
            block = block.to(dtype)
            add_shared_linear(kernel, block.inputs, block.signals, self.examples_per_chunk)
        for rows in self.rows:
            add_rows(kernel, rows.to(dtype))
        return kernel

    def kernel(self, dtype: torch.dtype | None = None) -> Tensor:
        """The dense kernel K (r × r), contracted in ``dtype`` (default: the factors' dtype).

        A wider ``dtype`` than the model's (float64 for a float32 model) makes K the exact Gram matrix of the
        rounded factors: its eigenvalues then carry no assembly error of order eps₃₂·‖K‖.
        """
        dtype = self.dtype if dtype is None else dtype
        kernel = self._inner_kernel(dtype)
        if self.dense_factor is not None:
            dense = self.dense_factor.to(dtype)
            kernel = dense.T @ kernel @ dense
        return kernel

    def _inner_matmul(self, u: Tensor) -> Tensor:
        """K₀ u for u (r₀, m) in u's dtype."""
        dtype = u.dtype
        out = torch.zeros_like(u)
        shaped = u.reshape(self.num_examples, self.width, -1)
        for block in self.linear:
            block = block if block.signals.dtype == dtype else block.to(dtype)
            out += block.output_space(block.weight_space(shaped)).reshape(u.shape)
        for rows in self.rows:
            rows = rows.to(dtype)
            out += rows @ (rows.T @ u)
        return out

    def matmul(self, u: Tensor) -> Tensor:
        """K u for u of shape (r,) or (r, m), without forming K (computed in u's dtype)."""
        vector = u.dim() == 1
        u = u[:, None] if vector else u
        if self.dense_factor is not None:
            dense = self.dense_factor.to(u.dtype)
            out = dense.T @ self._inner_matmul(dense @ u)
        else:
            out = self._inner_matmul(u)
        return out[:, 0] if vector else out

    def columns(self, index: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """K[:, index] (r, m), each block in its cheaper form (Hadamard columns or weight-space products)."""
        dtype = self.dtype if dtype is None else dtype
        index = index.to(device=self.device, dtype=torch.long)
        if self.dense_factor is not None:
            eye = torch.zeros((self.rows_count, index.numel()), dtype=dtype, device=self.device)
            eye[index, torch.arange(index.numel(), device=self.device)] = 1.0
            return self.matmul(eye)
        r0, m = self.inner_rows, index.numel()
        examples = index // self.width
        out = torch.zeros((r0, m), dtype=dtype, device=self.device)
        unit = None
        for block in self.linear:
            block = block if block.signals.dtype == dtype else block.to(dtype)
            if block.column_cost(m) <= block.product_cost(m):
                out += block.columns(examples, index).reshape(r0, m)
            else:
                if unit is None:
                    unit = torch.zeros((r0, m), dtype=dtype, device=self.device)
                    unit[index, torch.arange(m, device=self.device)] = 1.0
                shaped = unit.reshape(self.num_examples, self.width, m)
                out += block.output_space(block.weight_space(shaped)).reshape(r0, m)
        for rows in self.rows:
            rows = rows.to(dtype)
            out += rows @ rows[index].T
        return out

    def diagonal(self, dtype: torch.dtype | None = None) -> Tensor:
        """diag K (r,), without forming K."""
        dtype = self.dtype if dtype is None else dtype
        if self.dense_factor is not None:
            step = 256
            parts = []
            for start in range(0, self.rows_count, step):
                index = torch.arange(start, min(start + step, self.rows_count), device=self.device)
                cols = self.columns(index, dtype)
                parts.append(cols[index, torch.arange(index.numel(), device=self.device)])
            return torch.cat(parts)
        diag = torch.zeros(self.inner_rows, dtype=dtype, device=self.device)
        for block in self.linear:
            diag += block.to(dtype).diagonal().reshape(-1)
        for rows in self.rows:
            diag += (rows.to(dtype) ** 2).sum(dim=1)
        return diag


def _common_inputs(left: SharedLinearFactor, right: SharedLinearFactor) -> tuple[Tensor, Tensor]:
    """The two blocks' inputs in one coordinate system: the union of their token bases when they have one."""
    if left.tokens is None or right.tokens is None:
        return left.inputs, right.inputs
    union = torch.unique(torch.cat([left.tokens, right.tokens]))

    def lift(block: SharedLinearFactor) -> Tensor:
        assert block.tokens is not None
        lifted = block.inputs.new_zeros((*block.inputs.shape[:2], union.numel()))
        lifted[..., torch.searchsorted(union, block.tokens)] = block.inputs
        return lifted

    return lift(left), lift(right)


def _cross_shared_linear(left: SharedLinearFactor, right: SharedLinearFactor) -> Tensor:
    """K_block[rows of ``left``, rows of ``right``] for one layer's blocks of two chunks of examples.

    The cheaper of the two orders of ``add_shared_linear``: the Hadamard form Σ_{t,u} (S_t S'_uᵀ) ∘ (X_t X'_uᵀ),
    or the Jacobian rows G Gᵀ, formed a tile of examples at a time so that a tile holds no more entries than
    the block's own factors.
    """
    x_left, x_right = _common_inputs(left, right)
    n_left, width, positions, outputs = left.signals.shape
    n_right, inputs = right.signals.shape[0], x_left.shape[2]
    r_left, r_right = n_left * width, n_right * width
    pair = positions**2 * (r_left * r_right * outputs + n_left * n_right * inputs)
    rows = (r_left + r_right) * positions * outputs * inputs + r_left * r_right * outputs * inputs
    if positions == 1 or pair <= rows:
        out = x_left.new_zeros((n_left, width, n_right, width))
        s_left = left.signals.reshape(r_left, positions, outputs)
        s_right = right.signals.reshape(r_right, positions, outputs)
        for t in range(positions):
            for u in range(positions):
                gram_x = x_left[:, t] @ x_right[:, u].T  # (N, N'), broadcast over the factor columns
                gram_s = (s_left[:, t] @ s_right[:, u].T).view(n_left, width, n_right, width)
                out += gram_s * gram_x[:, None, :, None]
        return out.view(r_left, r_right)
    held = left.signals.numel() + x_left.numel()
    tile = max(1, held // max(1, width * outputs * inputs))
    out = x_left.new_zeros((r_left, r_right))
    for a in range(0, n_left, tile):
        rows_a = jacobian_rows(x_left[a : a + tile], left.signals[a : a + tile])
        for b in range(0, n_right, tile):
            rows_b = jacobian_rows(x_right[b : b + tile], right.signals[b : b + tile])
            out[a * width : a * width + rows_a.shape[0], b * width : b * width + rows_b.shape[0]] = (
                rows_a @ rows_b.T
            )
    return out


def _same_layout(left: KernelFactors, right: KernelFactors) -> bool:
    if left.dense_factor is not None or right.dense_factor is not None or left.width != right.width:
        return False
    if len(left.linear) != len(right.linear) or len(left.rows) != len(right.rows):
        return False
    same_linear = all(
        a.signals.shape[1:] == b.signals.shape[1:]
        and (a.tokens is not None or a.inputs.shape[1:] == b.inputs.shape[1:])
        for a, b in zip(left.linear, right.linear, strict=True)
    )
    return same_linear and all(a.shape[1:] == b.shape[1:] for a, b in zip(left.rows, right.rows, strict=True))


def cross_kernel(left: KernelFactors, right: KernelFactors, dtype: torch.dtype) -> Tensor:
    """The off-diagonal block K[rows of ``left``, rows of ``right``] (r × r') of two chunks of examples.

    Both are the factors of the same model emitted on two disjoint chunks of examples (with a per-example
    block factor or the identity): K_ab = Σ_layers ⟨G_a, G_b⟩ needs only the two chunks' factors, so the dense
    kernel is assembled block by block (``_chunked``). Contracted in ``dtype``.

    Raises:
        StructuredUnsupported: the chunks' factors differ in layout (different layers or shapes).
    """
    if not _same_layout(left, right):
        raise StructuredUnsupported(
            "the per-layer factors of two chunks of examples differ in layout (layers or shapes), so the "
            "kernel cannot be assembled chunk by chunk; raise memory_budget to assemble it in one piece"
        )
    out = torch.zeros((left.inner_rows, right.inner_rows), dtype=dtype, device=left.device)
    for block_left, block_right in zip(left.linear, right.linear, strict=True):
        out += _cross_shared_linear(block_left.to(dtype), block_right.to(dtype))
    for rows_left, rows_right in zip(left.rows, right.rows, strict=True):
        out += rows_left.to(dtype) @ rows_right.to(dtype).T
    return out
