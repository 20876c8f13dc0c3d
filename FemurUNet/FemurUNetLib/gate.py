"""Which axial levels of a scan hold a femur: a small network that sees the whole scan at 4 mm.

The demo U-Net sees one slice, so a slice of tibia or foot can look like one of a femur. This network sees every
level of the scan at once (each level's slice encoded at 4 mm, then dilated 1-D convolutions along z: about
+-250 mm of context) and gives each level the probability that a femur crosses it. ``gate_scan`` (the default
with the demo model) empties a scan none of whose levels reaches a threshold: a lower leg, a chest. ``gate_pieces``
(measured, not used by default: MODEL_HISTORY) removes a cleaned piece only when every slice it spans is below it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .confirm import unconfirmed_pieces
from .defaults import GATE_THRESHOLD
from .errors import FemurUNetError
from .geometry import Geometry, Reorientation

GATE_KIND = "femurunet-level-gate"
GATE_SPACING_MM = 4.0
GATE_SIZE = 120                       # 480 mm square around the body
BODY_HU = -400.0
AIR_HU = -1000.0


def _area_resize(volume: torch.Tensor, size: tuple) -> torch.Tensor:
    """[Z, Y, X] float -> ``size`` (z, y, x): box averages where it shrinks, linear where it grows."""
    out = volume[None, None]
    shrink = tuple(min(a, b) for a, b in zip(out.shape[2:], size))
    if shrink != tuple(out.shape[2:]):
        out = F.adaptive_avg_pool3d(out, shrink)
    if shrink != tuple(size):
        out = F.interpolate(out, size=size, mode="trilinear", align_corners=False)
    return out[0, 0]


def gate_volume(ct: np.ndarray, spacing_xyz, chunk: int = 64) -> np.ndarray:
    """Canonical CT [z, y, x] (HU) with spacing (x, y, z) mm -> [levels, GATE_SIZE, GATE_SIZE] HU at
    GATE_SPACING_MM, centred on the body (voxels above BODY_HU), air outside the scan."""
    sx, sy, sz = (float(s) for s in spacing_xyz)
    ny = max(1, round(ct.shape[1] * sy / GATE_SPACING_MM))
    nx = max(1, round(ct.shape[2] * sx / GATE_SPACING_MM))
    planes = []
    for k in range(0, ct.shape[0], chunk):                  # in-plane first, a chunk of slices at a time
        block = torch.from_numpy(np.asarray(ct[k:k + chunk], np.float32))
        planes.append(_area_resize(block, (block.shape[0], ny, nx)))
    levels = max(1, round(ct.shape[0] * sz / GATE_SPACING_MM))
    small = _area_resize(torch.cat(planes), (levels, ny, nx)).numpy()
    return _centred(small)


def _centred(small: np.ndarray) -> np.ndarray:
    """[levels, y, x] -> [levels, GATE_SIZE, GATE_SIZE]: the body's bounding box centred, air around."""
    body = (small > BODY_HU).any(axis=0)
    ys, xs = np.nonzero(body) if body.any() else (np.array([small.shape[1] // 2]), np.array([small.shape[2] // 2]))
    out = np.full((small.shape[0], GATE_SIZE, GATE_SIZE), AIR_HU, np.float32)
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    y0, x0 = cy - GATE_SIZE // 2, cx - GATE_SIZE // 2
    src_y = slice(max(0, y0), min(small.shape[1], y0 + GATE_SIZE))
    src_x = slice(max(0, x0), min(small.shape[2], x0 + GATE_SIZE))
    out[:, src_y.start - y0:src_y.stop - y0, src_x.start - x0:src_x.stop - x0] = small[:, src_y, src_x]
    return out


def gate_inputs(volume: np.ndarray) -> torch.Tensor:
    """[levels, S, S] HU -> [levels, 2, S, S]: a bone window and a soft-tissue window, both 0..1."""
    hu = torch.as_tensor(volume, dtype=torch.float32)
    bone = ((hu + 200.0) / 1700.0).clamp(0, 1)
    soft = ((hu + 400.0) / 800.0).clamp(0, 1)
    return torch.stack([bone, soft], dim=1)


def level_targets(label: np.ndarray, levels: int) -> np.ndarray:
    """Canonical label [z, y, x] -> bool per gate level: does any femur voxel fall in the level's slab."""
    per_slice = torch.from_numpy(label.reshape(label.shape[0], -1).any(axis=1).astype(np.float32))
    slab = F.adaptive_max_pool1d(per_slice[None, None], levels)[0, 0] if levels <= len(per_slice) else \
        F.interpolate(per_slice[None, None], size=levels, mode="nearest")[0, 0]
    return slab.numpy() > 0


class LevelGate(nn.Module):
    """Slice encoder (stride-2 convolutions, average and max pooled) + dilated 1-D convolutions along z.

    Group normalisation, not batch normalisation: a batch is one scan's levels (8 of them in the shortest crops),
    whose statistics are no estimate of any other scan's; each level is normalised on its own, in training and use
    alike (gates A and B of session 38 used batch normalisation and their validation loss jumped between checks).
    Along z the scan's first and last levels are repeated beyond its ends, not zeros: where a scan cuts a femur,
    the gate sees the femur go on rather than nothing."""

    def __init__(self, width: int = 16, features: int = 96, dilations=(1, 2, 4, 8, 16, 32)):
        super().__init__()
        chans = [2, width, 2 * width, 4 * width, 4 * width]
        layers = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GroupNorm(8, b), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*layers)
        self.project = nn.Conv1d(2 * chans[-1], features, 1)
        self.context = nn.ModuleList(nn.Conv1d(features, features, 3, padding=d, dilation=d, padding_mode="replicate")
                                     for d in dilations)
        self.head = nn.Conv1d(features, 1, 1)

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        """[levels, 2, S, S] -> logits [levels] (one scan)."""
        f = self.encoder(slices)
        f = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        x = F.relu(self.project(f.t()[None]))
        for conv in self.context:
            x = x + F.relu(conv(x))
        return self.head(x)[0, 0]


@torch.no_grad()
def level_probabilities(net: LevelGate, volume: np.ndarray) -> np.ndarray:
    """Gate volume [levels, S, S] (HU) -> P(a femur crosses the level) per level."""
    net.eval()
    return torch.sigmoid(net(gate_inputs(volume))).numpy()


def at_slices(level_p: np.ndarray, slices: int) -> np.ndarray:
    """Per-level probabilities -> one per slice of a stack of ``slices``, linear between level centres."""
    slice_pos = np.arange(slices) + 0.5
    level_pos = (np.arange(len(level_p)) + 0.5) * (slices / len(level_p))
    return np.interp(slice_pos, level_pos, level_p)


def slice_probabilities(net: LevelGate, ct: np.ndarray, spacing_xyz) -> np.ndarray:
    """Canonical CT [z, y, x] -> P(femur) for each of its axial slices."""
    return at_slices(level_probabilities(net, gate_volume(ct, spacing_xyz)), ct.shape[0])


def gate_pieces(labelmap: np.ndarray, slice_p: np.ndarray, hu: np.ndarray, geometry: Geometry, labels=None,
                threshold: float = GATE_THRESHOLD) -> int:
    """Zero, in place, every cleaned piece (per side, 26-connected) none of whose voxels lies on a canonical slice
    with ``slice_p`` >= ``threshold``; returns how many voxels went."""
    reorient = Reorientation.for_geometry(geometry)
    allowed = np.zeros(labelmap.shape, dtype=bool)
    reorient.to_canonical(allowed)[np.asarray(slice_p) >= threshold] = True
    # a piece stays when any of its voxels is allowed: "confirmed" share above zero
    drop = unconfirmed_pieces(labelmap, allowed, hu, geometry, labels, fraction=np.finfo(float).tiny)
    labelmap[drop] = 0
    return int(np.count_nonzero(drop))


def gate_scan(labelmap: np.ndarray, slice_p: np.ndarray, threshold: float = GATE_THRESHOLD) -> int:
    """Zero the whole labelmap, in place, when no slice of the scan reaches ``threshold`` (the gate finds no femur
    anywhere in the scan's range); returns how many voxels went. A scan with a femur level is left as it is."""
    if np.max(slice_p, initial=0.0) >= threshold:
        return 0
    removed = int(np.count_nonzero(labelmap))
    labelmap[...] = 0
    return removed


def emptied_note(result) -> Optional[str]:
    """One line when the gate emptied a segmentation result (else None): what went, and how to keep it."""
    stats = result.stats
    if not stats.get("gated_voxels_removed"):
        return None
    ml = stats["gated_voxels_removed"] * float(np.prod(result.geometry.spacing)) / 1000.0
    return (f"no femur in this scan's range by the level gate (highest P {stats['gate_highest_p']:.3f} < "
            f"{stats['gate_threshold']:g}): {ml:.1f} ml of labels removed (--no-gate or Keep detached pieces keeps them)")


def save_gate(net: LevelGate, path, training: dict) -> None:
    """The weights and what made them, written whole or not at all."""
    path = Path(path)
    partial = path.with_name(path.name + ".part")
    torch.save({"kind": GATE_KIND, "spacing_mm": GATE_SPACING_MM, "size": GATE_SIZE,
                "state_dict": net.state_dict(), "training": training}, partial)
    partial.replace(path)


def load_gate(path) -> LevelGate:
    """A gate file -> LevelGate (eval mode, ``source_file`` set); a file that is not one fails in one line."""
    path = Path(path)
    if not path.is_file():
        raise FemurUNetError(f"{path}: gate file not found")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise FemurUNetError(f"{path}: cannot read the level gate ({exc})") from None
    if not isinstance(saved, dict) or saved.get("kind") != GATE_KIND:
        raise FemurUNetError(f"{path}: not a FemurUNet level gate file")
    if saved.get("spacing_mm") != GATE_SPACING_MM or saved.get("size") != GATE_SIZE:
        raise FemurUNetError(f"{path}: a gate for {saved.get('spacing_mm')} mm / {saved.get('size')} pixels, "
                             f"this version reads {GATE_SPACING_MM} mm / {GATE_SIZE}")
    net = LevelGate()
    net.load_state_dict(saved["state_dict"])
    net.eval()
    net.source_file = path
    net.training_record = saved.get("training", {})
    return net
