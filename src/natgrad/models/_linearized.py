"""The model linearised at ξ: outputs z, and products with J and Jᵀ (never J itself unless asked).

Products J t use forward-mode AD when every operation of φ supports it. Some do not (fused attention
kernels, ``torch._weight_norm``, ...): a probe product at construction detects this, before any solve, and
J t then comes from reverse mode by the double-VJP identity. With u ↦ Jᵀu linear in u,

    J t = ∂/∂u ⟨Jᵀu, t⟩,

one backward pass through the graph of the backward pass Jᵀu, built once with u symbolic (its value does
not matter). Graphs for products are built with the math attention kernel, whose backward is itself
differentiable and batches under vmap.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jvp, vjp, vmap

from natgrad._checks import check_params
from natgrad._tree import Parametrisation, Params, flatten_params, leaves
from natgrad.exceptions import InvalidInputError, InvalidTypeError
from natgrad.models._affine import AffineMap
from natgrad.models._module import module_record


def _forward_mode_missing(error: BaseException) -> bool:
    """True for torch's errors saying an operation has no forward-mode derivative."""
    text = str(error)
    return isinstance(error, NotImplementedError | RuntimeError) and (
        "forward AD" in text or "forward-mode" in text or "jvp" in text.lower()
    )


def _math_attention() -> Any:
    """Context selecting the math scaled-dot-product attention kernel (twice differentiable)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


class Linearization:
    """φ at ξ with J = Dφ(ξ) (n × d) on flattened outputs and flattened parameters.

    Args:
        phi: callable params -> Tensor.
        params: Tensor or dict of Tensors.
        call: the public call, for messages.

    Attributes:
        info: facts for the result: ``"jvp"`` (``"forward"`` or ``"reverse"``, how J t is computed) and,
            for φ from ``from_module`` with BatchNorm using batch statistics, ``"coupled_examples"``.
    """

    def __init__(self, phi: Parametrisation, params: Params, call: str = "natural_gradient") -> None:
        if isinstance(phi, nn.Module):
            raise InvalidTypeError(
                f"{call}: phi is a torch.nn.Module ({type(phi).__name__}); phi must be a function of the "
                "parameters: use phi, params = ng.from_module(model, inputs)"
            )
        self.params = params
        self.flat = flatten_params(params).detach()
        self.d = self.flat.numel()
        self.call = call
        self.out_shape: torch.Size = torch.Size()
        # Differentiate with respect to the parameter tensors themselves, not a flat vector split into views:
        # slicing a flat vector makes every VJP zero-fill and add a d-sized buffer per tensor.
        self._leaves = tuple(t.detach() for t in leaves(params))
        self._sizes = [t.numel() for t in self._leaves]

        def phi_leaves(*tensors: Tensor) -> Tensor:
            structured = (
                tensors[0] if isinstance(params, Tensor) else dict(zip(params.keys(), tensors, strict=True))
            )
            out = phi(structured)
            if not isinstance(out, Tensor):
                raise InvalidTypeError(f"{call}: phi(params) must return a Tensor, got {type(out).__name__}")
            self.out_shape = out.shape
            return out.reshape(-1)

        self._phi_leaves = phi_leaves
        self._affine: Tensor | None = None
        if isinstance(phi, AffineMap):  # z₀ and J as they are: no evaluation, no probe, no check
            self._affine = self._affine_jacobian(phi)
            z_flat = self._affine_value(phi, self._affine)
            self.out_shape = phi.z0.shape
        else:
            try:
                # The math attention kernel: its backward has vmap batching rules (the fused kernels' do not,
                # and batched VJPs through them fall back to a slow loop).
                with _math_attention():
                    z_flat, self._vjp_fn = vjp(phi_leaves, *self._leaves)[:2]  # (output, vjp_fn): no aux
            except RuntimeError as error:
                if "doesn't have storage" not in str(error):
                    raise
                raise RuntimeError(
                    f"{call}: phi cannot be differentiated with torch.func ({error}): an operation reads the raw "
                    "storage of a parameter-dependent tensor (e.g. an RNN fed a PackedSequence); pass padded "
                    "tensors instead"
                ) from error
        self.z_flat = z_flat.detach()
        self.z = self.z_flat.reshape(self.out_shape)
        self.n = self.z_flat.numel()
        self.info: dict[str, Any] = {}
        record = module_record(phi)
        if record is not None and record.coupled:
            self.info["coupled_examples"] = "BatchNorm normalises with batch statistics in " + ", ".join(
                repr(n) for n in record.coupled
            )
        self._reverse: tuple[Tensor, tuple[Tensor | None, ...]] | None = None
        if self._affine is not None:
            self.info["jvp"] = "forward"
            self.dense_jacobian: Tensor | None = self._affine
        else:
            self.info["jvp"] = self._choose_mode()
            self.dense_jacobian = self._known_jacobian(phi)

    def _affine_jacobian(self, phi: AffineMap) -> Tensor:
        """J of an `AffineMap` at parameters shaped like its θ₀, in their dtype."""
        expected = (phi.z0.numel(), self.d)
        if tuple(phi.dense_jacobian.shape) != expected or phi.theta0.numel() != self.d:
            raise InvalidInputError(
                f"{self.call}: the affine map's Jacobian has shape {tuple(phi.dense_jacobian.shape)} and θ₀ "
                f"{phi.theta0.numel()} entries, but the parameters have {self.d}; evaluate the map at "
                "parameters like those it was built at"
            )
        return phi.dense_jacobian.detach().to(self.flat)

    def _affine_value(self, phi: AffineMap, jacobian: Tensor) -> Tensor:
        """φ(ξ) = z₀ + J (ξ − θ₀): z₀ itself at ξ = θ₀ (the usual case, a model linearised where it is used)."""
        z0, theta0 = phi.z0.detach().reshape(-1).to(self.flat), phi.theta0.to(self.flat)
        return z0 if torch.equal(self.flat, theta0) else z0 + jacobian @ (self.flat - theta0)

    def _choose_mode(self) -> str:
        """Probe J t once: forward mode if it works, else build the reverse-mode graph (and probe it)."""
        probe = torch.ones_like(self.flat)
        try:
            again = jvp(self._phi_leaves, self._leaves, self._split(probe))[0]
        except (NotImplementedError, RuntimeError) as error:
            if not _forward_mode_missing(error):
                raise
            try:
                again = self._build_reverse()
            except (NotImplementedError, RuntimeError) as reverse_error:
                raise NotImplementedError(
                    f"{self.call}: phi uses an operation without forward-mode AD ({error}) and the reverse-mode "
                    f"replacement failed too ({reverse_error}); products J t cannot be formed for this phi (give custom autograd.Functions a jvp staticmethod or a differentiable backward)"
                ) from reverse_error
            mode = "reverse"
        else:
            mode = "forward"
        self._check_deterministic(again.detach())
        return mode

    def _known_jacobian(self, phi: Parametrisation) -> Tensor | None:
        """J as materialised by phi itself (its ``dense_jacobian`` attribute, e.g. natgrad.pde's linearised
        residuals), checked against one autodiff product; None when phi carries none.

        A dense A then costs no products at all instead of n VJPs (an n × n × d multiplication for a map
        that is itself a matrix product).
        """
        known = getattr(phi, "dense_jacobian", None)
        if known is None:
            return None
        expected = (self.n, self.d)
        if not isinstance(known, Tensor) or tuple(known.shape) != expected:
            got = tuple(known.shape) if isinstance(known, Tensor) else type(known).__name__
            raise InvalidInputError(
                f"{self.call}: phi.dense_jacobian must be the Jacobian of phi's flattened output with respect "
                f"to the flattened parameters, a Tensor of shape {expected}, got {got}; drop the attribute "
                "to let natgrad differentiate phi"
            )
        known = known.detach().to(self.flat)
        gen = torch.Generator().manual_seed(0)
        t = torch.randn(self.d, generator=gen, dtype=torch.float64).to(self.flat)
        gap = float(torch.linalg.vector_norm(known @ t - self.jvp(t)))
        scale = float(torch.linalg.matrix_norm(known)) * float(torch.linalg.vector_norm(t))
        if gap > torch.finfo(self.flat.dtype).eps ** 0.5 * max(scale, torch.finfo(self.flat.dtype).tiny):
            raise InvalidInputError(
                f"{self.call}: phi.dense_jacobian disagrees with autodiff of phi (‖J t − Dphi t‖ = {gap:.3g} "
                f"for ‖J‖_F ‖t‖ = {scale:.3g}); it must be Dphi at these parameters, in their flattened order"
            )
        return known

    def _check_deterministic(self, again: Tensor) -> None:
        """Two evaluations of φ at the same ξ must agree (dropout in training mode does not)."""
        if again.numel() == 0 or again.shape != self.z_flat.shape:
            return
        gap = float(torch.linalg.vector_norm(again - self.z_flat, ord=float("inf")))
        scale = float(torch.linalg.vector_norm(self.z_flat, ord=float("inf")))
        if gap > torch.finfo(self.z_flat.dtype).eps ** 0.5 * max(scale, 1.0):
            raise InvalidInputError(
                f"{self.call}: phi is not deterministic: two evaluations at the same parameters differ by "
                f"{gap:.3g} (max abs); the natural gradient needs one function. Call model.eval() to switch "
                "off dropout, or fix the randomness (ng.from_module(model, inputs, seed=0) replays one random "
                "state, i.e. one dropout mask, at every evaluation)"
            )

    def _build_reverse(self) -> Tensor:
        """The graph of u ↦ Jᵀu (u symbolic) for J t = ∂⟨Jᵀu, t⟩/∂u; returns φ(ξ) from this evaluation."""
        with torch.enable_grad(), _math_attention():
            tensors = [t.detach().requires_grad_(True) for t in self._leaves]
            out = self._phi_leaves(*tensors)
            u = torch.zeros_like(out.detach(), requires_grad=True)
            grads: tuple[Tensor | None, ...] = (None,) * len(tensors)  # φ does not depend on ξ
            if out.requires_grad:
                grads = torch.autograd.grad(out, tensors, u, create_graph=True, allow_unused=True)
        self._reverse = (u, tuple(g if g is not None and g.requires_grad else None for g in grads))
        self._check_adjoint()
        return out.detach()

    def _check_adjoint(self) -> None:
        """⟨J t, w⟩ = ⟨t, Jᵀ w⟩ for fixed random t, w: fails here, before any solve, when the backward pass
        is not differentiable (a custom Function marked once_differentiable cuts the graph silently)."""
        gen = torch.Generator().manual_seed(0)
        t = torch.randn(self.d, generator=gen, dtype=torch.float64).to(self.flat)
        w = torch.randn(self.n, generator=gen, dtype=torch.float64).to(self.flat)
        jt, jtw = self._reverse_jvp(t), self._vjp_flat(w)
        left, right = torch.dot(jt, w), torch.dot(t, jtw)
        scale = torch.linalg.vector_norm(jtw) * torch.linalg.vector_norm(t)
        if abs(float(left - right)) > torch.finfo(self.flat.dtype).eps ** 0.5 * float(scale):
            raise NotImplementedError(
                f"products by the backward pass do not reproduce ⟨J t, w⟩ = ⟨t, Jᵀw⟩ ({float(left):.6g} vs "
                f"{float(right):.6g}): phi's backward pass is not differentiable (e.g. once_differentiable)"
            )

    def _reverse_jvp(self, t: Tensor, batched: bool = False) -> Tensor:
        u, grads = self._reverse  # type: ignore[misc]
        parts = self._split(t) if not batched else self._split_rows(t)
        used = [(g, p) for g, p in zip(grads, parts, strict=True) if g is not None]
        shape = (t.shape[0], self.n) if batched else (self.n,)
        if not used:
            return t.new_zeros(shape)
        (result,) = torch.autograd.grad(
            [g for g, _ in used],
            u,
            [p for _, p in used],
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=batched,
        )
        return t.new_zeros(shape) if result is None else result.detach()

    def _split(self, t: Tensor) -> tuple[Tensor, ...]:
        return tuple(
            p.reshape(leaf.shape) for p, leaf in zip(t.split(self._sizes), self._leaves, strict=True)
        )

    def _split_rows(self, t: Tensor) -> tuple[Tensor, ...]:
        return tuple(
            p.reshape(t.shape[0], *leaf.shape)
            for p, leaf in zip(t.split(self._sizes, dim=1), self._leaves, strict=True)
        )

    def _vjp_flat(self, u: Tensor) -> Tensor:
        if self._affine is not None:
            return self._affine.t().mv(u) if u.ndim == 1 else self._affine.T @ u
        return torch.cat([g.reshape(-1) for g in self._vjp_fn(u)])

    def vjp(self, u: Tensor) -> Tensor:
        """Jᵀ u for u of shape (n,)."""
        return self._vjp_flat(u)

    def vjp_rows(self, u: Tensor) -> Tensor:
        """(Jᵀ uᵢ)ᵢ for u of shape (k, n): returns (k, d)."""
        return vmap(self._vjp_flat)(u)

    def jvp(self, t: Tensor) -> Tensor:
        """J t for t of shape (d,)."""
        if self._affine is not None:
            return self._affine.mv(t)
        if self._reverse is not None:
            return self._reverse_jvp(t)
        return jvp(self._phi_leaves, self._leaves, self._split(t))[1]

    def jvp_rows(self, t: Tensor) -> Tensor:
        """(J tᵢ)ᵢ for t of shape (k, d): returns (k, n)."""
        if self._affine is not None:
            return t @ self._affine.T
        if self._reverse is not None:
            return self._reverse_jvp(t, batched=True)
        return vmap(self.jvp, randomness="same")(t)

    def jacobian(self, chunk: int | None = None) -> Tensor:
        """Dense J (n, d): phi's own (checked) when it carries one, else built row- or column-wise, whichever
        needs fewer products."""
        if self.dense_jacobian is not None:
            return self.dense_jacobian
        eye_size = min(self.n, self.d)
        chunk = chunk or eye_size
        eye = torch.eye(eye_size, dtype=self.flat.dtype, device=self.flat.device)
        if self.n <= self.d:
            return torch.cat([self.vjp_rows(eye[i : i + chunk]) for i in range(0, self.n, chunk)])
        return torch.cat([self.jvp_rows(eye[i : i + chunk]) for i in range(0, self.d, chunk)]).T


def jacobian(phi: Parametrisation, params: Params) -> Tensor:
    """Dense Jacobian of ``phi(params).flatten()`` with respect to ``flatten_params(params)``: (n, d)."""
    if not callable(phi):
        raise InvalidTypeError(
            f"jacobian: phi must be a callable (params -> Tensor), got {type(phi).__name__}"
        )
    check_params("jacobian", params)
    return Linearization(phi, params, call="jacobian").jacobian()
