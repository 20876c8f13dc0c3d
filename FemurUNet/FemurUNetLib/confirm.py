"""A second opinion on each labelled piece (``segment_volume(..., confirm=MODEL)``, ``--second-opinion``; off by
default).

In scans of the lower leg the demo model labels short pieces of tibia, fibula, talus or foot as femur: one axial
slice of them looks like one of a femur. A second network (e.g. the same U-Net trained on more shins) runs on the
slices that hold labels, and every piece of the cleaned labelmap (per side, 26-connected, as ``cleanup`` numbers
them) of which it labels less than a share ``fraction`` goes (default ``defaults.CONFIRM_FRACTION``). It only
removes: the first model's boundaries stay where they were. What it was measured to do: docs/MODEL_HISTORY.md, "A
second opinion on each piece (sessions 34-36)".
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .defaults import CONFIRM_FRACTION
from .geometry import Geometry
from .plausibility import bounding_box, labelled_pieces, side_masks


def unconfirmed_pieces(labelmap: np.ndarray, confirmed: np.ndarray, hu: np.ndarray, geometry: Geometry,
                       labels: Optional[list] = None, fraction: float = CONFIRM_FRACTION) -> np.ndarray:
    """Bool mask of the voxels of ``labelmap`` in pieces of which less than ``fraction`` is ``confirmed`` (a bool
    array on the same grid: the second model's labels)."""
    drop = np.zeros(labelmap.shape, bool)
    box = bounding_box(labelmap > 0)
    if box is None:
        return drop
    offset = tuple(b.start for b in box)
    masks, _, _ = side_masks(labelmap[box], offset, geometry, hu, labels)
    sure = confirmed[box]
    for mask in masks.values():
        pieces, sizes = labelled_pieces(mask)
        agreed = np.bincount(pieces[sure], minlength=len(sizes))
        weak = agreed < fraction * sizes
        weak[0] = False
        drop[box] |= weak[pieces]
    return drop


def remove_unconfirmed_pieces(labelmap: np.ndarray, confirmed: np.ndarray, hu: np.ndarray, geometry: Geometry,
                              labels: Optional[list] = None, fraction: float = CONFIRM_FRACTION) -> int:
    """Zero, in place, the voxels of ``labelmap`` in pieces the second model does not confirm
    (``unconfirmed_pieces``); returns how many voxels were removed."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within [0, 1], got {fraction}")
    drop = unconfirmed_pieces(labelmap, confirmed, hu, geometry, labels, fraction)
    labelmap[drop] = 0
    return int(np.count_nonzero(drop))
