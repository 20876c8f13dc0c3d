"""Slice preprocessing shared by inference and the training export: HU window, square pad, resize.

Everything works on batches of slices ``(N, H, W)`` as torch tensors on any device, vectorised.
The window quantises to 8-bit steps, so inference sees exactly the values the exported PNGs hold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .defaults import DEFAULT_INPUT_SIZE


def window_hu(hu: torch.Tensor, center: float, width: float) -> torch.Tensor:
    """HU -> [0, 1] float32 over [center - width/2, center + width/2], rounded to 1/255 steps."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = center - width / 2.0
    x = (hu.to(torch.float32) - low) * (255.0 / width)
    return x.clamp_(0.0, 255.0).round_().mul_(1.0 / 255.0)


def window_to_uint8(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """The same window as 8-bit pixels (what the exported PNGs hold)."""
    x = window_hu(torch.from_numpy(np.ascontiguousarray(hu)), center, width)
    return (x * 255.0).round_().to(torch.uint8).numpy()


def min_side(min_field_mm: float, spacing) -> int:
    """Side (pixels) of the square that holds a field of view of ``min_field_mm`` at in-plane ``spacing`` (x, y)
    mm; 0 when ``min_field_mm`` is 0 (off)."""
    if not min_field_mm:
        return 0
    return int(math.ceil(min_field_mm / min(float(spacing[0]), float(spacing[1])) - 1e-6))


@dataclass(frozen=True)
class SquarePad:
    """Centred zero padding of an H x W slice to a square of side ``side``: the larger of H and W, or
    ``min_side`` when that is larger (a small field of view padded with air to the model's minimum field)."""
    height: int
    width: int
    min_side: int = 0

    @property
    def side(self) -> int:
        return max(self.height, self.width, self.min_side)

    @property
    def pads(self) -> tuple:  # F.pad order: left, right, top, bottom
        dh, dw = self.side - self.height, self.side - self.width
        return (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)


def to_model_input(slices: torch.Tensor, size: int = DEFAULT_INPUT_SIZE, min_side: int = 0) -> torch.Tensor:
    """(N, H, W) in [0, 1] -> (N, 1, size, size), or (N, C, H, W) -> (N, C, size, size): centred pad to square
    (of at least ``min_side``), then bilinear resize.

    Downsampling is antialiased (like scikit-image's ``resize``), so thin cortex is not aliased away.
    """
    h, w = slices.shape[-2:]
    pad = SquarePad(h, w, min_side)
    x = slices.unsqueeze(1) if slices.ndim == 3 else slices
    if pad.side != h or pad.side != w:
        x = F.pad(x, pad.pads, value=0.0)
    if pad.side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=pad.side > size)
    return x


def from_model_output(probs: torch.Tensor, height: int, width: int, min_side: int = 0) -> torch.Tensor:
    """(N, C, size, size) probabilities -> (N, C, height, width) on the slice grid (inverse of to_model_input).

    Bilinear point sampling at the original voxel centres (no antialiasing): a voxel gets the probability
    at its own centre, not a blur of its neighbours'.
    """
    pad = SquarePad(height, width, min_side)
    x = probs
    if x.shape[-1] != pad.side:
        x = F.interpolate(x, size=(pad.side, pad.side), mode="bilinear", align_corners=False)
    left, _, top, _ = pad.pads
    return x[..., top:top + height, left:left + width]


def labels_from_probabilities(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W) uint8: 1-channel: prob > threshold; C-channel: 1 + argmax where max > threshold."""
    if probs.shape[1] == 1:
        return (probs[:, 0] > threshold).to(torch.uint8)
    best, index = probs.max(dim=1)
    return torch.where(best > threshold, index + 1, torch.zeros_like(index)).to(torch.uint8)
