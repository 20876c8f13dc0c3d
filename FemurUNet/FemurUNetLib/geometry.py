"""Voxel geometry (ITK/LPS conventions) and the canonical axial frame.

Arrays are numpy (k, j, i) like ``SimpleITK.GetArrayFromImage``. ``Geometry`` holds spacing and origin in
(i, j, k) / (x, y, z) order and the 3x3 direction matrix whose columns are the i, j, k axes in LPS.
The canonical frame is LPS: i toward patient Left, j toward Posterior, k toward Superior (radiological
axial display: patient right on the image's left, anterior at the top).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import permutations

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
CANONICAL_ORIENTATION = "LPS"


@dataclass(frozen=True)
class Geometry:
    spacing: tuple = (1.0, 1.0, 1.0)
    origin: tuple = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self):
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        d.setflags(write=False)
        object.__setattr__(self, "direction", d)
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be three positive numbers, got {self.spacing}")
        if abs(abs(np.linalg.det(d)) - 1.0) > 1e-3:
            raise ValueError("direction matrix is not orthonormal")

    def __eq__(self, other):
        return (isinstance(other, Geometry) and np.allclose(self.spacing, other.spacing)
                and np.allclose(self.origin, other.origin) and np.allclose(self.direction, other.direction))

    # --- ITK / SimpleITK -------------------------------------------------
    @classmethod
    def from_sitk(cls, image) -> "Geometry":
        return cls(image.GetSpacing(), image.GetOrigin(), np.array(image.GetDirection()).reshape(3, 3))

    def apply_to_sitk(self, image) -> None:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))

    # --- Slicer (RAS) ---------------------------------------------------
    def ijk_to_lps(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def lps_coordinate(self, axis: int, k, j, i):
        """LPS coordinate ``axis`` (0: x, 1: y, 2: z), mm, of the voxel centres at indices k, j, i (arrays that
        broadcast together)."""
        m = self.ijk_to_lps()
        return m[axis, 3] + m[axis, 0] * i + m[axis, 1] * j + m[axis, 2] * k

    def ijk_to_ras(self) -> np.ndarray:
        m = self.ijk_to_lps()
        m[:3, :] = LPS_TO_RAS @ m[:3, :]
        return m

    @classmethod
    def from_ijk_to_ras(cls, matrix) -> "Geometry":
        m = np.asarray(matrix, dtype=float)
        lps = LPS_TO_RAS @ m[:3, :]
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        return cls(spacing, lps[:3, 3], lps[:3, :3] / spacing)

    def physical_points(self, shape) -> np.ndarray:
        """LPS coordinates (mm) of every voxel centre, shape (*shape, 3) for a (k, j, i) array shape."""
        k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
        ijk = np.stack([i, j, k], axis=-1)
        return ijk @ (self.direction @ np.diag(self.spacing)).T + np.asarray(self.origin)


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation + flips mapping an array to the canonical LPS frame (no resampling).

    ``axes``: for canonical numpy axes (z, y, x), which source numpy axis feeds it; ``flip``: whether it
    is reversed. ``to_canonical`` / ``from_canonical`` return views, so writing into the canonical view of
    an output array writes straight onto the original grid.
    """
    axes: tuple
    flip: tuple

    @classmethod
    def for_geometry(cls, geometry: Geometry) -> "Reorientation":
        d = geometry.direction
        # index axis a (0=i, 1=j, 2=k) chosen for world axis w (0=x/L, 1=y/P, 2=z/S): best permutation
        best = max(permutations(range(3)), key=lambda p: sum(abs(d[w, p[w]]) for w in range(3)))
        axes, flip = [], []
        for w in (2, 1, 0):  # canonical numpy order: z (k), y (j), x (i)
            a = best[w]
            axes.append(2 - a)
            flip.append(bool(d[w, a] < 0))
        return cls(tuple(axes), tuple(flip))

    @property
    def is_identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flip)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(array, self.axes)
        return out[tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)]

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        out = array[tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)]
        return np.transpose(out, np.argsort(self.axes))

    def canonical_spacing(self, geometry: Geometry) -> tuple:
        """Spacing of the canonical array, in (i, j, k) = (x, y, z) order."""
        sp_numpy = (geometry.spacing[2], geometry.spacing[1], geometry.spacing[0])
        z, y, x = (sp_numpy[a] for a in self.axes)
        return (x, y, z)
