"""Synthetic hip CT phantom with exact ground truth (``femurunet sample``).

Every structure is an analytic signed-distance-like function (negative inside) of the patient LPS position
(mm) of each voxel centre, so any grid (anisotropic, flipped, permuted, oblique) shows the same anatomy and
the label is exact: ``label = femur distance < 0`` at the voxel centre. CT values blend tissues over a ramp as
wide as the voxel seen across each boundary (partial volume), then get metal streaks and Gaussian noise.
Some cases have the arms down beside the trunk: round long bones (humerus, or radius and ulna) that are not
femur, the look-alikes a femur model meets in real CT.

Anatomical frame (before the random pose): origin midway between the femoral head centres, x toward patient
Left, y Posterior, z Superior. Left femur (label 1) at +x, right femur (label 2) at -x.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import FemurUNetError
from .fileio import atomic_outputs
from .geometry import Geometry
from .sdf import _PRIMITIVES, grid_points, ramp_width, _box, _capsule, _ellipse_xy, _ellipsoid, _plane, _plate, _rotation, _smin, _sphere, _unit

LEFT, RIGHT = 1, 2
TISSUE = {"air": 0, "fat": 1, "soft_tissue": 2, "femur_cortex": 3, "femur_marrow": 4, "pelvis_cortex": 5,
          "pelvis_marrow": 6, "metal": 7, "table": 8, "gas": 9, "arm_cortex": 10, "arm_marrow": 11}
SLICE_SPACINGS = (1.5, 2.0, 2.5, 3.0)
ARMS_PROBABILITY = 0.4
ABOVE_HEAD_MM, BELOW_HEAD_MM = 40.0, 100.0   # default cranio-caudal coverage around the femoral head centre
SLAB_VOXELS = 1_500_000
HU_MIN, HU_MAX = -1024, 3071


@dataclass
class PhantomCase:
    ct: np.ndarray          # int16 HU, numpy (k, j, i)
    label: np.ndarray       # uint8: 0 background, 1 left femur, 2 right femur
    geometry: Geometry
    name: str
    tissue: Optional[np.ndarray] = field(default=None, repr=False)  # uint8 TISSUE class at each voxel centre
    metal: bool = False
    arms: bool = False
    coverage: str = ""      # phantom v2: scan range (phantom2.COVERAGES)
    body: str = ""          # phantom v2: atlas body the individual was made from
    femurs: str = ""        # phantom v2: whose proximal femurs ("atlas" or a LibHip man, phantom2_libhip)
    hip_field: str = ""     # phantom v2: the side of a targeted one-hip field of view ("" for none)
    hips: str = ""          # phantom v2: whose hip bones ("atlas" or "mri2psm", phantom2_hips)
    feet: Optional[np.ndarray] = field(default=None, repr=False)   # phantom v2 leg scans: bool, voxels in the feet
    oa: bool = False        # phantom v2: osteoarthritic bone in both hips (phantom2_oa)
    tha: bool = False       # phantom v2: a total hip arthroplasty on one side (phantom2_arthroplasty)


# --- anatomy ------------------------------------------------------------------------------------------------
@dataclass
class _Side:
    sign: int                 # +1 left, -1 right
    value: int                # label value
    head: np.ndarray
    head_r: float
    neck: tuple
    metaphysis: tuple
    shaft: tuple
    greater_troch: tuple
    lesser_troch: tuple
    junction: np.ndarray
    shaft_dir: np.ndarray
    head_cortex: float        # thin subchondral shell
    cortex: float             # neck and trochanters
    shaft_cortex: float
    hu_cortex: float
    hu_trabecular: float
    hu_canal: float
    gap: float
    cup: tuple
    pelvis_parts: list
    pelvis_cortex: float
    hu_pelvis_cortex: float
    hu_pelvis_marrow: float

    def femur(self, q):
        d = _sphere(q, self.head, self.head_r)
        d = _smin(d, _capsule(q, *self.neck), 4.0)
        d = _smin(d, _capsule(q, *self.metaphysis), 9.0)
        d = _smin(d, _capsule(q, *self.shaft), 6.0)
        d = _smin(d, _ellipsoid(q, *self.greater_troch), 7.0)
        return _smin(d, _sphere(q, *self.lesser_troch), 5.0)

    def along_shaft(self, q):
        """Distance (mm) below the neck/shaft junction along the shaft axis."""
        return _plane(q, self.junction, self.shaft_dir)

    def pelvis(self, q, d_femur):
        inner, outer, opening, lip = self.cup
        r = _sphere(q, self.head, 0.0)
        d = np.maximum(np.maximum(r - outer, inner - r), _plane(q, self.head + opening * lip, opening))
        for kind, args, k in self.pelvis_parts:
            d = _smin(d, _PRIMITIVES[kind](q, *args), k)
        return np.maximum(d, self.gap - d_femur)  # keep the joint space free around the femur

    def bounds(self):
        lateral = self.head[0] + self.sign * 110.0
        lo = np.array([min(0.0, lateral), -100.0, -1000.0])
        hi = np.array([max(0.0, lateral), 110.0, self.head[2] + 150.0])
        return lo, hi


@dataclass
class _Metal:
    side: int                 # index into sides
    ball: tuple
    stem: list                # capsules
    cup: Optional[tuple]      # (inner, outer) radii of a metal acetabular shell
    hu: float
    streak_angles: np.ndarray
    streak_amps: np.ndarray
    streak_width: np.ndarray
    streak_decay: float


@dataclass
class _Arm:
    """Arm down beside the trunk, along the body axis: fat, muscle, and one or two long bones."""
    axis: tuple               # (top, bottom) of the arm's centre line, anatomical frame
    radius: float
    fat: float
    bones: list               # (offset (x, y) from the arm axis, outer radius)
    cortex: float
    hu_cortex: float
    hu_marrow: float

    def distances(self, q):
        top, bottom = (np.asarray(p, float) for p in self.axis)
        skin = _capsule(q, top, bottom, self.radius)
        bones = None
        for (dx, dy), r in self.bones:
            shift = np.array([dx, dy, 0.0])
            d = _capsule(q, top + shift, bottom + shift, r)
            bones = d if bones is None else np.minimum(bones, d)
        return skin, bones

    def bounds(self):
        top, bottom = (np.asarray(p, float) for p in self.axis)
        r = np.array([self.radius, self.radius, 0.0])
        return np.minimum(top, bottom) - r, np.maximum(top, bottom) + r


def _make_arms(rng, body) -> list:
    """Both arms, drawn from their own stream so a case without arms is unchanged by them."""
    u = lambda a, b: float(rng.uniform(a, b))
    forearm = rng.random() < 0.5
    arms = []
    for s in (-1.0, 1.0):
        radius = u(30, 45) if forearm else u(38, 52)
        x = s * (body["semi"][0] + u(-4, 10) + radius)
        y = body["centre"][1] + u(-30, 30)
        tilt = np.array([s * u(-20, 10), u(-20, 20), 0.0])
        top, bottom = np.array([x, y, 250.0]), np.array([x, y, -350.0]) + tilt
        if forearm:                                   # radius and ulna
            sep = u(14, 22)
            radius_bone = ((u(-4, 4), -sep / 2), u(6, 9))
            cortex = u(2.0, 3.0)
            bones = [radius_bone, ((u(-4, 4), sep / 2), u(5, 8))]
            cortex = min(cortex, u(2.0, 3.0))
        else:                                         # humerus
            bones = [((u(-6, 6), u(-6, 6)), u(9, 13))]
            cortex = u(2.5, 4.5)
        arms.append(_Arm(axis=(top, bottom), radius=radius, fat=u(4, 12), bones=bones, cortex=cortex,
                         hu_cortex=u(1000, 1700), hu_marrow=u(-60, 120)))
    return arms


@dataclass
class _Anatomy:
    rotation: np.ndarray      # anatomical -> LPS axes
    centre: np.ndarray        # LPS position of the anatomical origin
    sides: list
    body: dict
    sacrum: list
    hu: dict
    metal: Optional[_Metal]
    metal_params: _Metal
    blur: float
    noise: float
    arms: list = field(default_factory=list)
    arms_params: list = field(default_factory=list)

    def to_lps(self, p):
        return self.rotation @ np.asarray(p, float) + self.centre


def _make_side(rng, sign, scale):
    s = float(sign)
    u = lambda a, b: float(rng.uniform(a, b))
    head = np.array([s * (88.0 * scale + u(-3, 3)), u(-3, 3), u(-3, 3)])
    head_r = 22.0 * scale * u(0.93, 1.07)
    beta, ante = math.radians(u(32, 45)), math.radians(u(5, 25))
    neck_dir = np.array([s * math.cos(beta) * math.cos(ante), math.cos(beta) * math.sin(ante), -math.sin(beta)])
    neck_len = 52.0 * scale * u(0.93, 1.07)
    junction = head + neck_len * neck_dir
    neck_r = 0.66 * head_r
    gamma, delta = math.radians(u(4, 10)), math.radians(u(-3, 3))
    shaft_dir = _unit([-s * math.sin(gamma), math.sin(delta), -math.cos(gamma)])
    shaft_r = 13.5 * scale * u(0.92, 1.08)
    top = junction - shaft_dir * 18.0 * scale
    below = junction + shaft_dir * 60.0 * scale
    lateral = np.array([s, 0.0, 0.0])
    gt = (junction + lateral * 9.0 * scale + np.array([0, u(2, 8), 24.0 * scale + u(-4, 4)]),
          np.array([13.0, 15.0, 22.0]) * scale * u(0.9, 1.1))
    postero_medial = _unit([-s, 1.0, 0.0])
    lt = (junction + shaft_dir * 38.0 * scale + postero_medial * shaft_r * 0.95, 7.5 * scale * u(0.85, 1.15))

    gap = u(1.0, 2.0)
    inner = head_r + gap
    outer = inner + u(8, 12) * scale
    incl, cup_ante = math.radians(u(38, 52)), math.radians(u(10, 25))
    opening = _unit([s * math.sin(incl) * math.cos(cup_ante), -math.sin(cup_ante), -math.cos(incl)])
    hx = head[0]
    asis = np.array([hx + s * 25 * scale, -42.0 * scale, 20.0 * scale])
    mid = np.array([hx + s * 20 * scale, 12.0 * scale, 20.0 * scale])
    si = np.array([s * 42.0 * scale, 62.0 * scale, 25.0 * scale])
    up = _unit([s * u(0.15, 0.4), 0.1, 1.0])
    wing_h, wing_t = u(80, 100) * scale, u(6, 9)
    pub_r = 9.0 * scale * u(0.9, 1.1)
    symph = np.array([s * (3.0 + pub_r), -44.0 * scale, -22.0 * scale])
    symph_low = np.array([s * (3.0 + 0.8 * pub_r), -40.0 * scale, -42.0 * scale])
    ischial = head + np.array([-s * 12.0, 32.0, -58.0]) * scale
    parts = [
        ("ellipsoid", (head + np.array([-s * 4, 8, outer * 0.85]), np.array([24.0, 30.0, 24.0]) * scale), 8.0),
        ("box", (head + np.array([-s * (inner + 3), 6 * scale, 4 * scale]), np.eye(3),
                 np.array([5.0, 42.0, 30.0]) * scale, 4.0), 8.0),   # quadrilateral plate: the medial wall
        ("box", _plate(asis, mid, up, wing_h, wing_t), 10.0),
        ("box", _plate(mid, si, up, wing_h, wing_t + 2), 10.0),
        ("capsule", (head + np.array([-s * 6, inner * 0.6, -4]), ischial, 12.0 * scale, 13.0 * scale), 6.0),
        ("capsule", (head + np.array([-s * 10, -18 * scale, -6]), symph, 12.0 * scale, pub_r), 6.0),
        ("capsule", (symph, symph_low, pub_r, 0.8 * pub_r), 4.0),
        ("capsule", (symph_low, ischial, 0.7 * pub_r, 9.0 * scale), 5.0),
    ]
    return _Side(
        sign=sign, value=LEFT if sign > 0 else RIGHT, head=head, head_r=head_r,
        neck=(head, head + 0.8 * neck_len * neck_dir, neck_r, 1.3 * neck_r),
        metaphysis=(top, below, 1.45 * shaft_r, shaft_r),
        shaft=(below, junction + shaft_dir * 600.0, shaft_r),
        greater_troch=gt, lesser_troch=lt, junction=junction, shaft_dir=shaft_dir,
        head_cortex=u(0.8, 1.6), cortex=u(2.0, 3.5), shaft_cortex=u(4.0, 6.5),
        hu_cortex=u(1000, 1800), hu_trabecular=u(150, 330), hu_canal=u(20, 100), gap=gap,
        cup=(inner, outer, opening, 0.12 * inner), pelvis_parts=parts, pelvis_cortex=u(1.2, 2.2),
        hu_pelvis_cortex=u(900, 1500), hu_pelvis_marrow=u(150, 330))


def _make_anatomy(rng) -> _Anatomy:
    u = lambda a, b: float(rng.uniform(a, b))
    scale = u(0.85, 1.15)
    rotation = _rotation(math.radians(u(-5, 5)), math.radians(u(-5, 5)), math.radians(u(-8, 8)))
    centre_xy = np.array([u(-10, 10), u(-10, 10)])
    centre_z = u(-250.0, 150.0)
    sides = [_make_side(rng, +1, scale), _make_side(rng, -1, scale)]
    lateral_bone = max(abs(sd.greater_troch[0][0]) + sd.greater_troch[1][0] for sd in sides)
    body_y = u(-5, 20)
    semi_x = max(u(160, 190) * scale, lateral_bone + u(25, 45))
    semi_y = u(112, 135) * scale
    body = dict(centre=(0.0, body_y), semi=(semi_x, semi_y), fat=u(10, 40),
                buttock=(u(45, 60) * scale, body_y + 0.4 * semi_y, u(65, 80) * scale),
                pelvic_fat=((0.0, 15.0 * scale, 10.0), np.array([42.0, 40.0, 65.0]) * scale),
                bladder=((0.0, -25.0 * scale, u(5, 25)), np.array([u(30, 45), u(22, 32), u(22, 35)]) * scale),
                rectum=((0.0, 58.0 * scale, 10.0), np.array([16.0, 13.0, 35.0]) * scale),
                gas=((u(-5, 5), 58.0 * scale + u(-4, 4), u(-10, 30)), u(4, 11)) if rng.random() < 0.6 else None,
                table=rng.random() < 0.5)
    septa = []
    for _ in range(int(rng.integers(6, 11))):
        phi = u(0, math.pi)
        centre = np.array([u(-1, 1) * (sides[0].head[0] + 40), u(-60, 90), u(-100, 40)])
        septa.append((centre, _unit([math.cos(phi), math.sin(phi), u(-0.3, 0.3)]), u(1.5, 3.5),
                      np.array([u(30, 70), u(30, 70), u(40, 90)])))
    body["septa"] = septa
    sacrum_tilt = _rotation(math.radians(u(15, 30)), 0.0, 0.0)
    sacrum = [("box", ((0.0, 82.0 * scale, 70.0 * scale), sacrum_tilt.T, np.array([36.0, 15.0, 45.0]) * scale, 10.0)),
              ("box", ((0.0, 92.0 * scale, 18.0 * scale), sacrum_tilt.T, np.array([22.0, 11.0, 16.0]) * scale, 8.0)),
              ("capsule", ((0.0, 95.0 * scale, 4.0 * scale), (0.0, 82.0 * scale, -25.0 * scale), 6.0, 4.0))]
    hu = dict(air=u(-1005, -990), fat=u(-115, -85), muscle=u(35, 60), pelvic_fat=u(-80, -40), bladder=u(0, 20),
              rectum=u(15, 40), table_shell=u(250, 500), table_core=u(-700, -500), sacrum_cortex=u(900, 1400),
              sacrum_marrow=u(150, 300))
    side = int(rng.integers(0, 2))
    sd = sides[side]
    ball_r = sd.head_r * u(0.55, 0.7)
    stem_end = sd.junction + sd.shaft_dir * u(100, 140)
    metal_params = _Metal(
        side=side, ball=(sd.head, ball_r),
        stem=[(sd.head, sd.junction - sd.shaft_dir * 8.0, 5.5, 7.0),
              (sd.junction - sd.shaft_dir * 8.0, stem_end, 7.5, 4.5)],
        cup=(sd.cup[0], sd.cup[0] + u(2.5, 4.0)) if rng.random() < 0.5 else None, hu=u(2800, 3071),
        streak_angles=rng.uniform(0, math.pi, 14), streak_amps=rng.uniform(100, 500, 14) * np.tile([1, -1], 7),
        streak_width=rng.uniform(1.0, 4.0, 14), streak_decay=u(70, 150))
    has_metal = rng.random() < 0.2
    return _Anatomy(rotation=rotation, centre=np.array([*centre_xy, centre_z]), sides=sides, body=body,
                    sacrum=sacrum, hu=hu, metal=metal_params if has_metal else None, metal_params=metal_params,
                    blur=u(0.3, 0.8), noise=u(10, 30))


# --- grid ---------------------------------------------------------------------------------------------------
def _random_direction(rng) -> np.ndarray:
    swap, sign_i, sign_j, sign_k = rng.random() < 0.25, rng.random() < 0.6, rng.random() < 0.6, rng.random() < 0.2
    d = np.eye(3)[:, [1, 0, 2]] if swap else np.eye(3)
    d = d * np.array([-1.0 if sign_i else 1.0, -1.0 if sign_j else 1.0, -1.0 if sign_k else 1.0])
    if np.allclose(d, np.eye(3)):
        d = np.diag([-1.0, -1.0, 1.0])
    return d


def _axis_world(direction) -> list:
    """For each index axis i, j, k: the world axis (0 x, 1 y, 2 z) it runs closest to."""
    from itertools import permutations
    best = max(permutations(range(3)), key=lambda p: sum(abs(direction[p[a], a]) for a in range(3)))
    return list(best)


def _body_outline_lps(anatomy, margin=5.0) -> np.ndarray:
    """LPS points (N, 3) a little outside the skin, over the cranio-caudal range a default grid covers."""
    b = anatomy.body
    t = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    bx, by, br = b["buttock"]
    ellipses = [(b["centre"], b["semi"])] + [((s * bx, by), (br, 0.95 * br)) for s in (-1, 1)]
    ellipses += [(arm.axis[0][:2], (arm.radius, arm.radius)) for arm in anatomy.arms]
    points = []
    for (cx, cy), (ax, ay) in ellipses:
        for z in (-BELOW_HEAD_MM - 40, 0.0, ABOVE_HEAD_MM + 30):
            points.append(np.stack([cx + (ax + margin) * np.cos(t), cy + (ay + margin) * np.sin(t),
                                    np.full_like(t, z)], axis=1))
    return np.concatenate(points) @ anatomy.rotation.T + anatomy.centre


def _make_grid(rng, anatomy, shape, spacing, direction) -> tuple:
    u = lambda a, b: float(rng.uniform(a, b))
    jitter = np.array([u(-5, 5), u(-5, 5), 0.0])
    outline = _body_outline_lps(anatomy)[:, :2] - jitter[:2]
    half_x, half_y = np.abs(outline).max(axis=0)
    fov = min(max(u(330, 420), 2 * half_x), 520.0)
    n_x = int(rng.integers(192, 257))
    n_y = n_x if rng.random() < 0.6 else int(rng.integers(192, 257))
    n_x, n_y = max(n_x, n_y), min(n_x, n_y)          # the wider side across the hips
    s_xy = fov / n_x
    n_y = max(n_y, int(math.ceil(2 * half_y / s_xy)))
    s_z = float(rng.choice(SLICE_SPACINGS))
    above, below = ABOVE_HEAD_MM + u(0, 15), BELOW_HEAD_MM + u(-10, 10)
    n_z = int(min(math.ceil((above + below) / s_z) + 1, 96))
    random_direction = _random_direction(rng)
    use_random_direction = rng.random() < 0.3

    if direction is None:
        direction = random_direction if use_random_direction else np.eye(3)
    direction = np.asarray(direction, float)
    if direction.shape != (3, 3) or not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise FemurUNetError("direction must be an orthonormal 3x3 matrix (columns: i, j, k axes in LPS)")
    world_n = (n_x, n_y, n_z)
    world_s = (s_xy, s_xy, s_z)
    extent = [world_n[w] * world_s[w] for w in range(3)]
    axis_world = _axis_world(direction)   # index axis a -> world axis
    if shape is not None:
        shape = tuple(int(n) for n in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise FemurUNetError(f"shape must be three positive voxel counts (k, j, i), got {shape}")
        n_ijk = shape[::-1]
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise FemurUNetError(f"spacing must be three positive numbers (i, j, k) in mm, got {spacing}")
    if spacing is None:
        spacing = tuple(extent[axis_world[a]] / n_ijk[a] if shape is not None else world_s[axis_world[a]]
                        for a in range(3))
    if shape is None:
        n_ijk = tuple(max(1, int(round(extent[axis_world[a]] / spacing[a]))) for a in range(3))
    # grid centred on the field of view: the head centres' plane sits ``above`` mm below the top
    head_z = anatomy.to_lps((0.0, 0.0, 0.0))[2]
    centre = np.array([0.0, 0.0, head_z + (above - below) / 2]) + jitter
    half = direction @ (np.asarray(spacing) * (np.asarray(n_ijk) - 1) / 2)
    geometry = Geometry(spacing, tuple(centre - half), direction)
    return geometry, (n_ijk[2], n_ijk[1], n_ijk[0])


# --- rendering ----------------------------------------------------------------------------------------------
class _Renderer:
    def __init__(self, anatomy: _Anatomy, geometry: Geometry, shape):
        self.a, self.g, self.shape = anatomy, geometry, shape
        self.index_to_lps = geometry.direction @ np.diag(geometry.spacing)   # columns: i, j, k steps in mm
        self.lps_to_index = np.linalg.inv(self.index_to_lps)
        self.index_to_anat = anatomy.rotation.T @ self.index_to_lps
        self.origin_anat = anatomy.rotation.T @ (np.asarray(geometry.origin) - anatomy.centre)

    def coords(self, box, anatomical=True):
        """float32 (x, y, z) arrays over an index box ((k0, k1), (j0, j1), (i0, i1)), computed in float64."""
        if anatomical:
            return grid_points(self.index_to_anat, self.origin_anat, box)
        return grid_points(self.index_to_lps, np.asarray(self.g.origin), box)

    def box_for(self, lo, hi, rows, margin=12.0):
        """Index box (within ``rows`` of k) holding every voxel centre inside an anatomical-frame box."""
        lo, hi = np.asarray(lo, float) - margin, np.asarray(hi, float) + margin
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        lps = corners @ self.a.rotation.T + self.a.centre
        ijk = (lps - np.asarray(self.g.origin)) @ self.lps_to_index.T
        first, last = np.floor(ijk.min(0)).astype(int), np.ceil(ijk.max(0)).astype(int) + 1
        nk, nj, ni = self.shape
        box = ((max(first[2], rows[0]), min(last[2], rows[1])), (max(first[1], 0), min(last[1], nj)),
               (max(first[0], 0), min(last[0], ni)))
        return None if any(b <= a for a, b in box) else box

    def ramp(self, d):
        """Partial-volume ramp width (mm): the voxel's extent across the iso-surface, plus the scanner blur."""
        return ramp_width(d, self.a.blur, self.g.spacing)

    @staticmethod
    def paint(hu, tissue, d, w, value, cls):
        occ = np.clip(0.5 - d / w, 0.0, 1.0)
        hu += occ * (value - hu)
        tissue[d < 0] = cls
        return occ

    def slab(self, k0, k1):
        nk, nj, ni = self.shape
        rows = (max(k0 - 1, 0), min(k1 + 1, nk))          # one halo slice for the gradients
        core = slice(k0 - rows[0], k0 - rows[0] + (k1 - k0))
        shape = (k1 - k0, nj, ni)
        hu = np.full(shape, self.a.hu["air"], np.float32)
        tissue = np.zeros(shape, np.uint8)
        label = np.zeros(shape, np.uint8)
        body_occ = self._body(rows, core, k0, hu, tissue)
        for side in self.a.sides:
            self._side(side, rows, k0, hu, tissue, label)
        self._sacrum(rows, k0, hu, tissue)
        for arm in self.a.arms:
            self._arm(arm, rows, k0, hu, tissue)
        if self.a.metal is not None:
            self._streaks(k0, k1, hu, body_occ)
        return hu, tissue, label

    def _region(self, lo, hi, rows, k0, hu):
        """Anatomical coordinates over the index box of an anatomical-frame box (with the gradient halo), the
        rows of that box inside the slab, and the slab view they paint; None when the slab misses it."""
        box = self.box_for(lo, hi, rows)
        if box is None:
            return None
        (b0, b1), (j0, j1), (i0, i1) = box
        c0, c1 = max(b0, k0), min(b1, k0 + hu.shape[0])
        if c1 <= c0:
            return None
        view = (slice(c0 - k0, c1 - k0), slice(j0, j1), slice(i0, i1))
        return self.coords(box), slice(c0 - b0, c1 - b0), view

    def _skin(self, q):
        b = self.a.body
        d = _ellipse_xy(q, b["centre"], b["semi"])
        bx, by, br = b["buttock"]
        for s in (-1, 1):
            d = _smin(d, _ellipse_xy(q, (s * bx, by), (br, br * 0.95)), 15.0)
        return d

    def _fascia(self, q, skin):
        """Muscle compartment under the subcutaneous fat (thicker posteriorly)."""
        b = self.a.body
        return skin + float(b["fat"]) * (1.0 + 0.6 * np.clip(q[1] / float(b["semi"][1]), 0.0, 1.0))

    def _body(self, rows, core, k0, hu, tissue):
        b, h = self.a.body, self.a.hu
        box = (rows, (0, self.shape[1]), (0, self.shape[2]))
        if b["table"]:
            self._table(box, core, hu, tissue)
        q = self.coords(box)
        d = self._skin(q)
        body_occ = self.paint(hu, tissue, d[core], self.ramp(d)[core], h["fat"], TISSUE["fat"])
        d = self._fascia(q, d)
        self.paint(hu, tissue, d[core], self.ramp(d)[core], h["muscle"], TISSUE["soft_tissue"])
        for centre, normal, thickness, semi in b["septa"]:
            region = self._region(centre - semi, centre + semi, rows, k0, hu)
            if region is not None:
                qs, inner, view = region
                d = np.maximum(np.abs(_plane(qs, centre, normal)) - thickness / 2, _ellipsoid(qs, centre, semi))
                d = np.maximum(d, self._fascia(qs, self._skin(qs)))   # intermuscular: stays under the fat layer
                self.paint(hu[view], tissue[view], d[inner], self.ramp(d)[inner], h["fat"], TISSUE["fat"])
        organs = [(_ellipsoid, b[key], value, cls) for key, value, cls in (
            ("pelvic_fat", h["pelvic_fat"], "fat"), ("bladder", h["bladder"], "soft_tissue"),
            ("rectum", h["rectum"], "soft_tissue"))]
        if b["gas"] is not None:
            organs.append((_sphere, b["gas"], h["air"] + 40.0, "gas"))
        for sdf, (centre, size), value, cls in organs:
            region = self._region(np.asarray(centre) - size, np.asarray(centre) + size, rows, k0, hu)
            if region is not None:
                qs, inner, view = region
                d = sdf(qs, centre, size)
                self.paint(hu[view], tissue[view], d[inner], self.ramp(d)[inner], value, TISSUE[cls])
        return body_occ

    def _table(self, box, core, hu, tissue):
        """Patient table in the scanner frame (does not follow the patient's pose): a shell around a foam core."""
        b = self.a.body
        back = self.a.to_lps((0.0, b["centre"][1] + b["semi"][1], 0.0))[1] + 4.0
        p = self.coords(box, anatomical=False)
        for grow, value, cls in ((0.0, self.a.hu["table_shell"], "table"), (-2.0, self.a.hu["table_core"], "table")):
            d = _box(p, (0.0, back + 12.0, 0.0), np.eye(3), (230.0, 12.0, 1e5), 4.0) - grow
            self.paint(hu, tissue, d[core], self.ramp(d)[core], value, TISSUE[cls])

    def _side(self, side: _Side, rows, k0, hu, tissue, label):
        region = self._region(*side.bounds(), rows, k0, hu)
        if region is None:
            return
        q, inner, view = region
        hu_v, tissue_v = hu[view], tissue[view]
        d_f = side.femur(q)
        d_p = side.pelvis(q, d_f)
        w_p = self.ramp(d_p)[inner]
        d_pc = d_p[inner]
        self.paint(hu_v, tissue_v, d_pc, w_p, side.hu_pelvis_cortex, TISSUE["pelvis_cortex"])
        self.paint(hu_v, tissue_v, d_pc + side.pelvis_cortex, w_p, side.hu_pelvis_marrow, TISSUE["pelvis_marrow"])
        metal = self.a.metal if self.a.metal is not None and self.a.sides[self.a.metal.side] is side else None
        if metal is not None and metal.cup is not None:
            r = _sphere(q, side.head, 0.0)
            inner_r, outer_r = metal.cup
            opening = side.cup[2]
            d = np.maximum(np.maximum(r - outer_r, inner_r - r), _plane(q, side.head, opening))
            self.paint(hu_v, tissue_v, d[inner], self.ramp(d)[inner], metal.hu, TISSUE["metal"])
        w_f = self.ramp(d_f)[inner]
        along = side.along_shaft(q)[inner]
        shaft_part = np.clip((along - 20.0) / 60.0, 0.0, 1.0)
        d_fc = d_f[inner]
        self.paint(hu_v, tissue_v, d_fc, w_f, side.hu_cortex, TISSUE["femur_cortex"])
        head_part = np.clip((_sphere(q, side.head, 0.0)[inner] - 0.8 * side.head_r) / (0.5 * side.head_r), 0.0, 1.0)
        thickness = side.head_cortex + (side.cortex - side.head_cortex) * head_part
        thickness += (side.shaft_cortex - side.cortex) * shaft_part
        marrow_hu = side.hu_trabecular + (side.hu_canal - side.hu_trabecular) * np.clip((along - 30.0) / 50.0, 0, 1)
        self.paint(hu_v, tissue_v, d_fc + thickness, w_f, marrow_hu, TISSUE["femur_marrow"])
        if metal is not None:
            d = _sphere(q, *metal.ball)
            for stem in metal.stem:
                d = _smin(d, _capsule(q, *stem), 3.0)
            self.paint(hu_v, tissue_v, d[inner], self.ramp(d)[inner], metal.hu, TISSUE["metal"])
        label[view][d_fc < 0] = side.value

    def _sacrum(self, rows, k0, hu, tissue):
        region = self._region((-45.0, 55.0, -40.0), (45.0, 125.0, 140.0), rows, k0, hu)
        if region is None:
            return
        q, inner, view = region
        d = None
        for kind, args in self.a.sacrum:
            part = _PRIMITIVES[kind](q, *args)
            d = part if d is None else _smin(d, part, 8.0)
        w = self.ramp(d)[inner]
        h = self.a.hu
        self.paint(hu[view], tissue[view], d[inner], w, h["sacrum_cortex"], TISSUE["pelvis_cortex"])
        self.paint(hu[view], tissue[view], d[inner] + 1.5, w, h["sacrum_marrow"], TISSUE["pelvis_marrow"])

    def _arm(self, arm: _Arm, rows, k0, hu, tissue):
        region = self._region(*arm.bounds(), rows, k0, hu)
        if region is None:
            return
        q, inner, view = region
        hu_v, tissue_v = hu[view], tissue[view]
        skin, bones = arm.distances(q)
        w = self.ramp(skin)[inner]
        self.paint(hu_v, tissue_v, skin[inner], w, self.a.hu["fat"], TISSUE["fat"])
        self.paint(hu_v, tissue_v, skin[inner] + arm.fat, w, self.a.hu["muscle"], TISSUE["soft_tissue"])
        w = self.ramp(bones)[inner]
        self.paint(hu_v, tissue_v, bones[inner], w, arm.hu_cortex, TISSUE["arm_cortex"])
        self.paint(hu_v, tissue_v, bones[inner] + arm.cortex, w, arm.hu_marrow, TISSUE["arm_marrow"])

    def _rows_between(self, k0, k1, zmin, zmax):
        """Sub-range of slab rows [k0, k1) holding voxel centres with LPS z in [zmin, zmax] (or None)."""
        nk, nj, ni = self.shape
        m = self.index_to_lps[2]
        corners = [m[0] * i + m[1] * j for i in (0, ni - 1) for j in (0, nj - 1)]
        z = self.g.origin[2] + m[2] * np.arange(k0, k1)
        hit = np.nonzero((z + max(corners) >= zmin) & (z + min(corners) <= zmax))[0]
        return None if hit.size == 0 else (k0 + int(hit[0]), k0 + int(hit[-1]) + 1)

    def _streaks(self, k0, k1, hu, body_occ):
        """In-plane (scanner axial) bright/dark lines radiating from the implant's ball and stem."""
        m = self.a.metal
        ball = self.a.to_lps(m.ball[0])
        stem_top, stem_end = self.a.to_lps(m.stem[1][0]), self.a.to_lps(m.stem[1][1])
        emitters = [(ball, ball, m.ball[1], 1.0), (stem_top, stem_end, 8.0, 0.45)]
        for top, bottom, radius, strength in emitters:
            zmin, zmax = min(top[2], bottom[2]) - radius, max(top[2], bottom[2]) + radius
            rows = self._rows_between(k0, k1, zmin, zmax)
            if rows is None:
                continue
            p = self.coords((rows, (0, self.shape[1]), (0, self.shape[2])), anatomical=False)
            if top is bottom:
                cx, cy = float(top[0]), float(top[1])
                weight = np.clip(1.0 - np.abs(p[2] - float(top[2])) / radius, 0.0, 1.0) ** 0.5
            else:
                t = np.clip((p[2] - float(top[2])) / float(bottom[2] - top[2]), 0.0, 1.0)
                cx = float(top[0]) + t * float(bottom[0] - top[0])
                cy = float(top[1]) + t * float(bottom[1] - top[1])
                weight = ((p[2] >= zmin) & (p[2] <= zmax)).astype(np.float32)
            dx, dy = p[0] - cx, p[1] - cy
            r = np.sqrt(dx * dx + dy * dy)
            fade = np.exp(-r / m.streak_decay) * weight * strength
            total = -250.0 * np.exp(-r / 12.0) * weight * strength   # dark halo next to the metal
            for angle, amp, width in zip(m.streak_angles, m.streak_amps, m.streak_width):
                perp = (dy * math.cos(angle) - dx * math.sin(angle)) / float(width)
                total += float(amp) * np.exp(-perp * perp) * fade
            sub = slice(rows[0] - k0, rows[1] - k0)
            hu[sub] += total * body_occ[sub]


def generate_case(seed: int, *, shape=None, spacing=None, direction=None, metal=None, arms=None) -> PhantomCase:
    """One phantom case; deterministic per seed.

    ``shape``: numpy (k, j, i) voxel counts; ``spacing``: (i, j, k) mm like ``Geometry``; ``direction``: 3x3
    orthonormal, columns the i, j, k axes in LPS. Missing ones are drawn (or derived so the field of view stays
    the default). ``metal``: True/False forces an implant, None draws one with probability 0.2; ``arms`` likewise
    forces the arms down beside the trunk or leaves them out (drawn with probability 0.4). The anatomy
    depends only on the seed, so different grids of one seed show the same patient.
    """
    seed = int(seed)
    if seed < 0:
        raise FemurUNetError(f"seed must be >= 0, got {seed}")
    anatomy_rng, grid_rng, noise_rng, arms_rng = np.random.default_rng(seed).spawn(4)
    anatomy = _make_anatomy(anatomy_rng)
    if metal is not None:
        anatomy.metal = anatomy.metal_params if metal else None
    anatomy.arms_params = _make_arms(arms_rng, anatomy.body)
    has_arms = arms_rng.random() < ARMS_PROBABILITY if arms is None else bool(arms)
    anatomy.arms = anatomy.arms_params if has_arms else []
    geometry, shape = _make_grid(grid_rng, anatomy, shape, spacing, direction)
    renderer = _Renderer(anatomy, geometry, shape)
    ct = np.empty(shape, np.int16)
    label = np.empty(shape, np.uint8)
    tissue = np.empty(shape, np.uint8)
    step = max(1, SLAB_VOXELS // (shape[1] * shape[2]))
    for k0 in range(0, shape[0], step):
        k1 = min(k0 + step, shape[0])
        hu, tissue[k0:k1], label[k0:k1] = renderer.slab(k0, k1)
        hu += noise_rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(anatomy.noise)
        ct[k0:k1] = np.clip(np.rint(hu), HU_MIN, HU_MAX)
    return PhantomCase(ct=ct, label=label, geometry=geometry, name=f"phantom{seed:04d}", tissue=tissue,
                       metal=anatomy.metal is not None, arms=bool(anatomy.arms))


# --- files and CLI ------------------------------------------------------------------------------------------
def write_case(case: PhantomCase, outdir) -> tuple:
    """Write ``<name>_ct.nii.gz`` (int16) and ``<name>_femur.nii.gz`` (uint8), both or neither; return both paths."""
    from .volume_io import write_image      # here: generating cases in memory needs no SimpleITK
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise FemurUNetError(f"{outdir}: exists and is not a folder")
    ct_path, label_path = outdir / f"{case.name}_ct.nii.gz", outdir / f"{case.name}_femur.nii.gz"
    try:
        with atomic_outputs():      # the CT and its truth appear together, or neither does
            write_image(ct_path, case.ct.astype(np.int16, copy=False), case.geometry)
            write_image(label_path, case.label.astype(np.uint8, copy=False), case.geometry)
    except (OSError, RuntimeError) as exc:
        reason = (str(exc).strip().splitlines() or ["write failed"])[-1][:160]
        raise FemurUNetError(f"{outdir}: cannot write the phantom files ({reason})") from None
    return ct_path, label_path
