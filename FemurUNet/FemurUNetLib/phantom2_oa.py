"""Osteoarthritic hips for phantom v2: the bone changes of hip osteoarthritis, opt-in.

Hip osteoarthritis is common at the ages that get pelvic CT (the phantom narrows 30 % of hip joints for it), and
on CT its bone changes sit where the femoral head meets the acetabulum: subchondral sclerosis (bone under the
weight-bearing surfaces of the head and of the acetabular roof as dense as cortex, several mm deep), subchondral
cysts (fluid-filled holes in that bone) and osteophytes: bony lumps at the margin of the head's joint surface
(femur, so the label grows with them) and at the acetabular rim (hip bone, reaching over the head). A dense head
top under a dense acetabular roof looks like one bone.

Opt-in (``generate_case(seed, oa=True)``: both hips; ``femurunet sample --oa``; training: ``phantom_stream
--oa-hips SHARE``): drawn from the seed's own stream, so every case made without it is the same as before.
Not modelled: the joint space (the anatomy draws it) and a flattened, mushroom-shaped head.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

from .phantom2_anatomy import SIDES
from .phantom2_body import Item
from .sdf import _sphere

DEPTH_MM = (3.0, 15.0)          # sclerosis depth under the joint surfaces
SCLEROSIS_HU = (600.0, 1400.0)
CONE_DEG = (40.0, 80.0)         # half-angle of the weight-bearing zone about the load axis
LOAD_TILT_DEG = 15.0            # the load axis: superior, tilted lateral
MAX_CYSTS = 3                   # per hip
CYST_RADIUS_MM = (2.0, 7.0)
CYST_HU = (0.0, 40.0)
OSTEOPHYTE_P = {"head": 0.85, "rim": 0.6}   # share of osteoarthritic hips with osteophytes there
MAX_BEADS = 24                  # per arc: beads about 0.8 of a radius apart, so they join into a ridge
HEAD_ARC_DEG = (60.0, 300.0)    # of the head's margin, about the neck axis
RIM_ARC_DEG = (20.0, 100.0)     # of the acetabular rim, about superior, centred within 60 deg of lateral
BEAD_RADIUS_MM = (1.5, 6.5)     # the largest: 2 + 4.5 x the hip's drawn severity
BEAD_OUT = (0.4, 0.9)           # share of a head bead's radius standing beyond the bone surface


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
    osteophytes: tuple = ()     # Beads on this side (femur and hip bone)


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


@dataclass(frozen=True)
class Bead:
    """An osteophyte: a sphere of bone (anatomical frame, mm) on ``bone`` (``femur_left``, ``hip_right``, ...)."""
    bone: str
    centre: tuple
    radius: float


def osteoarthritic(scene, rng) -> None:
    """Makes both hips of ``scene`` osteoarthritic: ``scene.oa`` (bone values, read by the renderer) and the
    osteophytes (femur items grow, hip-bone beads join the items). The bone values are drawn first, so they are
    the same as without the osteophytes; every draw is made before any geometry is looked at."""
    scene.oa = draw_osteoarthritis(rng)
    beads = draw_osteophytes(rng, scene.ind)
    scene.oa = {side: replace(hip, osteophytes=tuple(b for b in beads if b.bone.endswith(side)))
                for side, hip in scene.oa.items()}
    add_osteophytes(scene, beads)


def draw_osteophytes(rng, ind) -> tuple:
    """Beads: per hip an arc of them at the femoral head's margin and one at the acetabular rim (each present in an
    OSTEOPHYTE_P share); their size grows with the hip's drawn severity."""
    beads = []
    for side in SIDES:
        severity = float(rng.random())
        largest = BEAD_RADIUS_MM[0] + 0.5 + (BEAD_RADIUS_MM[1] - BEAD_RADIUS_MM[0] - 0.5) * severity
        for where, arc_range in (("head", HEAD_ARC_DEG), ("rim", RIM_ARC_DEG)):
            present = rng.random() < OSTEOPHYTE_P[where]
            start, arc = float(rng.uniform(0.0, 360.0)), float(rng.uniform(*arc_range))
            radii = rng.uniform(BEAD_RADIUS_MM[0], largest, MAX_BEADS)
            out, onto_head = rng.uniform(*BEAD_OUT, MAX_BEADS), rng.uniform(0.0, 10.0, MAX_BEADS)
            if not present:
                continue
            ring = ind.head_radius * (0.85 if where == "head" else 1.0)
            n = min(MAX_BEADS, max(1, math.ceil(math.radians(arc) * ring / (0.8 * float(radii.mean())))))
            azimuths = (start if where == "head" else (start % 120.0) - 60.0) + arc * np.linspace(-0.5, 0.5, n)
            beads += (_head_beads(ind, side, azimuths, onto_head[:n], radii[:n], out[:n]) if where == "head"
                      else _rim_beads(ind, side, azimuths, radii[:n]))
    return tuple(beads)


def _frame(axis, towards) -> tuple:
    """Unit vectors u (``towards`` made normal to ``axis``) and w = axis x u."""
    u = np.asarray(towards, float) - np.dot(towards, axis) * axis
    u /= np.linalg.norm(u)
    return u, np.cross(axis, u)


def _rays(centre, axis, u, w, azimuth_deg, polar_deg, radii) -> tuple:
    """Points (x, y, z arrays of shape (polar, radius)) on rays from ``centre`` at ``polar_deg`` from ``axis``."""
    a, p = math.radians(azimuth_deg), np.radians(polar_deg)[:, None, None]
    d = np.cos(p) * axis + np.sin(p) * (math.cos(a) * u + math.sin(a) * w)          # (polar, 1, 3)
    pts = np.asarray(centre, float) + np.asarray(radii, float)[None, :, None] * d
    return tuple(pts[..., c] for c in range(3)), d[:, 0, :]


def _head_beads(ind, side, azimuths, onto_head, radii, out) -> list:
    """Beads on the head's surface just beyond where the neck meets it (the first polar angle from the neck axis
    whose ray leaves the bone within 4 mm of the head's sphere), standing ``out`` of their radius beyond it."""
    c, big = ind.marks[f"head_{side}"], ind.head_radius
    neck = ind.marks[f"thigh_top_{side}"] - c
    neck /= np.linalg.norm(neck)
    u, w = _frame(neck, [0.0, 0.0, 1.0])
    polar, radius = np.arange(20.0, 112.5, 2.5), np.arange(big - 8.0, big + 15.0, 0.5)
    beads = []
    for azimuth, shift, r, o in zip(azimuths, onto_head, radii, out):
        pts, dirs = _rays(c, neck, u, w, azimuth, polar, radius)
        outside = ind.bone_distance(f"femur_{side}", pts) > 0
        surface = np.where(outside.any(1) & ~outside[:, 0], radius[np.argmax(outside, 1)], np.inf)
        head = np.nonzero(surface <= big + 4.0)[0]
        if len(head):
            n = min(int(head[0] + round(shift / 2.5)), len(polar) - 1)
            if np.isfinite(surface[n]):
                beads.append(Bead(f"femur_{side}", tuple(c + (surface[n] + (o - 1.0) * r) * dirs[n]), float(r)))
    return beads


def _rim_beads(ind, side, azimuths, radii) -> list:
    """Beads at the acetabular rim: on rays from the head centre at polar angles from superior (azimuth 0: lateral),
    at the end of the longest run of angles with hip bone 5 mm beyond the joint space (the roof); each bead's near
    side stays beyond the joint space."""
    c, big, gap = ind.marks[f"head_{side}"], ind.head_radius, ind.hip_gap[side]
    axis = np.array([0.0, 0.0, 1.0])
    u, w = _frame(axis, [SIDES[side], 0.0, 0.0])
    polar = np.arange(0.0, 122.5, 2.5)
    beads = []
    for azimuth, r in zip(azimuths, radii):
        pts, dirs = _rays(c, axis, u, w, azimuth, polar, [big + gap + 5.0])
        covered = np.concatenate([[False], ind.bone_distance(f"hip_{side}", pts)[:, 0] < 0, [False]])
        starts, ends = np.nonzero(~covered[:-1] & covered[1:])[0], np.nonzero(covered[:-1] & ~covered[1:])[0]
        if len(starts) and ends[np.argmax(ends - starts)] < len(polar):
            n = int(ends[np.argmax(ends - starts)])
            beads.append(Bead(f"hip_{side}", tuple(c + (big + gap + r + 0.3) * dirs[n]), float(r)))
    return beads


def beads_distance(q, beads) -> np.ndarray:
    """Signed distance (mm) of the union of ``beads`` at anatomical points ``q`` (x, y, z arrays)."""
    return functools.reduce(np.minimum, (_sphere(q, b.centre, b.radius) for b in beads))


def add_osteophytes(scene, beads) -> None:
    """The femur items' distance becomes the union with their beads (so their label grows with them); each hip
    bead is an item of that hip bone's material painted before the femurs (a femur wins where they meet)."""
    for side in SIDES:
        on_femur = [b for b in beads if b.bone == f"femur_{side}"]
        at = scene.item_at(f"femur_{side}")
        if on_femur:
            femur = scene.items[at]
            lo = np.minimum(femur.lo, np.min([np.subtract(b.centre, b.radius + 1.0) for b in on_femur], 0))
            hi = np.maximum(femur.hi, np.max([np.add(b.centre, b.radius + 1.0) for b in on_femur], 0))
            grown = lambda q, d=femur.distance, o=tuple(on_femur): np.minimum(d(q), beads_distance(q, o))
            scene.items[at] = replace(femur, lo=lo, hi=hi, distance=grown)
        for n, b in enumerate(b for b in beads if b.bone == f"hip_{side}"):
            scene.items.insert(at, Item(f"osteophyte_hip_{side}{n}", np.subtract(b.centre, b.radius + 1.0),
                                        np.add(b.centre, b.radius + 1.0),
                                        lambda q, o=(b,): beads_distance(q, o), f"bone:hip_{side}"))
