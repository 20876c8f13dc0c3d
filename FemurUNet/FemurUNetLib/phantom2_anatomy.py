"""Phantom v2 anatomy: a random individual built on real bone shapes.

The bones are signed-distance volumes made from Visible Human meshes (``anatomy/*.npz``, built by
``Scripts/build_bone_atlas.py``; credit in NOTICE). Each case draws one of the two bodies and makes a new
individual of it: global anisotropic scale, per-bone scale, a smooth non-rigid deformation, left/right hip
flexion, abduction and rotation, knee flexion, joint spaces. Soft-tissue landmarks (head, knee, ankle
centres, spine) follow the posed bones.

Frames: the atlas frame of a body is LPS mm with the origin midway between its femoral head centres. The
anatomical frame ``x`` is the posed, scaled individual in the same orientation; the scanner frame is the
anatomical frame rotated by the patient's position on the table (``phantom2.make_grid``). Landmarks
(``Individual.marks``) are where the posed atlas landmarks land after the deformation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from .sdf import _rotation

ATLAS_DIR = Path(__file__).resolve().parent / "anatomy"
BODIES = ("vh_female", "vh_male")
SDF_STEP = 0.25            # mm per int8 unit of the stored distances
FAR = 32.0                 # mm: distance reported outside a bone's stored box
SIDES = {"left": +1, "right": -1}
LABEL = {"left": 1, "right": 2}
PELVIS_BONES = ("hip_left", "hip_right", "sacrum", "coccyx")
LEG_BONES = ("femur", "tibia", "fibula", "patella")


@dataclass
class Bone:
    sdf: np.ndarray          # float32 (k, j, i), mm, 1 mm grid
    origin: np.ndarray       # atlas (x, y, z) of voxel (0, 0, 0)

    @property
    def bounds(self):
        return self.origin, self.origin + np.asarray(self.sdf.shape[::-1], float) - 1.0

    def distance(self, a) -> np.ndarray:
        """Signed distance (mm) at atlas points ``a = (x, y, z)`` arrays; FAR outside the stored box."""
        o = self.origin
        idx = np.stack([a[2] - o[2], a[1] - o[1], a[0] - o[0]]).astype(np.float32, copy=False)
        return ndimage.map_coordinates(self.sdf, idx, order=1, mode="constant", cval=FAR, prefilter=False)


@lru_cache(maxsize=len(BODIES))
def load_body(name: str) -> tuple:
    """(bones dict, landmarks dict) of one atlas body."""
    with np.load(ATLAS_DIR / f"{name}.npz") as z:
        bones = {k[:-5]: Bone(z[k].astype(np.float32) * SDF_STEP, z[k[:-5] + "__origin"].astype(float))
                 for k in z.files if k.endswith("__sdf")}
        marks = {k[6:]: z[k].astype(float) for k in z.files if k.startswith("mark__")}
    return bones, marks


def _affine(m3=np.eye(3), t=np.zeros(3)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = m3, t
    return m


def _about(point, m3) -> np.ndarray:
    """4x4 applying ``m3`` about ``point``."""
    p = np.asarray(point, float)
    return _affine(t=p) @ _affine(m3) @ _affine(t=-p)


def affine_points(m, x) -> list:
    """The 4x4 ``m`` applied to points given as coordinate arrays ``x = (x, y, z)``, in float32."""
    return [np.float32(m[r, 0]) * x[0] + np.float32(m[r, 1]) * x[1] + np.float32(m[r, 2]) * x[2]
            + np.float32(m[r, 3]) for r in range(3)]


def box_through(m, lo, hi) -> tuple:
    """(lo, hi) of the box holding the box ``lo``-``hi`` mapped by the 4x4 ``m``."""
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    pts = (m @ corners.T).T[:, :3]
    return pts.min(0), pts.max(0)


@dataclass
class Deformation:
    """Smooth displacement d(x) = sum_m a_m sin(k_m . x + phase_m); |grad d| <= 0.4 keeps it invertible."""
    waves: np.ndarray        # (M, 3) wave vectors (rad/mm)
    amps: np.ndarray         # (M, 3) mm
    phases: np.ndarray       # (M,)

    @classmethod
    def draw(cls, rng, n=4, amplitude=(1.0, 3.5), wavelength=(90.0, 260.0)):
        dirs = rng.standard_normal((n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        lam = rng.uniform(*wavelength, n)
        waves = dirs * (2 * math.pi / lam)[:, None]
        amps = rng.standard_normal((n, 3))
        amps *= (rng.uniform(*amplitude, n) / np.linalg.norm(amps, axis=1))[:, None]
        limit = 0.4 / max(1e-9, float(np.sum(np.linalg.norm(amps, axis=1) * np.linalg.norm(waves, axis=1))))
        return cls(waves, amps * min(1.0, limit), rng.uniform(0, 2 * math.pi, n))

    @property
    def max_shift(self) -> float:
        return float(np.sum(np.linalg.norm(self.amps, axis=1)))

    def __call__(self, x) -> tuple:
        out = [x[0].copy(), x[1].copy(), x[2].copy()]
        for k, a, ph in zip(self.waves, self.amps, self.phases):
            s = np.sin(np.float32(k[0]) * x[0] + np.float32(k[1]) * x[1] + np.float32(k[2]) * x[2] + np.float32(ph))
            for c in range(3):
                out[c] += np.float32(a[c]) * s
        return tuple(out)


@dataclass
class Individual:
    body: str
    bones: dict                   # name -> Bone (shared atlas data)
    to_atlas: dict                # name -> 4x4 anatomical -> atlas frame (inverse of the pose)
    deformation: Deformation
    marks: dict                   # posed landmarks in the anatomical frame (mm)
    head_radius: float
    hip_gap: dict                 # side -> hip joint space (mm)
    hip_carve: dict = field(default_factory=dict)   # hip bone -> (centre in its atlas frame, radius)
    femurs: str = "atlas"         # whose proximal femurs: the atlas body's, or a LibHip man's (phantom2_libhip)
    hips: str = "atlas"           # whose hip bones: the atlas body's, or MRI2PSM's (phantom2_hips)

    def bone_distance(self, name, x) -> np.ndarray:
        """Signed distance of bone ``name`` at anatomical points ``x`` (arrays)."""
        a = affine_points(self.to_atlas[name], self.deformation(x))
        d = self.bones[name].distance(a)
        if name in self.hip_carve:
            c, r = self.hip_carve[name]
            dist = np.sqrt((a[0] - c[0]) ** 2 + (a[1] - c[1]) ** 2 + (a[2] - c[2]) ** 2)
            d = np.maximum(d, np.float32(r) - dist)
        return d

    def bone_bounds(self, name) -> tuple:
        """Anatomical-frame box holding the posed bone (with the deformation's reach)."""
        lo, hi = box_through(np.linalg.inv(self.to_atlas[name]), *self.bones[name].bounds)
        reach = self.deformation.max_shift + 2.0
        return lo - reach, hi + reach


def make_individual(rng, body=None) -> Individual:
    body = body or BODIES[int(rng.integers(len(BODIES)))]
    bones, atlas_marks = load_body(body)
    scale = rng.uniform(0.88, 1.12) * rng.uniform(0.96, 1.04, 3)
    g = _affine(np.diag(scale))
    forward = {b: g for b in ("hip_left", "hip_right")}
    for b in ("sacrum", "coccyx"):
        c = np.mean(bones[b].bounds, axis=0)
        forward[b] = g @ _about(c, np.eye(3) * rng.uniform(0.93, 1.07))
    marks, hip_carve, hip_gap = {}, {}, {}
    head_r = float(atlas_marks["head_radius"])
    for side, sign in SIDES.items():
        _pose_leg(rng, side, sign, atlas_marks, g, forward, marks)
        s_f = float(np.cbrt(np.linalg.det(forward[f"femur_{side}"][:3, :3]) / np.prod(scale)))
        hip_gap[side] = hip_joint_space(rng)
        hip_carve[f"hip_{side}"] = (atlas_marks[f"head_{side}"], head_r * s_f + hip_gap[side])
    top = bones["sacrum"].bounds
    s1 = np.array([0.5 * (top[0][0] + top[1][0]), top[0][1] + 0.35 * (top[1][1] - top[0][1]), top[1][2] - 8.0, 1.0])
    marks["s1"] = (forward["sacrum"] @ s1)[:3]
    marks["pelvis_halfwidth"] = pelvis_halfwidth(bones, scale)
    marks["scale"] = scale
    to_atlas = {b: np.linalg.inv(m) for b, m in forward.items()}
    deformation = Deformation.draw(rng)
    for key, value in marks.items():
        if isinstance(value, np.ndarray) and key != "scale":
            marks[key] = _undeform(deformation, value)
    return Individual(body, bones, to_atlas, deformation, marks, head_r * float(np.mean(scale)), hip_gap, hip_carve)


def pelvis_halfwidth(bones, scale) -> float:
    """mm from the midline to the outer edge of the wider hip bone (atlas bounds, scaled like the individual)."""
    return float(max(abs(bones["hip_left"].bounds[1][0]), abs(bones["hip_right"].bounds[0][0])) * scale[0])


NARROWED_HIP_P = 0.3      # share of hips with a narrowed (osteoarthritic) joint space


def hip_joint_space(rng) -> float:
    """Hip joint space (mm): 1-4 mm, or narrowed to 0.2-1 mm (osteoarthritis, common in the scanned ages)."""
    narrowed = rng.random() < NARROWED_HIP_P
    return float(rng.uniform(0.2, 1.0) if narrowed else rng.uniform(1.0, 4.0))


def _undeform(deformation: Deformation, target) -> np.ndarray:
    """The anatomical point x with x + d(x) = target (fixed-point iteration; |grad d| <= 0.4 makes it converge)."""
    x = np.array(target, float)
    for _ in range(30):
        moved = np.array([c[0] for c in deformation(tuple(np.array([c]) for c in x))])
        x -= moved - target
    return x


def _pose_leg(rng, side, sign, atlas_marks, g, forward, marks) -> None:
    """Hip flexion/abduction/rotation about the head centre, knee flexion about the knee centre, joint spaces."""
    head, knee, ankle = (atlas_marks[f"{m}_{side}"] for m in ("head", "knee", "ankle"))
    flexion = math.radians(rng.uniform(-5, 20) if rng.random() < 0.9 else rng.uniform(20, 35))
    abduction = math.radians(rng.uniform(-4, 8))
    rotation = math.radians(rng.uniform(-20, 20))
    r_hip = _rotation(-flexion, -sign * abduction, sign * rotation)
    femur = g @ _about(head, r_hip * rng.uniform(0.96, 1.04))
    knee_flexion = math.radians(rng.uniform(0, 15) if rng.random() < 0.8 else rng.uniform(15, 40))
    knee_flexion = min(knee_flexion, max(flexion, 0.0) + math.radians(10))   # supine: the heel stays on the table
    gap = _affine(t=(0.0, 0.0, -rng.uniform(1.0, 4.0)))
    shin = femur @ gap @ _about(knee, _rotation(knee_flexion, 0.0, 0.0) * rng.uniform(0.96, 1.04))
    forward[f"femur_{side}"] = femur
    forward[f"tibia_{side}"] = shin
    forward[f"fibula_{side}"] = shin
    slide = _affine(t=(0.0, -rng.uniform(0.0, 3.0), -25.0 * math.sin(knee_flexion)))
    forward[f"patella_{side}"] = femur @ slide
    marks[f"head_{side}"] = (femur @ np.append(head, 1.0))[:3]
    marks[f"knee_{side}"] = (femur @ np.append(knee, 1.0))[:3]
    marks[f"ankle_{side}"] = (shin @ np.append(ankle, 1.0))[:3]
    shaft = head + np.array([sign * 40.0, 0.0, -60.0])
    marks[f"thigh_top_{side}"] = (femur @ np.append(shaft, 1.0))[:3]
