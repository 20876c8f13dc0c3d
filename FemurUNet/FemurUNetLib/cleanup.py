"""Remove labelled pieces detached from each femur (default post-processing of ``segment_volume``).

A 2-D network sees one axial slice at a time, and in one slice the shaft of a tibia or a humerus looks much like a
femoral shaft; in 3-D such a false positive is a separate piece of the labelmap. A femur is one piece of bone,
so per side (the model's left/right labels, else the body's midline: never the report's one-sided split) the
largest 26-connected piece is kept, with any other piece of at least ``KEEP_FRACTION`` of its volume (a femoral
head cut off from the shaft where the network missed the neck). Before that, a piece whose top lies more than
``BELOW_FEMUR_MM`` below the femurs' level (the lowest bottom of both sides' largest pieces, leaving out one that
lies wholly that far below the other side's: both femurs lie at one level) goes whatever its size: a talus, a foot
or a tibia shaft, never a femur parted where the network missed a few slices (LPS z: the patient's superior
axis). The rules and constants were chosen on phantoms outside the held-out set (docs/MODEL_HISTORY.md, "Detached
pieces" and "Pieces far below the femurs"). ``segment ... --keep-all-pieces`` turns it off.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
from scipy import ndimage

from .geometry import Geometry
from .plausibility import bounding_box, labelled_pieces, side_masks

KEEP_FRACTION = 0.2          # a piece this fraction of its side's largest piece (or larger) stays
BELOW_FEMUR_MM = 150.0       # a piece whose top lies this far below the femurs' level goes


def _z_range(pieces: np.ndarray, number: int, where: tuple, offset: tuple, geometry: Geometry) -> tuple:
    """(lowest, highest) LPS z, mm, of the voxel centres of piece ``number`` (``where``: its find_objects slices
    in the box that starts at index ``offset`` (k, j, i) of the volume)."""
    k, j, i = (a + o + w.start for a, o, w in zip(np.nonzero(pieces[where] == number), offset, where))
    z = geometry.lps_coordinate(2, k, j, i)
    return float(z.min()), float(z.max())


def _largest_range(mask: np.ndarray, offset: tuple, geometry: Geometry) -> tuple:
    """(lowest, highest) LPS z of the largest piece of ``mask``."""
    pieces, sizes = labelled_pieces(mask)
    n = int(sizes.argmax())
    return _z_range(pieces, n, ndimage.find_objects(pieces, max_label=n)[n - 1], offset, geometry)


def femur_level(ranges: dict, below_mm: float = BELOW_FEMUR_MM) -> float:
    """The lowest bottom of the sides' largest pieces ({side: (lowest, highest) z}), leaving out a side's piece whose
    top lies more than ``below_mm`` below the other side's bottom: both femurs lie at one level."""
    return min(lo for side, (lo, hi) in ranges.items()
               if not any(hi < other_lo - below_mm for other, (other_lo, _) in ranges.items() if other != side))


def _pieces_to_keep(pieces: np.ndarray, sizes: np.ndarray, offset: tuple, geometry: Geometry, lowest_top: float,
                    keep_fraction: float) -> list:
    """Numbers of the pieces that stay: of those whose top lies at ``lowest_top`` or higher, the largest and the
    others of at least ``keep_fraction`` of its volume."""
    where = ndimage.find_objects(pieces)
    stay = []
    for n in np.argsort(-sizes[1:], kind="stable") + 1:              # largest first
        if stay and sizes[n] < keep_fraction * sizes[stay[0]]:
            break
        if _z_range(pieces, n, where[n - 1], offset, geometry)[1] >= lowest_top:
            stay.append(int(n))
    return stay


def detached_pieces(masks: dict, offset: tuple, geometry: Geometry, keep_fraction: float = KEEP_FRACTION,
                    below_mm: float = BELOW_FEMUR_MM) -> Iterator[tuple]:
    """(side, its box in ``masks[side]``, bool mask of the pieces to remove in that box) per side with labels:
    pieces whose top lies more than ``below_mm`` below the femurs' level (``femur_level``, LPS z), then pieces
    smaller than ``keep_fraction`` x the side's largest remaining one. ``masks``: each side's labels in a box
    starting at index ``offset``. Each side is numbered twice (the same numbers) in its own box, so that one side's
    numbers are held at a time."""
    boxes = {side: bounding_box(mask) for side, mask in masks.items()}
    boxes = {side: box for side, box in boxes.items() if box is not None}
    at = {side: tuple(o + b.start for o, b in zip(offset, box)) for side, box in boxes.items()}
    ranges = {side: _largest_range(masks[side][box], at[side], geometry) for side, box in boxes.items()}
    if not ranges:
        return
    lowest_top = femur_level(ranges, below_mm) - below_mm
    for side, box in boxes.items():
        pieces, sizes = labelled_pieces(masks[side][box])
        stay = np.zeros(len(sizes), bool)
        stay[[0] + _pieces_to_keep(pieces, sizes, at[side], geometry, lowest_top, keep_fraction)] = True
        yield side, box, ~stay[pieces]


def remove_detached_pieces(labelmap: np.ndarray, hu: np.ndarray, geometry: Geometry,
                           labels: Optional[list] = None, keep_fraction: float = KEEP_FRACTION,
                           below_mm: float = BELOW_FEMUR_MM) -> int:
    """Zero, in place, the voxels of ``labelmap`` ((k, j, i) on the grid of ``hu``) in pieces detached from each
    side's femur (``detached_pieces``); returns how many voxels were removed."""
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be within [0, 1], got {keep_fraction}")
    box = bounding_box(labelmap > 0)
    if box is None:
        return 0
    part = labelmap[box]                                  # a view: edits land in labelmap
    offset = tuple(b.start for b in box)
    masks, _, _ = side_masks(part, offset, geometry, hu, labels)
    removed = 0
    for _, side_box, drop in detached_pieces(masks, offset, geometry, keep_fraction, below_mm):
        removed += int(np.count_nonzero(drop))
        part[side_box][drop] = 0
    return removed
