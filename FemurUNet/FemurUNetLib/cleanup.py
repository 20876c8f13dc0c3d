"""Remove labelled pieces detached from each femur (default post-processing of ``segment_volume``).

A 2-D network sees one axial slice at a time, and in one slice the shaft of a tibia or a humerus looks much like a
femoral shaft; in 3-D such a false positive is a separate piece of the labelmap. A femur is one piece of bone,
so per side (the model's left/right labels, else the body's midline: never the report's one-sided split) the
largest 26-connected piece is kept, with any other piece of at least ``KEEP_FRACTION`` of its volume (a femoral
head cut off from the shaft where the network missed the neck). The rule and its constant were chosen on
held-out phantoms (docs/MODEL_HISTORY.md, "Detached pieces"). ``segment ... --keep-all-pieces`` turns it off.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .geometry import Geometry
from .plausibility import SIDES, bounding_box, labelled_pieces, side_masks

KEEP_FRACTION = 0.2          # a piece this fraction of its side's largest piece (or larger) stays


def detached_pieces(side_mask: np.ndarray, keep_fraction: float = KEEP_FRACTION) -> np.ndarray:
    """Boolean mask of the pieces of ``side_mask`` smaller than ``keep_fraction`` x its largest piece."""
    pieces, sizes = labelled_pieces(side_mask)
    if len(sizes) < 3:
        return np.zeros(side_mask.shape, bool)
    drop = sizes < keep_fraction * sizes.max()
    drop[0] = False
    return drop[pieces]


def remove_detached_pieces(labelmap: np.ndarray, hu: np.ndarray, geometry: Geometry,
                           labels: Optional[list] = None, keep_fraction: float = KEEP_FRACTION) -> int:
    """Zero, in place, the voxels of ``labelmap`` ((k, j, i) on the grid of ``hu``) in pieces detached from each
    side's femur; returns how many voxels were removed."""
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be within [0, 1], got {keep_fraction}")
    box = bounding_box(labelmap > 0)
    if box is None:
        return 0
    part = labelmap[box]                                  # a view: edits land in labelmap
    masks, _, _ = side_masks(part, tuple(b.start for b in box), geometry, hu, labels)
    removed = 0
    for side in SIDES:
        drop = detached_pieces(masks[side], keep_fraction)
        removed += int(np.count_nonzero(drop))
        part[drop] = 0
    return removed
