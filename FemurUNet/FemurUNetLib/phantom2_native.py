"""Coarse grids of phantom v2 made the way they are in practice: rendered on a finer native grid, then resampled.

A scanner reconstructs axial pixels of about 0.5-1 mm; pixels of 2-3 mm come from resampling (research pipelines,
model inputs, exports). Such a case is rendered on a grid ``FACTOR`` times finer along each axis of 2-3 mm (a native
grid of 0.67-1 mm), put through the scanner physics there, then resampled to the coarse grid: the fine voxel at each
coarse centre (the centres coincide, so the label stays exact) blended with the block mean by a drawn ``antialias``
weight (0: no antialiasing, as nearest or linear resampling at coinciding centres; 1: the area average). Rendering
such a grid straight at the coarse spacing would give partial volume and the kernel's halo at the coarse scale,
which no resampled scan shows. Grids coarser than 3 mm are never drawn (tests and evaluations ask for them): they
are rendered directly, as before.
"""
from __future__ import annotations

import numpy as np

from .geometry import Geometry

NATIVE_P = 0.7                 # coarse in-plane grids rendered natively then resampled (the rest: as before)
COARSE_MM = (2.0, 3.0)         # in-plane pixels this size are never a scanner's own reconstruction
FACTOR = 3                     # odd: every coarse centre is a fine centre
MAX_NATIVE_VOXELS = 150_000_000  # 600 MB of float32: larger native grids drop the slice axis's factor, then all


def draw_native(rng) -> dict:
    return {"native": bool(rng.random() < NATIVE_P), "antialias": float(rng.uniform(0.0, 1.0))}


def native_factors(geometry: Geometry, shape) -> tuple | None:
    """Per numpy axis (k, j, i): FACTOR along axes whose spacing is within COARSE_MM when an in-plane (world x or
    y) axis is, else None (the grid may be a scanner's own)."""
    world = np.abs(geometry.direction).argmax(axis=0)            # world axis of index axes i, j, k
    coarse = [COARSE_MM[0] <= s <= COARSE_MM[1] for s in geometry.spacing]
    if not any(c for c, w in zip(coarse, world) if w != 2):
        return None
    factors = [FACTOR if c else 1 for c in coarse[::-1]]
    slice_axis = 2 - int(np.flatnonzero(world == 2)[0])
    for drop in (slice_axis, None):
        if int(np.prod(np.asarray(shape) * factors)) <= MAX_NATIVE_VOXELS:
            return tuple(factors)
        if drop is not None:
            factors[drop] = 1
    return None


def native_grid(geometry: Geometry, shape, factors) -> tuple:
    """(Geometry, numpy shape) of the fine grid whose voxel (f - 1) / 2 + f * n is the coarse voxel n."""
    f_ijk = np.asarray(factors[::-1], float)
    spacing = np.asarray(geometry.spacing) / f_ijk
    origin = np.asarray(geometry.origin) - geometry.direction @ (spacing * (f_ijk - 1) / 2)
    fine_shape = tuple(int(n * f) for n, f in zip(shape, factors))
    return Geometry(tuple(spacing), tuple(origin), geometry.direction), fine_shape


def at_coarse_centres(fine: np.ndarray, factors) -> np.ndarray:
    """The fine voxels at the coarse centres (a copy)."""
    return np.ascontiguousarray(fine[tuple(slice((f - 1) // 2, None, f) for f in factors)])


def resampled(fine: np.ndarray, factors, antialias: float) -> np.ndarray:
    """float32 coarse image: the centre samples blended with the block means by ``antialias`` (0-1)."""
    point = at_coarse_centres(fine, factors)
    if antialias <= 0:
        return point
    shape = [n // f for n, f in zip(fine.shape, factors)]
    blocks = fine.reshape([v for n, f in zip(shape, factors) for v in (n, f)])
    mean = blocks.mean(axis=(1, 3, 5), dtype=np.float32)
    return point + np.float32(antialias) * (mean - point)


def coarse_spacing(seed: int) -> tuple:
    """An isotropic 2-3 mm grid (i, j, k) drawn from the seed alone: the resampled scans of training stage 14 and
    of the coarse-grid stress test (``evaluate_demo_model.py --coarse``)."""
    return (float(np.random.default_rng([int(seed), 14]).uniform(*COARSE_MM)),) * 3
