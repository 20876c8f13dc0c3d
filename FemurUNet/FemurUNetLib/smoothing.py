"""The network's probabilities smoothed along the slice axis before the threshold (``segment_volume``'s
``smooth_z_mm``).

A 2-D network sees one slice, so its errors change from slice to slice where the anatomy does not. Each canonical
axial slice's probabilities become a Gaussian average with its neighbours' (sigma in mm along the slice axis,
truncated at 3 sigma, the end slices repeated beyond the scan: scipy's ``gaussian_filter1d`` in mode 'nearest').
On slices 5 mm apart a 3 mm sigma gives each neighbour a quarter of the middle slice's weight; on 1 mm slices
it reaches 9 slices each way. Slices arrive in order, a batch at a time; a slice is finished once the slices within
its radius are known, so the memory is a batch and 2 x radius slices.
"""
from __future__ import annotations

import math
from typing import Optional

import torch


def gaussian_weights(sigma_slices: float) -> list:
    """Normalised weights of slices -radius..radius (radius = round(3 sigma)); [1.0] for sigma 0."""
    if sigma_slices <= 0:
        return [1.0]
    radius = int(3.0 * sigma_slices + 0.5)
    weights = [math.exp(-0.5 * (x / sigma_slices) ** 2) for x in range(-radius, radius + 1)]
    total = sum(weights)
    return [w / total for w in weights]


class SliceSmoother:
    """``push(first, probs)`` takes the next slices in order ((N, C, H, W) probabilities of slices first..first+N-1)
    and returns (first finished slice, their smoothed probabilities), or None while none is finished."""

    def __init__(self, smooth_z_mm: float, slice_spacing_mm: float, total: int):
        self.weights = gaussian_weights(smooth_z_mm / slice_spacing_mm if smooth_z_mm > 0 else 0.0)
        self.radius = len(self.weights) // 2
        self.total = total
        self.kept: Optional[torch.Tensor] = None       # slices kept_first.. still needed
        self.kept_first = 0
        self.done = 0                                  # slices below this were returned

    def push(self, first: int, probs: torch.Tensor):
        if self.radius == 0:
            return first, probs
        self.kept = probs if self.kept is None else torch.cat([self.kept.to(probs.device), probs])
        known = first + probs.shape[0]
        ready = self.total if known >= self.total else known - self.radius
        if ready <= self.done:
            return None
        n = ready - self.done
        around = torch.arange(self.done - self.radius, ready + self.radius, device=probs.device)
        window = self.kept[around.clamp(0, self.total - 1) - self.kept_first]    # the end slices repeated
        smoothed = window[:n] * self.weights[0]
        for d, w in enumerate(self.weights[1:], start=1):
            smoothed.add_(window[d:d + n], alpha=w)
        start, self.done = self.done, ready
        drop = max(0, ready - self.radius - self.kept_first)
        self.kept, self.kept_first = self.kept[drop:], self.kept_first + drop
        return start, smoothed
