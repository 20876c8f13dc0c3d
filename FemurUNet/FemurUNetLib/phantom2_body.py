"""Phantom v2 soft tissue, organs, vessels, spine, ribs, arms and implants: the scene around the real bones.

Everything is a signed-distance function (mm, negative inside) of anatomical-frame points (see
``phantom2_anatomy``), drawn per case from physiological ranges. ``Scene.objects`` lists the compact
structures as ``Item``s (bounds, distance function, material), painted in order after the body wall.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .phantom2_anatomy import SIDES, Individual
from .phantom2_feet import soft_tissue_box, soft_tissue_distance
from .sdf import _capsule, _smin


@dataclass
class Item:
    name: str
    lo: np.ndarray
    hi: np.ndarray
    distance: Callable          # q -> d
    material: str               # key of Scene.hu, or "bone:<name>" / "metal"
    label: int = 0              # femur label value painted where d < 0
    streaks: bool = False


@dataclass
class Scene:
    ind: Individual
    hu: dict
    body: dict
    items: list = field(default_factory=list)
    metal_points: list = field(default_factory=list)   # anatomical points that emit streaks
    flags: dict = field(default_factory=dict)
    oa: dict = field(default_factory=dict)             # side -> phantom2_oa.HipOA: osteoarthritic hips (opt-in)

    def item_at(self, name: str) -> int:
        """Index in ``items`` of the item called ``name``."""
        return next(n for n, item in enumerate(self.items) if item.name == name)


def _u(rng, a, b):
    return float(rng.uniform(a, b))


def _knots(z, zs, vs):
    return np.interp(z, zs, vs).astype(np.float32)


def ellipse_distance(dx, dy, a, b):
    """Approximate distance to an axis-aligned ellipse (a, b may be arrays)."""
    x, y = dx / a, dy / b
    k0 = np.sqrt(x * x + y * y)
    k1 = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


class _polyline:
    """Distance to a chain of tapered capsules through ``points``; ``parts``: (lo, hi, distance) of each capsule,
    its box holding it (so a renderer may evaluate each within its box only)."""

    def __init__(self, points, radii):
        self.parts = [(*_box_of([p0, p1], max(r0, r1)), lambda q, a=p0, b=p1, r=r0, s=r1: _capsule(q, a, b, r, s))
                      for p0, p1, r0, r1 in zip(points[:-1], points[1:], radii[:-1], radii[1:])]

    def __call__(self, q):
        d = None
        for _, _, distance in self.parts:
            part = distance(q)
            d = part if d is None else np.minimum(d, part)
        return d


def _box_of(points, radius):
    p = np.asarray(points, float)
    return p.min(0) - radius, p.max(0) + radius


# --- tissue values ------------------------------------------------------------------------------------------
def draw_hu(rng) -> dict:
    """Tissue values (HU) of one individual; ``head_density`` is the femoral head's trabecular factor (drawn where an
    unused cartilage value was, so every seed keeps the draws after it)."""
    phase = rng.choice(["none", "arterial", "venous"], p=[0.4, 0.3, 0.3])
    artery = {"none": _u(rng, 35, 55), "arterial": _u(rng, 220, 450), "venous": _u(rng, 130, 200)}[phase]
    vein = {"none": _u(rng, 35, 55), "arterial": _u(rng, 60, 140), "venous": _u(rng, 130, 210)}[phase]
    porotic = rng.random() < 0.25
    return {"phase": phase, "air": -1000.0, "fat": _u(rng, -125, -80), "muscle": _u(rng, 30, 65),
            "skin": _u(rng, 20, 60), "visceral": _u(rng, -115, -70), "artery": artery, "vein": vein,
            "urine": _u(rng, 0, 20) if rng.random() < 0.7 else _u(rng, 150, 900),
            "organ": _u(rng, 40, 70) if phase == "none" else _u(rng, 80, 140),
            "kidney": _u(rng, 30, 45) if phase == "none" else _u(rng, 150, 260),
            "bowel_wall": _u(rng, 30, 60), "fluid": _u(rng, 0, 25), "oral": _u(rng, 150, 450),
            "stool": _u(rng, -60, 40), "lung": _u(rng, -900, -780), "disc": _u(rng, 70, 110),
            "head_density": _u(rng, 1.0, 1.5), "tendon": _u(rng, 65, 110), "csf": _u(rng, 0, 20),
            "metal": _u(rng, 2500, 3071),
            "cortex": _u(rng, 650, 1200) if porotic else _u(rng, 900, 1850),
            "trabecular": _u(rng, 60, 150) if porotic else _u(rng, 150, 400),
            "canal": _u(rng, -90, 30), "porotic": porotic,
            "table_shell": _u(rng, 100, 400), "table_core": _u(rng, -950, -750)}


# --- body wall --------------------------------------------------------------------------------------------
def draw_body(rng, ind: Individual) -> dict:
    m = ind.marks
    hw = m["pelvis_halfwidth"]
    crest = 0.95 * float(ind.bone_bounds("hip_left")[1][2])
    fat = _u(rng, 4, 45) if rng.random() < 0.8 else _u(rng, 45, 75)
    zs = [-110.0, 0.0, crest, crest + 180.0, crest + 450.0]
    sx = [hw + _u(rng, 25, 45), hw + _u(rng, 30, 55), hw + _u(rng, 0, 30), hw * _u(rng, 0.85, 1.05),
          _u(rng, 140, 185)]
    sy = [_u(rng, 95, 125), _u(rng, 105, 135), _u(rng, 90, 130), _u(rng, 85, 130), _u(rng, 95, 125)]
    grow = 0.6 * fat
    back = max(sy) + grow + _u(rng, 8, 25)
    body = {"fat": fat, "leg_fat": fat * _u(rng, 0.4, 0.9), "crotch": _u(rng, -95, -65),
            "zs": zs, "sx": [s + grow for s in sx], "sy": [s + grow for s in sy],
            "table": back + 9.0 if rng.random() < 0.85 else None, "cx": _u(rng, -5, 5),
            "shaft_cortex": _u(rng, 3.5, 7.0), "end_cortex": _u(rng, 0.35, 1.3), "cy": _u(rng, 5, 25),
            "wall": _u(rng, 8, 18), "crest": crest,
            "thigh_r": (_u(rng, 70, 95) + 0.6 * fat, _u(rng, 45, 58) + 0.3 * fat),
            "calf_r": (_u(rng, 45, 55), _u(rng, 50, 68), _u(rng, 28, 36)),
            "diaphragm": crest + _u(rng, 130, 190), "septa": {s: rng.uniform(0, 2 * math.pi, 4) for s in SIDES}}
    body.update(true_pelvis(rng, ind))
    return body


def true_pelvis(rng, ind: Individual) -> dict:
    """The lesser pelvis: medial to the acetabula, behind their muscles (obturator internus and the acetabular
    wall, 15-28 mm); the hip joints themselves sit in muscle. ``hip_roof``: where the cavity starts to widen
    toward the false pelvis (above the femoral heads)."""
    m = ind.marks
    half = 0.5 * float(m["head_left"][0] - m["head_right"][0])
    roof = 0.5 * float(m["head_left"][2] + m["head_right"][2]) + ind.head_radius
    return {"true_pelvis": half - ind.head_radius - _u(rng, 15, 28), "hip_roof": roof + _u(rng, 5, 20)}


def trunk_distance(q, body) -> np.ndarray:
    z = q[2]
    a, b = _knots(z, body["zs"], body["sx"]), _knots(z, body["zs"], body["sy"])
    d = ellipse_distance(q[0] - body["cx"], q[1] - body["cy"], a, b)
    d = np.maximum(d, q[1] - (body["cy"] + 0.85 * b))          # flat back
    return np.maximum(d, body["crotch"] - z)


def _leg_axis(z, top, bottom):
    t = np.clip((top[2] - z) / max(top[2] - bottom[2], 1.0), 0.0, 1.0)
    return top[0] + t * (bottom[0] - top[0]), top[1] + t * (bottom[1] - top[1]), t


def _thigh(q, top, knee, body, sign) -> np.ndarray:
    x, y, t = _leg_axis(q[2], top, knee)
    r = body["thigh_r"][0] + t * (body["thigh_r"][1] - body["thigh_r"][0])
    thigh = np.hypot(q[0] - (x - sign * 12.0 * (1 - t)), q[1] - (y + 18.0 * (1 - t) + 8.0)) - r
    return np.maximum(thigh, np.maximum(knee[2] - 20.0 - q[2], q[2] - top[2] - 50.0))


def _calf(q, knee, ankle, body, side) -> np.ndarray:
    """The calf's tube down to 15 mm below the ankle, joined by the foot (``body["feet"]``) where it is drawn."""
    x, y, t = _leg_axis(q[2], knee, ankle)
    calf_r = body["calf_r"]
    r = np.where(t < 0.3, calf_r[0] + (calf_r[1] - calf_r[0]) * t / 0.3,
                 calf_r[1] + (calf_r[2] - calf_r[1]) * (t - 0.3) / 0.7)
    calf = np.hypot(q[0] - x, (q[1] - (y + 0.45 * r)) * 0.9) - r
    calf = np.maximum(calf, np.maximum(q[2] - knee[2] - 20.0, ankle[2] - 15.0 - q[2]))
    foot = body.get("feet", {}).get(side)
    if foot is None:
        return calf
    return _update_where(q[2] < foot.top_z, q, calf, lambda p, c: np.minimum(c, soft_tissue_distance(p, foot)))


def _update_where(mask, q, values, update) -> np.ndarray:
    """``values`` with ``update(points, values)`` applied at the points of ``q`` where ``mask`` holds (elementwise, so
    the same bits as applying it everywhere and selecting); ``values`` itself is not changed."""
    if not mask.any():
        return values
    if mask.all():
        return update(q, values)
    out = values.copy()
    out[mask] = update(tuple(c[mask] for c in q), values[mask])
    return out


def _union_where_needed(q, known, other, bound, known_first) -> np.ndarray:
    """``np.minimum`` of ``known`` and ``other(q)`` (thigh first), where ``other >= bound`` everywhere: ``other`` is
    evaluated only at the points where ``known`` reaches the bound (elementwise, so the same bits)."""
    pair = lambda a, b: np.minimum(a, b) if known_first else np.minimum(b, a)
    return _update_where(known >= bound, q, known, lambda p, k: pair(k, other(p)))


def leg_distance(q, ind: Individual, body, side) -> np.ndarray:
    """Thigh and calf around the posed femur and tibia axes (a tube per segment, radius along the leg)."""
    m, sign = ind.marks, SIDES[side]
    top, knee, ankle = m[f"thigh_top_{side}"], m[f"knee_{side}"], m[f"ankle_{side}"]
    z_lo, z_hi = float(q[2].min()), float(q[2].max())
    above_knee = z_lo - knee[2] - 20.0          # the calf is cut off above the knee: calf >= this everywhere
    if above_knee > 0:
        return _union_where_needed(q, _thigh(q, top, knee, body, sign), lambda p: _calf(p, knee, ankle, body, side),
                                   above_knee, True)
    below_knee = knee[2] - 20.0 - z_hi          # and the thigh below it: thigh >= this everywhere
    return _union_where_needed(q, _calf(q, knee, ankle, body, side), lambda p: _thigh(p, top, knee, body, sign),
                               below_knee, False)


def skin_distance(q, ind, body) -> np.ndarray:
    def join_legs(p, d):
        for side in SIDES:
            d = _smin(d, leg_distance(p, ind, body, side), 25.0)
        return d
    legs = q[2] <= max(ind.marks[f"thigh_top_{s}"][2] for s in SIDES) + 80.0    # above: the legs add nothing
    return _update_where(legs, q, trunk_distance(q, body), join_legs)


SEPTA_TOP = 60.0      # mm above the crotch, where the thigh's fat planes end
SKIN_PARTS = ("trunk", "thigh", "calf", "foot")      # the body parts (body_parts_bounds) whose union holds the skin


def septa_reach(body) -> float:
    """How far (mm) from the femoral shaft's axis the fat planes reach: past the widest thigh's skin."""
    return max(body["thigh_r"]) + 26.0


def body_parts_bounds(ind: Individual, body) -> dict:
    """Anatomical boxes (lo, hi) of the body's parts: ``trunk``, ``thigh_<side>``, ``calf_<side>`` and
    ``foot_<side>`` (SKIN_PARTS: the skin distance is < 0 only inside their union, grown by the smooth union's 25 mm
    / 4), ``septa_<side>`` and ``cavity`` (``septa_distance`` and ``cavity_distance`` are < 0 only inside theirs)."""
    m, grow, inf = ind.marks, 25.0 / 4, math.inf
    sx, sy = max(body["sx"]), max(body["sy"])
    parts = {"trunk": ((body["cx"] - sx - grow, body["cy"] - sy - grow, body["crotch"] - grow),
                       (body["cx"] + sx + grow, body["cy"] + 0.85 * sy + grow, inf))}
    thigh_r, calf_r, reach = max(body["thigh_r"]) + grow, max(body["calf_r"]) + grow, septa_reach(body)
    for side in SIDES:
        top, knee, ankle = m[f"thigh_top_{side}"], m[f"knee_{side}"], m[f"ankle_{side}"]
        ends = np.array([top, knee])
        lo, hi = ends.min(0), ends.max(0)
        parts[f"thigh_{side}"] = ((lo[0] - 12.0 - thigh_r, lo[1] - thigh_r, knee[2] - 20.0 - grow),
                                  (hi[0] + 12.0 + thigh_r, hi[1] + 26.0 + thigh_r, top[2] + 50.0 + grow))
        parts[f"septa_{side}"] = ((lo[0] - reach, lo[1] - reach, -inf), (hi[0] + reach, hi[1] + reach,
                                                                             body["crotch"] + SEPTA_TOP))
        ends = np.array([knee, ankle])
        lo, hi = ends.min(0), ends.max(0)
        parts[f"calf_{side}"] = ((lo[0] - calf_r, lo[1] - calf_r, ankle[2] - 15.0 - grow),
                                 (hi[0] + calf_r, hi[1] + 1.6 * calf_r, knee[2] + 20.0 + grow))
        if side in body.get("feet", {}):
            parts[f"foot_{side}"] = soft_tissue_box(body["feet"][side], grow)
    a = max(sx - body["fat"] - body["wall"] - 25.0, 20.0)
    b = max(sy - body["fat"] - body["wall"] - 30.0, 20.0)
    parts["cavity"] = ((body["cx"] - a, body["cy"] - 15.0 - b, -40.0), (body["cx"] + a, body["cy"] - 15.0 + b,
                                                                           body["diaphragm"]))
    return parts


def fat_thickness(q, body) -> np.ndarray:
    """Subcutaneous fat: the trunk's above the crotch, the legs' below, thicker over the buttocks."""
    leg = np.clip((body["crotch"] + 40.0 - q[2]) / 80.0, 0.0, 1.0)
    back = 1.0 + 0.5 * np.clip((q[1] - body["cy"]) / 80.0, 0.0, 1.0)
    return (body["fat"] * (1 - leg) + body["leg_fat"] * leg) * back


def septa_distance(q, ind, body, side) -> np.ndarray:
    """Intermuscular fat planes radiating from the femoral shaft (and on below the knee), up to SEPTA_TOP above the
    crotch and septa_reach from the shaft's axis."""
    m = ind.marks
    x, y, _ = _leg_axis(q[2], m[f"thigh_top_{side}"], m[f"knee_{side}"])
    dx, dy = q[0] - x, q[1] - y
    d = across = None
    for angle in body["septa"][side]:       # max(|dx c + dy s| - 1.5, 25 - (dy c - dx s)), computed in place
        c, s = math.cos(angle), math.sin(angle)
        part = np.multiply(dx, c)
        across = np.multiply(dy, s, out=across)
        part += across
        np.abs(part, out=part)
        part -= 1.5
        np.multiply(dy, c, out=across)
        across -= dx * s
        np.negative(across, out=across)
        across += 25.0
        np.maximum(part, across, out=part)
        d = part if d is None else np.minimum(d, part, out=d)
    d = np.maximum(d, np.hypot(dx, dy) - septa_reach(body))
    return np.maximum(d, q[2] - (body["crotch"] + SEPTA_TOP))


def cavity_distance(q, body) -> np.ndarray:
    """Abdominopelvic cavity inside the muscle wall (visceral fat background for the organs); below the hip roof
    only the lesser pelvis, widening to the false pelvis up to the iliac crest."""
    z = q[2]
    a = _knots(z, body["zs"], body["sx"]) - body["fat"] - body["wall"] - np.where(z < body["crest"], 55.0, 25.0)
    widen = np.clip((z - body["hip_roof"]) / max(body["crest"] - body["hip_roof"], 1.0), 0.0, 1.0)
    a = np.minimum(a, body["true_pelvis"] + widen * (a - body["true_pelvis"]))
    b = _knots(z, body["zs"], body["sy"]) - body["fat"] - body["wall"] - 30.0
    d = ellipse_distance(q[0] - body["cx"], q[1] - body["cy"] + 15.0, np.maximum(a, 20.0), np.maximum(b, 20.0))
    return np.maximum(np.maximum(d, -40.0 - z), z - body["diaphragm"])
