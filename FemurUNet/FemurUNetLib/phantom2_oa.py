"""Osteoarthritic hips for phantom v2: the bone changes of hip osteoarthritis, opt-in.

Hip osteoarthritis is common at the ages that get pelvic CT (the phantom narrows 30 % of hip joints for it), and
on CT its bone changes sit where the femoral head meets the acetabulum: subchondral sclerosis (bone under the
weight-bearing surfaces of the head and of the acetabular roof as dense as cortex, several mm deep) and
subchondral cysts (fluid-filled holes in that bone). A dense head top under a dense acetabular roof looks like
one bone. Only HU inside the femurs and hip bones change, so the label is the same voxel for voxel.

Opt-in (``generate_case(seed, oa=True)``: both hips; ``femurunet sample --oa``; training: ``phantom_stream
--oa-hips SHARE``): drawn from the seed's own stream, so every case made without it is the same as before.
Not modelled: osteophytes (they change the femur's shape) and the joint space (the anatomy draws it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .phantom2_anatomy import SIDES

DEPTH_MM = (3.0, 15.0)          # sclerosis depth under the joint surfaces
SCLEROSIS_HU = (600.0, 1400.0)
CONE_DEG = (40.0, 80.0)         # half-angle of the weight-bearing zone about the load axis
LOAD_TILT_DEG = 15.0            # the load axis: superior, tilted lateral
MAX_CYSTS = 3                   # per hip
CYST_RADIUS_MM = (2.0, 7.0)
CYST_HU = (0.0, 40.0)


@dataclass(frozen=True)
class Cyst:
    direction: tuple            # unit vector from the head centre (anatomical frame)
    radius: float
    hu: float
    in_femur: bool              # in the head (else in the acetabular roof)


@dataclass(frozen=True)
class HipOA:
    depth: float
    hu: float
    cone_deg: float
    cysts: tuple


def load_axis(side: str) -> np.ndarray:
    """Unit vector (x, y, z; anatomical LPS frame, z superior) of the hip's weight-bearing zone."""
    tilt = math.radians(LOAD_TILT_DEG)
    return np.array([SIDES[side] * math.sin(tilt), 0.0, math.cos(tilt)])


def draw_osteoarthritis(rng) -> dict:
    """{side: HipOA}: sclerosis depth, value and zone, and 0-3 cysts, per hip."""
    out = {}
    for side in SIDES:
        depth, hu, cone = (float(rng.uniform(*r)) for r in (DEPTH_MM, SCLEROSIS_HU, CONE_DEG))
        cysts = []
        for _ in range(int(rng.integers(0, MAX_CYSTS + 1))):
            polar, azimuth = math.radians(cone) * 0.8 * float(rng.random()), 2 * math.pi * float(rng.random())
            cysts.append(Cyst(tuple(_turned(load_axis(side), polar, azimuth)), float(rng.uniform(*CYST_RADIUS_MM)),
                              float(rng.uniform(*CYST_HU)), bool(rng.random() < 0.5)))
        out[side] = HipOA(depth, hu, cone, tuple(cysts))
    return out


def _turned(axis: np.ndarray, polar: float, azimuth: float) -> np.ndarray:
    """The unit vector ``polar`` radians from ``axis``, at ``azimuth`` about it."""
    u = np.cross(axis, [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    w = np.cross(axis, u)
    return math.cos(polar) * axis + math.sin(polar) * (math.cos(azimuth) * u + math.sin(azimuth) * w)


def oa_interior(interior, q, in_femur: bool, oa: HipOA, side: str, centre, head_radius: float, gap: float, tex):
    """The interior HU of a femur (``in_femur``) or hip bone at anatomical points ``q`` (x, y, z arrays) with the
    hip's osteoarthritis: sclerosis in the weight-bearing zone within ``oa.depth`` mm of the joint surface (the
    head's sphere of ``head_radius`` about ``centre``; the socket ``gap`` mm beyond it), then the cysts."""
    v = [c - np.float32(x) for c, x in zip(q, centre)]
    r = np.sqrt(sum(c * c for c in v)) + np.float32(1e-3)
    axis = load_axis(side).astype(np.float32)
    cone = (v[0] * axis[0] + v[1] * axis[1] + v[2] * axis[2]) > r * np.float32(math.cos(math.radians(oa.cone_deg)))
    surface = np.float32(head_radius if in_femur else head_radius + gap)
    if in_femur:
        zone = cone & (r > surface - np.float32(oa.depth)) & (r < surface + np.float32(1.0))
    else:
        zone = cone & (r < surface + np.float32(oa.depth))
    out = np.where(zone, np.maximum(interior, np.float32(oa.hu) * (1.0 + 0.1 * tex)), interior)
    inward = -0.5 if in_femur else 0.5
    for cyst in (c for c in oa.cysts if c.in_femur == in_femur):
        at = [np.float32(d * (surface + inward * oa.depth)) for d in cyst.direction]
        inside = sum((c - a) ** 2 for c, a in zip(v, at)) < np.float32(cyst.radius ** 2)
        out = np.where(inside, np.float32(cyst.hu) + 4.0 * tex, out)
    return out.astype(np.float32, copy=False)
