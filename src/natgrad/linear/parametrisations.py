"""Parametrisations of a linear predictor: modules whose ``forward()`` returns the end-to-end ``w``.

Every module here maps its parameters θ to one vector ``w(θ) ∈ R^d`` (the end-to-end linear predictor,
``f(x) = ⟨w(θ), x⟩``). The models differ only in how ``w`` is parametrised, which is what gradient descent
is sensitive to and what the natural gradient is (ideally) blind to.

| class | w(θ) | Jacobian rank |
|---|---|---|
| :class:`DepthOne` | w | d everywhere |
| :class:`DeepLinear` | (W_L ⋯ W_1)ᵀ | d iff W_L⋯W_2 ≠ 0 |
| :class:`ProductDiagonal` | u₁ ⊙ ⋯ ⊙ u_L | balanced: #{j : w_j ≠ 0}; imbalanced: d |
| :class:`SignedDiagonal` | u₊^L − u₋^L | d whenever no coordinate has u₊(j) = u₋(j) = 0 |

Each class has a ``from_end_to_end(w0, ...)`` constructor that sets the parameters so that ``w(θ) = w0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call


def _check_w0(name: str, w0: Tensor) -> Tensor:
    if not isinstance(w0, Tensor):
        raise TypeError(f"{name}: w0 must be a torch.Tensor of shape (d,), got {type(w0).__name__}")
    if w0.ndim != 1 or w0.numel() == 0:
        raise ValueError(f"{name}: w0 must have shape (d,) with d >= 1, got shape {tuple(w0.shape)}")
    return w0.detach()


def _check_depth(name: str, depth: int, minimum: int = 1) -> None:
    if not isinstance(depth, int) or depth < minimum:
        raise ValueError(f"{name}: depth must be an int >= {minimum}, got {depth!r}")


class LinearParametrisation(nn.Module):
    """Base class: a module with no inputs whose ``forward()`` returns the end-to-end ``w`` of shape (d,)."""

    d: int

    def params(self) -> dict[str, Tensor]:
        """A detached copy of the parameters (``dict[str, Tensor]``, requiring grad) for functional use."""
        return {k: v.detach().clone().requires_grad_(True) for k, v in self.named_parameters()}

    def end_to_end(self, params: dict[str, Tensor]) -> Tensor:
        """``w(θ)`` evaluated at ``params`` (a dict like :meth:`params`) without touching the module's own."""
        return functional_call(self, params, ())

    @property
    def depth(self) -> int:
        """The number of layers L (1 for the depth-1 predictor)."""
        return getattr(self, "_depth", 1)


class DepthOne(LinearParametrisation):
    """The depth-1 linear predictor: ``w(θ) = θ``.

    Args:
        d: input dimension.
        dtype: of the parameter (zeros).
        device: of the parameter.
    """

    def __init__(self, d: int, *, dtype: torch.dtype | None = None, device: torch.device | None = None):
        super().__init__()
        self.d = d
        self.weight = nn.Parameter(torch.zeros(d, dtype=dtype, device=device))

    @classmethod
    def from_end_to_end(cls, w0: Tensor) -> DepthOne:
        """``w(θ) = w0`` exactly."""
        w0 = _check_w0("DepthOne.from_end_to_end", w0)
        module = cls(w0.numel(), dtype=w0.dtype, device=w0.device)
        with torch.no_grad():
            module.weight.copy_(w0)
        return module

    def forward(self) -> Tensor:
        return self.weight


class DeepLinear(LinearParametrisation):
    """A fully connected deep linear network: ``w(θ) = (W_L ⋯ W_1)ᵀ``.

    Layer ``j`` has shape ``(widths[j+1], widths[j])`` with ``widths = [d, h_1, ..., h_{L-1}, 1]``, so the
    network is ``x ↦ W_L ⋯ W_1 x`` with a scalar output; depth ``L = len(widths) - 1``.

    Args:
        widths: layer widths from input ``d`` to output ``1``.
    """

    def __init__(
        self, widths: Sequence[int], *, dtype: torch.dtype | None = None, device: torch.device | None = None
    ):
        super().__init__()
        widths = list(widths)
        if len(widths) < 2 or widths[-1] != 1 or any(int(h) < 1 for h in widths):
            raise ValueError(
                f"DeepLinear: widths must be [d, h_1, ..., 1] with positive entries ending in 1, got {widths}"
            )
        self.d = widths[0]
        self.widths = widths
        self._depth = len(widths) - 1
        self.layers = nn.ParameterList(
            [
                nn.Parameter(torch.zeros(widths[j + 1], widths[j], dtype=dtype, device=device))
                for j in range(self._depth)
            ]
        )

    @classmethod
    def from_end_to_end(
        cls,
        w0: Tensor,
        depth: int,
        width: int | None = None,
        *,
        scale: float = 1.0,
        balanced: bool = False,
        generator: torch.Generator | None = None,
    ) -> DeepLinear:
        """A depth-``depth`` network with hidden width ``width`` (default d) and ``(W_L⋯W_1)ᵀ = w0``.

        * ``balanced=False`` (default, "imbalanced"): layers 2..L are Gaussian with standard deviation
          ``scale/√fan_in``; the first layer is a Gaussian draw corrected by a rank-1 term,
          ``W_1 ← W_1 + c (w0ᵀ − cᵀW_1)/‖c‖²`` with ``cᵀ = W_L⋯W_2``, so the product equals ``w0`` up to
          rounding. J has full row rank d whenever ``c ≠ 0`` (almost surely), even at ``w0 = 0``.
        * ``balanced=True``: the rank-1 balanced factorisation ``W_j = s v_j v_{j-1}ᵀ`` with ``v_0 = ŵ0``,
          ``v_L = 1``, unit ``v_j`` and ``s = ‖w0‖^{1/L}`` (so ``W_{j+1}ᵀW_{j+1} = W_jW_jᵀ``). J loses all
          rank
          at ``w0 = 0``.
        """
        name = "DeepLinear.from_end_to_end"
        w0 = _check_w0(name, w0)
        _check_depth(name, depth)
        d = w0.numel()
        width = d if width is None else width
        widths = [d] + [width] * (depth - 1) + [1]
        module = cls(widths, dtype=w0.dtype, device=w0.device)
        kw: dict[str, Any] = {"dtype": w0.dtype, "device": w0.device}
        with torch.no_grad():
            if balanced:
                s = w0.norm() ** (1.0 / depth)
                prev = w0 / w0.norm() if w0.norm() > 0 else torch.zeros_like(w0)
                for j, layer in enumerate(module.layers):
                    if j == depth - 1:
                        nxt = torch.ones(1, **kw)
                    else:
                        nxt = torch.zeros(width, **kw)
                        nxt[0] = 1.0
                    layer.copy_(s * torch.outer(nxt, prev))
                    prev = nxt
                return module
            for j in range(1, depth):
                fan_in = widths[j]
                draw = torch.randn(widths[j + 1], fan_in, generator=generator, dtype=w0.dtype)
                module.layers[j].copy_(draw.to(w0.device) * scale / fan_in**0.5)
            first = (
                torch.randn(widths[1], d, generator=generator, dtype=w0.dtype).to(w0.device) * scale / d**0.5
            )
            c = torch.ones(1, 1, **kw)
            for j in reversed(range(1, depth)):
                c = c @ module.layers[j]
            c = c.reshape(-1)  # cᵀ = W_L ⋯ W_2, shape (width,)
            first = first + torch.outer(c, w0 - c @ first) / (c @ c)
            module.layers[0].copy_(first)
        return module

    def forward(self) -> Tensor:
        product = self.layers[0]
        for j in range(1, self._depth):  # integer indexing: functional_call swaps these entries
            product = self.layers[j] @ product
        return product.reshape(-1)


class ProductDiagonal(LinearParametrisation):
    """A diagonal network: ``w(θ) = u₁ ⊙ u₂ ⊙ ⋯ ⊙ u_L`` (elementwise product of L vectors).

    Its Jacobian row for coordinate j is ``(∏_{i≠k} u_i(j))_k``; with balanced factors it vanishes where
    ``w_j = 0`` (for L ≥ 2), which is where the natural gradient's depth invariance breaks down.
    """

    def __init__(
        self, d: int, depth: int, *, dtype: torch.dtype | None = None, device: torch.device | None = None
    ):
        super().__init__()
        _check_depth("ProductDiagonal", depth)
        self.d = d
        self._depth = depth
        self.factors = nn.ParameterList(
            [nn.Parameter(torch.ones(d, dtype=dtype, device=device)) for _ in range(depth)]
        )

    @classmethod
    def from_end_to_end(cls, w0: Tensor, depth: int, *, imbalance: float | None = None) -> ProductDiagonal:
        """Factors with ``u₁ ⊙ ⋯ ⊙ u_L = w0``.

        * ``imbalance=None`` (balanced): ``u₁ = sign(w0)|w0|^{1/L}``, ``u_k = |w0|^{1/L}`` for k ≥ 2. J has a
          zero row wherever ``w0_j = 0`` (depth ≥ 2).
        * ``imbalance=c > 0``: ``u_k = c`` for k ≥ 2 and ``u₁ = w0 / c^{L-1}`` (exact up to one division);
          then ``∂w_j/∂u₁(j) = c^{L-1} ≠ 0`` and J has full row rank d.
        """
        name = "ProductDiagonal.from_end_to_end"
        w0 = _check_w0(name, w0)
        _check_depth(name, depth)
        if imbalance is not None and not imbalance > 0:
            raise ValueError(f"{name}: imbalance must be a positive float or None, got {imbalance!r}")
        module = cls(w0.numel(), depth, dtype=w0.dtype, device=w0.device)
        with torch.no_grad():
            if imbalance is None:
                root = w0.abs() ** (1.0 / depth)
                module.factors[0].copy_(torch.sign(w0) * root)
                for k in range(1, depth):
                    module.factors[k].copy_(root)
            else:
                module.factors[0].copy_(w0 / imbalance ** (depth - 1))
                for k in range(1, depth):
                    module.factors[k].fill_(imbalance)
        return module

    def forward(self) -> Tensor:
        w = self.factors[0]
        for k in range(1, self._depth):
            w = w * self.factors[k]
        return w


class SignedDiagonal(LinearParametrisation):
    """A signed diagonal network: ``w(θ) = u₊^L − u₋^L`` (elementwise powers), parameters ``u₊, u₋ ∈ R^d``.

    The Jacobian row for coordinate j is ``L(u₊(j)^{L-1}, −u₋(j)^{L-1})``: full row rank d as long as no
    coordinate has ``u₊(j) = u₋(j) = 0``. With small equal ``u₊ = u₋ = α`` (so ``w = 0``) gradient descent on
    this net is biased toward sparse predictors (the small-initialisation regime).
    """

    def __init__(
        self, d: int, depth: int, *, dtype: torch.dtype | None = None, device: torch.device | None = None
    ):
        super().__init__()
        _check_depth("SignedDiagonal", depth)
        self.d = d
        self._depth = depth
        self.u_plus = nn.Parameter(torch.ones(d, dtype=dtype, device=device))
        self.u_minus = nn.Parameter(torch.ones(d, dtype=dtype, device=device))

    @classmethod
    def from_end_to_end(cls, w0: Tensor, depth: int, *, scale: float = 1.0) -> SignedDiagonal:
        """``u₊ = (α^L + max(w0, 0))^{1/L}``, ``u₋ = (α^L + max(−w0, 0))^{1/L}`` with ``α = scale > 0``.

        Then ``u₊^L − u₋^L = w0`` (up to rounding of the L-th root); ``u₊, u₋ ≥ α > 0`` keep J at full rank.
        """
        name = "SignedDiagonal.from_end_to_end"
        w0 = _check_w0(name, w0)
        _check_depth(name, depth)
        if not scale > 0:
            raise ValueError(f"{name}: scale must be > 0 so that J keeps full rank, got {scale!r}")
        module = cls(w0.numel(), depth, dtype=w0.dtype, device=w0.device)
        base = torch.full_like(w0, float(scale) ** depth)
        with torch.no_grad():
            module.u_plus.copy_((base + w0.clamp(min=0)) ** (1.0 / depth))
            module.u_minus.copy_((base + (-w0).clamp(min=0)) ** (1.0 / depth))
        return module

    def forward(self) -> Tensor:
        return self.u_plus**self._depth - self.u_minus**self._depth
