"""Deep matrix factorisation E = W_L ⋯ W_1 with square n × n layers.

Layers are held as an ordered ``dict[str, Tensor]`` {"W1": W_1, …, "WL": W_L} so that they can be passed as
``params`` to the natural-gradient engine; ``end_to_end`` is the parametrisation φ(W_1, …, W_L) = W_L ⋯ W_1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def layer_names(depth: int) -> list[str]:
    """["W1", …, "WL"], the keys of a depth-L factorisation (W1 acts first)."""
    return [f"W{j}" for j in range(1, depth + 1)]


def _check_depth_size(call: str, size: int, depth: int) -> None:
    if size < 1 or depth < 1:
        raise ValueError(f"{call}: expected size >= 1 and depth >= 1, got size={size}, depth={depth}")


def arora_layers(
    size: int,
    depth: int,
    init_scale: float,
    *,
    seed: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Independent Gaussian layers with entry std init^{1/L}/√n (Arora et al. 2019).

    The end-to-end entries then have standard deviation init/√n, so ‖E‖_F ≈ init·√n at every depth.

    Args:
        size: n, the side of each layer.
        depth: L, the number of layers.
        init_scale: init > 0, the end-to-end scale.
        seed: seed of the torch generator.
        dtype: floating dtype of the layers.
        device: device of the layers.
    """
    _check_depth_size("arora_layers", size, depth)
    if not init_scale > 0:
        raise ValueError(f"arora_layers: init_scale must be > 0, got {init_scale}")
    generator = torch.Generator().manual_seed(seed)
    std = init_scale ** (1.0 / depth) / math.sqrt(size)
    return {
        name: (std * torch.randn(size, size, generator=generator, dtype=torch.float64)).to(
            dtype=dtype, device=device
        )
        for name in layer_names(depth)
    }


def imbalanced_layers(
    size: int,
    scales: Sequence[float],
    *,
    seed: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Layers W_j = s_j Q_j with Haar-random orthogonal Q_j and strictly increasing scales s_1 < … < s_L.

    Gradient flow and the Moore–Penrose natural gradient flow both conserve W_{j+1}ᵀW_{j+1} − W_jW_jᵀ (the
    update is orthogonal to the directions (…, −W_{j+1}M, MW_j, …) that leave E fixed). Here that difference
    starts at (s_{j+1}² − s_j²) I ≻ 0, so W_2, …, W_L stay invertible and the Jacobian of E stays surjective
    along the whole flow: the NGF never meets the det E = 0 rank drop of balanced factorisations.

    Args:
        size: n, the side of each layer.
        scales: s_1, …, s_L > 0, strictly increasing (L = len(scales)).
        seed: seed of the torch generator.
        dtype: floating dtype of the layers.
        device: device of the layers.
    """
    _check_depth_size("imbalanced_layers", size, len(scales))
    if any(s <= 0 for s in scales) or any(b <= a for a, b in zip(scales, scales[1:], strict=False)):
        raise ValueError(
            f"imbalanced_layers: scales must be positive and strictly increasing, got {list(scales)}"
        )
    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for name, scale in zip(layer_names(len(scales)), scales, strict=True):
        q, r = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))  # sign fix makes Q Haar distributed
        layers[name] = (scale * q).to(dtype=dtype, device=device)
    return layers


def end_to_end(layers: dict[str, torch.Tensor]) -> torch.Tensor:
    """E = W_L ⋯ W_1 for layers {"W1": W_1, …, "WL": W_L} (insertion order is the order of application)."""
    if not isinstance(layers, dict) or not layers:
        raise TypeError(
            f"end_to_end: expected a non-empty dict of layer tensors, got {type(layers).__name__}"
        )
    product: torch.Tensor | None = None
    for weight in layers.values():
        product = weight if product is None else weight @ product
    assert product is not None  # layers is non-empty (checked above)
    return product


def observed_entries(index: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """φ_Ω(W) = E.flatten()[Ω]: the parametrisation restricted to the entries listed in ``index``.

    Natural gradients of this map use the observed-entry Fisher J_Ωᵀ J_Ω; those of :func:`end_to_end` use the
    full Fisher over all n² entries.
    """

    def phi(layers: dict[str, torch.Tensor]) -> torch.Tensor:
        return end_to_end(layers).flatten()[index]

    return phi


def layer_gradients(
    layers: dict[str, torch.Tensor], grad_end_to_end: torch.Tensor
) -> dict[str, torch.Tensor]:
    """∇_{W_j} L = (W_L⋯W_{j+1})ᵀ ∇_E L (W_{j−1}⋯W_1)ᵀ, the chain rule through the product, in closed form."""
    weights = list(layers.values())
    depth = len(weights)
    eye = torch.eye(weights[0].shape[0], dtype=weights[0].dtype, device=weights[0].device)
    below = [eye]  # below[j] = W_j ⋯ W_1 (below[0] = I)
    for weight in weights:
        below.append(weight @ below[-1])
    grads: list[torch.Tensor] = [eye] * depth
    above = eye  # W_L ⋯ W_{j+2} while visiting layer j + 1 (0-based j)
    for j in range(depth - 1, -1, -1):
        grads[j] = above.T @ grad_end_to_end @ below[j].T
        above = above @ weights[j]
    return dict(zip(layers.keys(), grads, strict=True))


def end_to_end_velocity(
    layers: dict[str, torch.Tensor], layer_velocity: dict[str, torch.Tensor]
) -> torch.Tensor:
    """J·v = Σ_j (W_L⋯W_{j+1}) V_j (W_{j−1}⋯W_1): the first-order change of E along layer velocities V_j."""
    weights = list(layers.values())
    velocities = list(layer_velocity.values())
    total = torch.zeros_like(weights[0])
    for j, velocity in enumerate(velocities):
        term = velocity
        for weight in reversed(weights[:j]):
            term = term @ weight
        for weight in weights[j + 1 :]:
            term = weight @ term
        total = total + term
    return total
