"""Neighbouring slices as input channels (a 2.5-D model): with each canonical axial slice, the slices at fixed
distances in mm above and below it (``slice_offsets_mm`` in the model's metadata, one per input channel).

A distance between two slices is linearly interpolated (in HU, before the window); beyond the first or last slice
the edge slice is repeated. Inference and the phantom training stream both take their inputs from here.
A one-channel model's offsets are ``(0.0,)``: the slice itself, passed through untouched.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import FemurUNetError

MAX_OFFSET_MM = 100.0
ONE_SLICE = (0.0,)


def offsets_problem(meta: dict):
    """Why a model's ``slice_offsets_mm`` cannot be used (one line), or None. Absent: one slice, so only a
    one-channel model may leave it out; a model with more input channels is loadable but cannot segment."""
    offsets = meta.get("slice_offsets_mm")
    if offsets is None:
        return None
    if not isinstance(offsets, (list, tuple)) or not all(isinstance(v, (int, float)) for v in offsets):
        return f"slice_offsets_mm {offsets!r} is not a list of numbers"
    if len(offsets) != meta.get("in_channels"):
        return f"slice_offsets_mm has {len(offsets)} entries for {meta.get('in_channels')} input channels"
    if not _distinct_mm(offsets):
        return f"slice_offsets_mm {list(offsets)} {DISTINCT_MM}"
    return None


DISTINCT_MM = f"must be distinct numbers of mm within +-{MAX_OFFSET_MM:g}"


def _distinct_mm(offsets) -> bool:
    return all(math.isfinite(v) and abs(v) <= MAX_OFFSET_MM for v in offsets) and len(set(offsets)) == len(offsets)


def model_offsets(meta: dict) -> tuple:
    """The offsets a model's inputs are taken at; a one-line error where FemurUNet cannot feed the model."""
    problem = offsets_problem(meta)
    if problem:
        raise FemurUNetError(f"the model's {problem}")
    offsets = meta.get("slice_offsets_mm")
    if offsets is None:
        if meta.get("in_channels", 1) != 1:
            raise FemurUNetError(f"the model takes {meta['in_channels']} input channels but names no "
                                 f"slice_offsets_mm: FemurUNet feeds one CT slice, or the slices at the offsets "
                                 f"a model names")
        return ONE_SLICE
    return tuple(float(v) for v in offsets)


def parse_offsets(text: str) -> tuple:
    """``-24,-8,0,8,24`` -> (-24.0, -8.0, 0.0, 8.0, 24.0), checked as model metadata is (one line on error)."""
    try:
        offsets = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise FemurUNetError(f"slice offsets {text!r}: expected numbers of mm separated by commas") from None
    if not _distinct_mm(offsets) or 0.0 not in offsets:
        problem = DISTINCT_MM if not _distinct_mm(offsets) else "must include 0 (the slice itself)"
        raise FemurUNetError(f"slice offsets {text!r}: {problem}")
    return offsets


class SliceStack:
    """The input slices of canonical slices ``ks`` of a (K, H, W) volume whose slices are ``spacing_mm`` apart."""

    def __init__(self, offsets_mm, spacing_mm: float, n_slices: int):
        self.offsets = tuple(float(v) for v in offsets_mm)
        self.steps = np.asarray(self.offsets) / float(spacing_mm)
        self.n_slices = int(n_slices)

    @property
    def identity(self) -> bool:
        return self.offsets == ONE_SLICE

    def positions(self, ks) -> tuple:
        """(lower slice, upper slice, weight of the upper), each (n, C), for slice indices ``ks``."""
        at = np.clip(np.asarray(ks, dtype=np.float64)[:, None] + self.steps[None, :], 0, self.n_slices - 1)
        lower = np.floor(at).astype(np.int64)
        upper = np.minimum(lower + 1, self.n_slices - 1)
        return lower, upper, (at - lower).astype(np.float32)

    def take(self, volume: np.ndarray, ks):
        """``volume[ks]`` (n, H, W) as stored for a one-slice model; else (n, C, H, W) float32 HU."""
        if self.identity:
            return volume[ks]
        ks = np.arange(self.n_slices)[ks] if isinstance(ks, slice) else np.asarray(ks)
        lower, upper, weight = self.positions(ks)
        low = volume[lower.ravel()].astype(np.float32).reshape(*lower.shape, *volume.shape[1:])
        high = volume[upper.ravel()].astype(np.float32).reshape(*upper.shape, *volume.shape[1:])
        w = weight[:, :, None, None]
        return low * (1.0 - w) + high * w
