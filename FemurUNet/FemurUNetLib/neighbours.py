"""Neighbouring slices as input channels (a 2.5-D model): with each canonical axial slice, the slices at fixed
distances in mm above and below it (``slice_offsets_mm`` in the model's metadata, one per input channel).

Each slice is made into its model picture once (window, pad, resize: what a one-slice model is given); a channel
at a distance between two slices is the linear blend of their two pictures, and beyond the first or last slice the
edge slice's picture is used. Inference and the phantom training stream both take their inputs from here.
A one-channel model's offsets are ``(0.0,)``: the slice's own picture.
"""
from __future__ import annotations

import math

import numpy as np
import torch

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
    """Where the input channels of canonical slices ``ks`` come from, for ``n_slices`` slices ``spacing_mm`` apart."""

    def __init__(self, offsets_mm, spacing_mm: float, n_slices: int):
        self.offsets = tuple(float(v) for v in offsets_mm)
        self.steps = np.asarray(self.offsets) / float(spacing_mm)
        self.n_slices = int(n_slices)

    def positions(self, ks) -> tuple:
        """(lower slice, upper slice, weight of the upper), each (n, C), for slice indices ``ks``; where a channel
        falls on a slice, both are that slice."""
        at = np.clip(np.asarray(ks, dtype=np.float64)[:, None] + self.steps[None, :], 0, self.n_slices - 1)
        lower = np.floor(at).astype(np.int64)
        upper = np.where(at > lower, lower + 1, lower)
        return lower, upper, (at - lower).astype(np.float32)

    def blend(self, pictures, ks) -> torch.Tensor:
        """The (n, C, S, S) inputs of slices ``ks`` from ``pictures[k]``, each slice's (1, S, S) model picture
        (a (K, 1, S, S) tensor, or a ``PictureCache``'s dict); float."""
        lower, upper, weight = self.positions(np.arange(self.n_slices)[ks] if isinstance(ks, slice) else ks)

        def gather(index):
            picked = torch.cat([pictures[int(k)] for k in index.ravel()]).float()
            return picked.view(*index.shape, *picked.shape[-2:])

        low = gather(lower)
        if weight.any():                                  # some channel between two slices
            low = torch.lerp(low, gather(upper), torch.from_numpy(weight).to(low.device)[:, :, None, None])
        return low


class PictureCache:
    """Model inputs of canonical slices ``ks`` (asked for in increasing order), each slice's picture made once by
    ``make(indices)`` -> (m, 1, S, S), at most ``chunk`` slices at a time; pictures below the lowest slice still
    needed are let go."""

    def __init__(self, stack: SliceStack, make, chunk: int):
        self.stack, self.make, self.chunk = stack, make, max(1, int(chunk))
        self.pictures: dict = {}

    def inputs(self, ks) -> torch.Tensor:
        lower, upper, _ = self.stack.positions(np.asarray(ks))
        needed = np.unique(np.concatenate([lower.ravel(), upper.ravel()]))
        for k in [k for k in self.pictures if k < needed[0]]:
            del self.pictures[k]
        missing = [int(k) for k in needed if int(k) not in self.pictures]
        for start in range(0, len(missing), self.chunk):
            part = missing[start:start + self.chunk]
            self.pictures.update(zip(part, self.make(np.asarray(part))))
        return self.stack.blend(self.pictures, ks)
