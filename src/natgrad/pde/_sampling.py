"""Collocation points in a box Π_i [lo_i, hi_i]: uniform and quasi-random draws, fixed grids, boundary points,
resampling.

Every random sampler takes an explicit ``torch.Generator``, so a seed fixes the points. The quasi-random ones
are scrambled Sobol points (``torch.quasirandom.SobolEngine``, its scrambling seeded from the generator): a
mean over N of them integrates a smooth function with an error close to O(N⁻¹) instead of the O(N^(−1/2)) of
independent uniform draws, and every fresh draw is a new randomisation of the same low-discrepancy set.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ._problem import Problem

Box = Sequence[tuple[float, float]]
Drawn = TypeVar("Drawn")


def _box(call: str, box: Box) -> tuple[Tensor, Tensor]:
    try:
        pairs = [(float(lo), float(hi)) for lo, hi in box]
    except (TypeError, ValueError):
        raise ValueError(
            f"{call}: box must be a sequence of (lo, hi) pairs, one per coordinate, got {box!r}"
        ) from None
    if not pairs or any(not (math.isfinite(lo) and math.isfinite(hi) and lo < hi) for lo, hi in pairs):
        raise ValueError(f"{call}: box must be non-empty finite (lo, hi) pairs with lo < hi, got {pairs}")
    lo, hi = zip(*pairs, strict=True)
    return torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)


def _count(call: str, what: str, n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{call}: {what} must be a positive integer, got {n!r}")
    return n


def uniform(n: int, box: Box, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
    """n points drawn uniformly from the box: (n, D)."""
    lo, hi = _box("pde.uniform", box)
    _count("pde.uniform", "n", n)
    u = torch.rand(n, lo.numel(), generator=generator, dtype=torch.float64)
    return (lo + (hi - lo) * u).to(dtype)


def grid(
    points_per_dim: int, box: Box, dtype: torch.dtype = torch.float64, cell_centres: bool = True
) -> Tensor:
    """Tensor-product grid, points_per_dim^D points: (points_per_dim^D, D).

    Args:
        cell_centres: True: centres of a uniform partition (all strictly inside, for interior points);
            False: equispaced including both ends.
    """
    lo, hi = _box("pde.grid", box)
    k = _count("pde.grid", "points_per_dim", points_per_dim)
    if cell_centres:
        t = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    else:
        t = torch.linspace(0.0, 1.0, k, dtype=torch.float64)
    axes = [lo[i] + (hi[i] - lo[i]) * t for i in range(lo.numel())]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1).to(dtype)


def box_boundary_grid(points_per_edge: int, box: Box, dtype: torch.dtype = torch.float64) -> Tensor:
    """Equispaced points on the boundary of a 2-D box: points_per_edge per edge, corners once, (4k, 2)."""
    lo, hi = _box("pde.box_boundary_grid", box)
    if lo.numel() != 2:
        raise ValueError(
            f"pde.box_boundary_grid: needs a 2-D box, got {lo.numel()} coordinates; use uniform_boundary"
        )
    k = _count("pde.box_boundary_grid", "points_per_edge", points_per_edge)
    t = torch.arange(k, dtype=torch.float64) / k
    x = lo[0] + (hi[0] - lo[0]) * t
    y = lo[1] + (hi[1] - lo[1]) * t
    edges = [
        torch.stack([x, torch.full_like(t, float(lo[1]))], 1),
        torch.stack([torch.full_like(t, float(hi[0])), y], 1),
        torch.stack([hi[0] + lo[0] - x, torch.full_like(t, float(hi[1]))], 1),
        torch.stack([torch.full_like(t, float(lo[0])), hi[1] + lo[1] - y], 1),
    ]
    return torch.cat(edges, 0).to(dtype)


def _coordinate(i: object) -> int | None:
    """An integer coordinate (Python, NumPy or 0-d tensor integer), or None for anything else (bools too)."""
    if isinstance(i, bool):
        return None
    try:
        return operator.index(i)  # type: ignore[arg-type]
    except TypeError:
        return None


def _faces(
    call: str, box: Box, dims: Sequence[int] | None
) -> tuple[Tensor, Tensor, Tensor, list[int], Tensor]:
    """(lo, hi, hi − lo, the face coordinates, the (D−1)-volumes of the faces lo_i, hi_i of each in turn)."""
    lo, hi = _box(call, box)
    dim = lo.numel()
    given = list(range(dim)) if dims is None else [_coordinate(i) for i in dims]
    valid = [i for i in given if i is not None and -dim <= i < dim]
    faces = [i % dim for i in valid]
    if not faces or len(valid) != len(given) or len(set(faces)) != len(faces):
        raise ValueError(
            f"{call}: dims must be distinct coordinates in [-{dim}, {dim}) of the {dim}-D box, at least one, "
            f"got {dims!r}; e.g. dims=(0,) for the faces x_0 = lo_0 and x_0 = hi_0"
        )
    widths = hi - lo
    areas = torch.stack([widths.prod() / widths[i] for i in faces]).repeat_interleave(2)
    return lo, hi, widths, faces, areas


def uniform_boundary(
    n: int,
    box: Box,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    dims: Sequence[int] | None = None,
) -> Tensor:
    """n points uniform on the faces x_i ∈ {lo_i, hi_i} (i in ``dims``, default all) of the box: (n, D).

    A face is chosen with probability proportional to its (D−1)-volume, then the point is uniform on it.
    For a time-dependent problem pass the spatial ``dims`` only (the lateral boundary).
    """
    _count("pde.uniform_boundary", "n", n)
    lo, hi, widths, dims, areas = _faces("pde.uniform_boundary", box, dims)
    dim = lo.numel()
    faces = torch.multinomial(areas / areas.sum(), n, replacement=True, generator=generator)
    points = lo + widths * torch.rand(n, dim, generator=generator, dtype=torch.float64)
    for j, i in enumerate(dims):
        points[faces == 2 * j, i] = lo[i]
        points[faces == 2 * j + 1, i] = hi[i]
    return points.to(dtype)


def _scrambled_sobol(n: int, dim: int, generator: torch.Generator) -> Tensor:
    """n scrambled Sobol points in [0, 1)^dim, the scrambling seeded from ``generator``: (n, dim)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed).draw(n, dtype=torch.float64)


def sobol(n: int, box: Box, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
    """n scrambled Sobol points in the box (quasi-random, uniform in distribution): (n, D).

    Balanced best when n is a power of 2; any n ≥ 1 is allowed.
    """
    lo, hi = _box("pde.sobol", box)
    _count("pde.sobol", "n", n)
    return (lo + (hi - lo) * _scrambled_sobol(n, lo.numel(), generator)).to(dtype)


def sobol_boundary(
    n: int,
    box: Box,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    dims: Sequence[int] | None = None,
) -> Tensor:
    """n quasi-random points on the faces x_i ∈ {lo_i, hi_i} (i in ``dims``, default all) of the box: (n, D).

    Each face gets its share of n by (D−1)-volume (largest remainders, ties to the first faces), filled with
    its own scrambled Sobol set of the face's D − 1 coordinates; a 1-D box's two faces are its end points.
    """
    _count("pde.sobol_boundary", "n", n)
    lo, hi, widths, dims, areas = _faces("pde.sobol_boundary", box, dims)
    dim = lo.numel()
    quota = areas / areas.sum() * n
    counts = quota.floor().long()
    rest = int(n - counts.sum())
    if rest:
        order = sorted(range(len(quota)), key=lambda f: (-float(quota[f] - counts[f]), f))
        counts[order[:rest]] += 1
    faces = []
    for face, count in enumerate(counts.tolist()):
        if count == 0:
            continue
        i = dims[face // 2]
        side = (lo, hi)[face % 2][i]
        free = [j for j in range(dim) if j != i]
        points = torch.empty(count, dim, dtype=torch.float64)
        if free:
            points[:, free] = lo[free] + widths[free] * _scrambled_sobol(count, len(free), generator)
        points[:, i] = side
        faces.append(points)
    return torch.cat(faces).to(dtype)


class Resampler(Generic[Drawn]):
    """Fresh collocation points every ``every`` steps from ``sampler(generator)``, seeded once.

    ``resampler(step)`` returns the current points: new ones at steps 0, every, 2·every, …, the same
    object in between. Same seed ⇒ same sequence of point sets. A sampler that returns a mapping
    ``{condition label: (N, D) points}`` draws every condition's points from the one generator (in the
    mapping's order), and `update` puts them into a `Problem`.

    Why resample: a network with more parameters than residuals (d > N) can drive the residuals at a fixed
    set of points to zero without solving the PDE between them; fresh points every few steps make the
    training loss a Monte-Carlo estimate of the residual's integral instead of a fixed interpolation problem.

    Args:
        sampler: ``generator -> points``, e.g. ``lambda g: pde.uniform(900, box, g)``, or ``generator ->
            {label: points}``, e.g. ``lambda g: {"interior": pde.uniform(900, box, g), "boundary":
            pde.uniform_boundary(120, box, g)}``.
        every: steps between draws (≥ 1).
        seed: seed of the generator.
    """

    def __init__(self, sampler: Callable[[torch.Generator], Drawn], every: int, seed: int = 0) -> None:
        if not callable(sampler):
            raise TypeError(
                f"pde.Resampler: sampler must be callable generator -> points, got {type(sampler).__name__}"
            )
        self.sampler = sampler
        self.every = _count("pde.Resampler", "every", every)
        self.generator = torch.Generator().manual_seed(int(seed))
        self._points: Drawn | None = None
        self._drawn_at: int | None = None

    def __call__(self, step: int) -> Drawn:
        """The points to use at ``step`` (≥ 0)."""
        block = int(step) // self.every
        if self._points is None or block != self._drawn_at:
            self._points = self.sampler(self.generator)
            self._drawn_at = block
        return self._points

    def update(self, problem: Problem, step: int) -> bool:
        """Give ``problem`` the points of ``step`` (a sampler returning {label: points}); True if freshly drawn.

        Raises:
            TypeError: the sampler does not return a mapping of condition labels to points.
            KeyError: a label names no condition of ``problem``.
            ValueError: points of the wrong shape, not finite, or empty (`Problem.set_points`' checks).

        Every point set is checked before any is put in: on an error the problem keeps its points.
        """
        before = self._points
        drawn = self(step)
        if not isinstance(drawn, Mapping):
            raise TypeError(
                "pde.Resampler.update: the sampler must return {condition label: points} to update a "
                f"Problem, got {type(drawn).__name__}; call the resampler itself for bare points"
            )
        conditions = {c.label: c for c in problem.conditions}
        unknown = [label for label in drawn if label not in conditions]
        if unknown:
            raise KeyError(
                f"pde.Resampler.update: the sampler draws points for {unknown}, which name no condition of "
                f"the problem; its conditions are {list(conditions)}"
            )
        for label, points in drawn.items():  # every set is checked before any is put in
            problem.check_points(conditions[label], points)
        for label, points in drawn.items():
            problem.set_points(label, points)
        return drawn is not before
