"""Phantom v2 feet: an ankle and a foot below each tibia (talus, calcaneus, midfoot, metatarsals, toes).

Real lower-leg CTs run down to the ankle and often into the foot, and a network that never saw a foot labels its
bones (the tarsus is round trabecular bone in a cortical shell, as a femoral head or condyle is). The bone meshes
have no foot, so the feet are procedural: adult proportions (heel to toe ~260 mm x the individual's scale x
0.93-1.07), posed supine (plantar flexion 0-35°, external rotation -5 to 30°, about the ankle joint), the talus
carved by the tibia and fibula with an ankle joint space of 1.5-3 mm and the calcaneus and navicular by the talus.
Soft tissue: an ankle, a heel and a cross-section swept from heel to toes, joined to the calf. A share of leg scans
(FOOT_BELOW_P) run on into the foot. Drawn from the seed's tenth stream, so the other streams keep their draws;
everything lies below FOOT_TOP above the ankle, so scans that end above that keep their bits. Negatives only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .phantom2_anatomy import SIDES, Individual
from .sdf import _capsule, _ellipsoid

FOOT_BELOW_P = 0.5         # leg scans that run on into the foot (20-130 mm more below the ankle)
FOOT_TOP = 60.0            # mm above the ankle mark where the foot's soft tissue (the ankle's, the heel's) may reach:
                           # far below any scan but the leg scans (hip to knee ends 90 mm below the knee at most)
# the soft tissue's cross-section along the foot (local mm): f, centre (m, u), half-width (m), half-thickness (u)
_SWEEP = np.array([(-40, 3, -28, 30, 28), (-10, 3, -26, 34, 32), (30, 4, -28, 38, 30), (80, 6, -33, 43, 24),
                   (130, 6, -42, 48, 18), (150, 5, -43, 46, 15), (195, 4, -44, 36, 10)], float)
_TISSUE_BOX = ((-70.0, -48.0, -64.0), (200.0, 58.0, 34.0))
# metatarsals: base (f, m, u), head, radii; toes from each head
_METATARSALS = [((72, -14, -26), (135, -20, -43), 8.5, 8.0), ((72, -4, -27), (142, -8, -42), 5.5, 4.8),
                ((69, 5, -29), (138, 2, -42), 5.0, 4.5), ((60, 13, -33), (130, 12, -43), 5.0, 4.5),
                ((50, 21, -37), (120, 23, -44), 6.0, 4.5)]


@dataclass
class Foot:
    origin: np.ndarray         # the talar dome under the tibia (anatomical mm), the pivot of the pose
    axes: np.ndarray           # rows: toward the toes (f), lateral (m), dorsal (u); unit vectors
    size: float                # scale of the local shape
    gap: float                 # ankle joint space (mm)
    top_z: float               # soft tissue only below this anatomical z

    def local(self, q) -> tuple:
        """Local (f, m, u) mm at unit size of anatomical points."""
        d = [q[i] - np.float32(self.origin[i]) for i in range(3)]
        s = np.float32(1.0 / self.size)
        return tuple((np.float32(a[0]) * d[0] + np.float32(a[1]) * d[1] + np.float32(a[2]) * d[2]) * s
                     for a in self.axes)

    def box(self, lo, hi, grow=0.0) -> tuple:
        """Anatomical box holding the local box lo-hi (grown by ``grow`` mm)."""
        corners = np.array([[f, m, u] for f in (lo[0], hi[0]) for m in (lo[1], hi[1]) for u in (lo[2], hi[2])])
        points = self.origin + self.size * corners @ self.axes
        return points.min(0) - grow, points.max(0) + grow


def draw_feet(rng, ind: Individual) -> dict:
    """{'left': Foot, 'right': Foot, 'below': mm the leg scans run on below the ankle (0 for 1 - FOOT_BELOW_P)}."""
    feet = {}
    size = float(np.mean(ind.marks["scale"]))
    for side, sign in SIDES.items():
        ankle, knee = ind.marks[f"ankle_{side}"], ind.marks[f"knee_{side}"]
        leg = (knee - ankle) / np.linalg.norm(knee - ankle)
        front = _across(leg)
        lateral = sign * np.cross(leg, front)
        origin = ankle + 10.0 * lateral - 3.0 * front + 4.0 * leg        # the talar dome: the foot turns about it
        turn, flex = math.radians(rng.uniform(-5, 30)), math.radians(rng.uniform(0, 35))
        front, lateral = (math.cos(turn) * front + math.sin(turn) * lateral,
                          math.cos(turn) * lateral - math.sin(turn) * front)
        toes, dorsal = math.cos(flex) * front - math.sin(flex) * leg, math.sin(flex) * front + math.cos(flex) * leg
        feet[side] = Foot(origin, np.array([toes, lateral, dorsal]), size * rng.uniform(0.93, 1.07),
                          rng.uniform(1.5, 3.0), float(ankle[2]) + FOOT_TOP)
    feet["below"] = float(rng.uniform(20, 130)) if rng.random() < FOOT_BELOW_P else 0.0
    return feet


def _across(leg) -> np.ndarray:
    """The anterior direction (-y) made perpendicular to the leg's axis."""
    front = np.array([0.0, -1.0, 0.0]) - (-leg[1]) * leg
    return front / np.linalg.norm(front)


def soft_tissue_distance(q, foot: Foot) -> np.ndarray:
    """Skin surface of the ankle and foot (negative inside), only below ``foot.top_z``."""
    f, m, u = foot.local(q)
    k = _SWEEP.T
    mc, uc, a, b = (np.interp(f, k[0], k[i]).astype(np.float32) for i in range(1, 5))
    sweep = np.hypot((m - mc) / a, (u - uc) / b)
    sweep = (sweep - 1.0) * np.minimum(a, b)
    sweep = np.maximum(sweep, np.maximum(np.float32(k[0, 0]) - f, f - np.float32(k[0, -1])))
    d = np.minimum(sweep, _ellipsoid((f, m, u), (-30, 3, -30), (34, 30, 28)))
    d = np.minimum(d, _ellipsoid((f, m, u), (-4, 4, 0), (40, 36, 30)))
    return np.maximum(d * np.float32(foot.size), q[2] - np.float32(foot.top_z))


def soft_tissue_box(foot: Foot, grow: float) -> tuple:
    lo, hi = foot.box(*_TISSUE_BOX, grow)
    return lo, np.array([hi[0], hi[1], min(hi[2], foot.top_z + grow)])


def bone_parts(ind: Individual, foot: Foot, side: str) -> list:
    """(name, anatomical lo, hi, distance) of the foot's bones: talus, calcaneus, midfoot, forefoot."""
    s = np.float32(foot.size)

    def talus_local(p):
        d = _ellipsoid(p, (0, 0, 0), (22, 14, 16))
        return np.minimum(d, _capsule(p, (8, -2, -7), (30, -5, -17), 10.0, 11.0))

    def talus(q):
        d = talus_local(foot.local(q)) * s
        for bone in (f"tibia_{side}", f"fibula_{side}"):
            d = np.maximum(d, np.float32(foot.gap) - ind.bone_distance(bone, q))
        return d

    def calcaneus(q):
        p = foot.local(q)
        d = np.minimum(_ellipsoid(p, (-14, 4, -24), (36, 14, 15)), _capsule(p, (-30, 4, -28), (-44, 5, -30), 12.0))
        return np.maximum(d, 1.5 - talus_local(p)) * s

    def midfoot(q):
        p = foot.local(q)
        d = np.minimum(_ellipsoid(p, (44, -8, -20), (8, 15, 11)), _ellipsoid(p, (32, 16, -38), (12, 12, 11)))
        d = np.minimum(d, _ellipsoid(p, (60, -4, -26), (10, 18, 11)))
        return np.maximum(d, 1.5 - talus_local(p)) * s

    def forefoot(q):
        p, d = foot.local(q), None
        for n, (base, head, r0, r1) in enumerate(_METATARSALS):
            tip = np.add(head, (7.0, 0.0, 0.0))
            toe = _capsule(p, tip, tip + ((42.0 if n == 0 else 32.0), 0.0, -1.0), 6.0 if n == 0 else 3.5)
            bone = np.minimum(_capsule(p, base, head, r0, r1), toe)
            d = bone if d is None else np.minimum(d, bone)
        return d * s

    boxes = {"talus": ((-24, -17, -30), (44, 17, 18)), "calcaneus": ((-58, -12, -44), (24, 20, -7)),
             "midfoot": ((18, -25, -51), (72, 30, -7)), "forefoot": ((40, -30, -54), (192, 32, -16))}
    parts = {"talus": talus, "calcaneus": calcaneus, "midfoot": midfoot, "forefoot": forefoot}
    return [(f"foot_{side}_{name}", *foot.box(*boxes[name], 2.0), parts[name]) for name in parts]
