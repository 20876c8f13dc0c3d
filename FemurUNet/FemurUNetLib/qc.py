"""Quality-control picture of a segmentation: axial, coronal and sagittal CT slices through the femur with its outline,
and a 3D surface of the labels, in one PNG a reader can judge at a glance (radiological view: patient right on the
left of the axial and coronal panels)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .defaults import BONE_COLOR
from .fileio import atomic_write
from .geometry import Geometry, Reorientation

WINDOW = (400.0, 1800.0)          # centre, width (HU) of the displayed CT: bone and soft tissue both readable
OUTLINE_RGB = (1.0, 0.85, 0.0)    # label outline on the grey CT
FIGURE_SIZE, DPI = (12.0, 4.0), 100   # the PNG is 1200 x 400 pixels


def _grey(slice_hu: np.ndarray) -> np.ndarray:
    low = WINDOW[0] - WINDOW[1] / 2.0
    return np.clip((slice_hu.astype(np.float32) - low) / WINDOW[1], 0.0, 1.0)


def overlay(slice_hu: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB float image of a CT slice with the mask's boundary pixels in OUTLINE_RGB."""
    from skimage.segmentation import find_boundaries
    rgb = np.repeat(_grey(slice_hu)[..., None], 3, axis=2)
    rgb[find_boundaries(mask, mode="inner")] = OUTLINE_RGB
    return rgb


def centre_indices(mask: np.ndarray) -> tuple:
    """(k, j, i) of the mask's centroid, or the array centre for an empty mask."""
    if not mask.any():
        return tuple(s // 2 for s in mask.shape)
    return tuple(int(round(c)) for c in np.argwhere(mask).mean(axis=0))


def canonical(ct: np.ndarray, labelmap: np.ndarray, geometry: Geometry) -> tuple:
    """(HU, boolean mask, (x, y, z) spacing) on the canonical (LPS) grid."""
    reorient = Reorientation.for_geometry(geometry)
    return reorient.to_canonical(ct), reorient.to_canonical(labelmap) > 0, reorient.canonical_spacing(geometry)


def panels(ct: np.ndarray, labelmap: np.ndarray, geometry: Geometry) -> list:
    """(title, RGB image, pixel aspect) of the axial, coronal and sagittal slices through the labels' centroid,
    on the canonical (LPS) grid: rows anterior -> posterior (axial) or superior -> inferior (others)."""
    return _panels(*canonical(ct, labelmap, geometry))


def _panels(hu: np.ndarray, mask: np.ndarray, spacing: tuple) -> list:
    sx, sy, sz = spacing
    k, j, i = centre_indices(mask)
    left_i = i + centre_indices(mask[:, :, i:])[2]        # sagittal: through the patient's left femur (i -> left)
    return [("axial", overlay(hu[k], mask[k]), sy / sx),
            ("coronal", overlay(hu[::-1, j, :], mask[::-1, j, :]), sz / sx),
            ("sagittal (left)", overlay(hu[::-1, :, left_i], mask[::-1, :, left_i]), sz / sy)]


def _surface(ax, mask: np.ndarray, spacing_kji: tuple) -> None:
    from skimage.measure import marching_cubes
    step = max(1, int(np.ceil(max(mask.shape) / 128)))        # at most ~128 voxels a side: quick to draw
    small = mask[::step, ::step, ::step]
    if small.sum() < 8:
        ax.text2D(0.5, 0.5, "no femur labelled", ha="center", transform=ax.transAxes)
        return
    verts, faces, _, _ = marching_cubes(np.pad(small, 1).astype(np.float32), 0.5,
                                        spacing=tuple(s * step for s in spacing_kji))
    z, y, x = verts[:, 0], verts[:, 1], verts[:, 2]
    ax.plot_trisurf(-x, y, faces, z, color=BONE_COLOR, linewidth=0, shade=True)
    ax.view_init(elev=10, azim=-90)
    ax.set_box_aspect((np.ptp(x), np.ptp(y), np.ptp(z)))
    ax.set_axis_off()


def qc_figure(ct: np.ndarray, labelmap: np.ndarray, geometry: Optional[Geometry] = None, title: str = ""):
    """The matplotlib Figure: three slice panels with the outline, then the 3D surface (anterior view)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    hu, mask, spacing = canonical(ct, labelmap, geometry or Geometry())
    fig = Figure(figsize=FIGURE_SIZE, dpi=DPI, facecolor="black")
    for n, (name, rgb, aspect) in enumerate(_panels(hu, mask, spacing)):
        ax = fig.add_subplot(1, 4, n + 1)
        ax.imshow(rgb, aspect=aspect, interpolation="nearest")
        ax.set_title(name, color="white", fontsize=10)
        ax.set_axis_off()
    _surface(fig.add_subplot(1, 4, 4, projection="3d", facecolor="black"), mask, spacing[::-1])
    if title:
        fig.suptitle(title, color="white", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.88, wspace=0.05)
    return fig


def write_qc(path, ct: np.ndarray, labelmap: np.ndarray, geometry: Optional[Geometry] = None, title: str = "") -> Path:
    """Write the QC picture as a PNG of FIGURE_SIZE x DPI pixels (atomically)."""
    fig = qc_figure(ct, labelmap, geometry, title)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", facecolor=fig.get_facecolor()), ".png")
