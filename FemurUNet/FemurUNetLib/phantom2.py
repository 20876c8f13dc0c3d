"""Phantom v2: CT-like synthetic cases on real bone shapes, with exact femur labels (``femurunet sample``).

A case is a new individual (``phantom2_anatomy``) in a scene of soft tissue, organs, vessels, spine, ribs,
arms and implants (``phantom2_scene``), scanned over a random coverage (pelvis, hip to knee, whole leg,
knee to ankle, abdomen to thigh, abdomen, chest) on a random grid, then put through scanner physics:
partial volume (a ramp as wide as the voxel across each surface; coarse in-plane grids are mostly rendered on a
finer native grid and resampled, ``phantom2_native``), in-plane PSF and slice profile, soft or
sharp kernel, correlated noise, cupping, metal artefacts from projections (``phantom2_metal``), field-of-view
cut-off and table.
The label is exact on any grid: ``label = femur signed distance < 0`` at each voxel centre, the same
function whatever the spacing, flips, permutation or obliquity (``femur_truth`` evaluates it anywhere).
"""
from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from .errors import FemurUNetError
from .geometry import Geometry, Reorientation
from .heap import freed_memory_kept
from .phantom import HU_MIN, HU_MAX, PhantomCase, _random_direction
from .phantom2_anatomy import LABEL, Individual, make_individual
from .phantom2_arthroplasty import draw_arthroplasty, with_arthroplasty
from .phantom2_hips import HIP_SHAPES, with_hip_shape
from .phantom2_libhip import with_real_femurs
from .phantom2_metal import add_metal_artefacts
from .phantom2_oa import oa_interior, osteoarthritic
from .phantom2_native import at_coarse_centres, draw_native, native_factors, native_grid, resampled
from .phantom2_body import (SKIN_PARTS, body_parts_bounds, cavity_distance, fat_thickness, septa_distance,
                            skin_distance)
from .phantom2_scene import build_scene, with_feet
from .sdf import _rotation, grid_points, ramp_width

COVERAGES = {"pelvis": 0.24, "hip_to_knee": 0.14, "whole_leg": 0.08, "knee_to_ankle": 0.12,
             "abdomen_to_thigh": 0.18, "abdomen": 0.12, "chest": 0.12}
ON_REQUEST = ("lower_leg",)     # never drawn by default: asked for by --coverage / --coverage-mix (a shin, no femur)
ALL_COVERAGES = (*COVERAGES, *ON_REQUEST)
FEMUR_FREE = ("abdomen", "chest", "lower_leg")
LEG_SCANS = ("whole_leg", "knee_to_ankle", "lower_leg")      # the coverages that reach the ankles (phantom2_feet)
FEET_MARGIN = 10.0      # mm below the lower ankle joint where ``PhantomCase.feet`` starts
MAX_SLICES = 320
SLAB_VOXELS = 1_500_000
BODY_MARGIN = 30.0      # mm around the body's parts and the table: the widest paint ramp reaches far less
CAVITY_ONLY = ("bowel",)
BODY_CUT_P = 0.1        # trunk scans whose field is narrower than the body
RESAMPLED_P = 0.1       # isotropic 1.5-3 mm voxels
CROPPED_P = 0.2         # a rectangular field: the front-back extent cropped to 65-100 % of the width
HIP_FIELD_P = 0.15      # pelvis and hip-to-knee scans reconstructed on one hip (orthopaedic CT)
HIP_FIELD_COVERAGES = ("pelvis", "hip_to_knee")
BELOW_KNEE = 30.0       # mm from the lower knee mark down to where a lower-leg scan may start


def coverage_range(rng, ind: Individual, scene, coverage) -> tuple:
    """Cranio-caudal range (anatomical z, mm) of a coverage; the ends are jittered so any cut can occur."""
    m, body = ind.marks, scene.body
    knee = 0.5 * (m["knee_left"][2] + m["knee_right"][2])
    ankle = 0.5 * (m["ankle_left"][2] + m["ankle_right"][2])
    low = ankle - body.get("feet", {}).get("below", 0.0)      # leg scans end at the ankle or run on into the foot
    j = lambda a, b: float(rng.uniform(a, b))
    ranges = {"pelvis": (j(-140, -60), j(80, 200)), "hip_to_knee": (knee - j(20, 90), j(-10, 140)),
              "whole_leg": (low - j(0, 30), j(0, 150)), "knee_to_ankle": (low - j(0, 30), knee + j(20, 140)),
              "abdomen_to_thigh": (j(-300, -120), j(250, 380)),
              "abdomen": (body["crest"] + j(20, 60), body["diaphragm"] + j(0, 80)),
              "chest": (body["diaphragm"] - j(20, 60), body["diaphragm"] + j(200, 300))}
    if coverage == "lower_leg":         # drawn after the others: every other scan keeps its draws
        below_knees = min(m["knee_left"][2], m["knee_right"][2]) - BELOW_KNEE     # under both femurs' condyles
        return low - j(0, 30), below_knees - j(0, 60)
    return ranges[coverage]


def draw_hip_field(rng, coverage):
    """A targeted one-hip field ({"side", "fov", "shift"}) for a share of pelvis and hip-to-knee scans, else None.
    Drawn from its own stream, the same number of draws for every coverage."""
    u, side, fov, shift = rng.random(), rng.random(), rng.uniform(150, 250), rng.uniform(-15, 15, 2)
    if coverage not in HIP_FIELD_COVERAGES or u >= HIP_FIELD_P:
        return None
    return {"side": "left" if side < 0.5 else "right", "fov": float(fov), "shift": shift}


def _aim_at_hip(centre, fov, rotation, marks, hip, coverage) -> tuple:
    """Centre and field of a targeted hip scan: on the femoral head (pelvis), or between it and the knee."""
    head, knee = (rotation @ marks[f"{m}_{hip['side']}"] for m in ("head", "knee"))
    aim = head if coverage == "pelvis" else 0.5 * (head + knee)
    centre[:2] = aim[:2] + hip["shift"]
    return centre, min(fov, hip["fov"])


def _draw_scan(rng, scene, coverage, hip=None) -> dict:
    """Field of view (mm), its centre in the scanner frame, matrix, slice spacing and the patient's rotation;
    ``hip``: a targeted one-hip field (``draw_hip_field``) put over the drawn one."""
    lo, hi = coverage_range(rng, scene.ind, scene, coverage)
    body, marks = scene.body, scene.ind.marks
    legs_only = coverage in ("knee_to_ankle", "lower_leg") or (coverage == "whole_leg" and rng.random() < 0.5)
    fov = float(rng.uniform(250, 420) if legs_only else max(rng.uniform(330, 500), 2 * body["sx"][1] + 20))
    if not legs_only and rng.random() < BODY_CUT_P:      # a wide patient: the field cuts the body's sides
        fov = max(300.0, 2 * body["sx"][1] * float(rng.uniform(0.85, 1.0)))
    fov = min(fov, 500.0)
    centre = np.array([rng.uniform(-30, 30), body["cy"] + rng.uniform(-25, 25), 0.5 * (lo + hi)])
    sides = ("left", "right")
    if legs_only and rng.random() < 0.35:       # one leg, small field of view
        sides = ("left" if rng.random() < 0.5 else "right",)
        fov = float(rng.uniform(160, 260))
    n_xy = int(rng.choice([192, 256, 320, 384, 512], p=[0.1, 0.3, 0.2, 0.15, 0.25]))
    s_z = float(rng.choice([0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0], p=[0.1, 0.2, 0.1, 0.15, 0.15, 0.2, 0.1]))
    if rng.random() < RESAMPLED_P:     # resampled to isotropic voxels (research pipelines, model inputs)
        s_z, n_xy = float(rng.uniform(1.5, 3.0)), 0
    crop_y = float(rng.uniform(0.65, 1.0)) if not legs_only and rng.random() < CROPPED_P else 1.0
    s_z = max(s_z, (hi - lo) / MAX_SLICES)
    rotation = _rotation(*np.radians(rng.uniform(-5, 5, 3)))
    jitter = centre[:2] - (0.0, body["cy"])
    centre = rotation @ centre
    if legs_only:               # aim at the legs as posed and rotated on the table
        legs = np.array([rotation @ marks[f"{j}_{s}"] for j in ("knee", "ankle") for s in sides])[:, :2]
        centre[:2] = 0.5 * (legs.min(0) + legs.max(0))
        if len(sides) == 2:
            need = float(np.ptp(legs, axis=0).max()) + 180.0
            fov = min(500.0, max(fov, need))
            centre[:2] += jitter if need <= 500.0 else 0.0      # legs spread wide: centred, no room to be off
    if hip is not None:
        centre, fov = _aim_at_hip(centre, fov, rotation, marks, hip, coverage)
    return {"fov": fov, "fov_y": fov * crop_y, "centre": centre, "resampled": n_xy == 0, "s_z": s_z,
            "n_xy": n_xy or max(16, int(round(fov / s_z))),
            "n_z": max(1, int(round((hi - lo) / s_z))), "rotation": rotation}


def make_grid(rng, scene, coverage, spacing=None, direction=None, shape=None, hip=None) -> tuple:
    """(Geometry, numpy shape, patient rotation, field of view) of an axial scan over the coverage. ``spacing``
    (i, j, k), ``direction`` and ``shape`` (numpy k, j, i) override the drawn ones; a shape alone keeps the
    drawn extent and derives the spacing. ``hip``: a targeted one-hip field (``draw_hip_field``)."""
    scan = _draw_scan(rng, scene, coverage, hip)
    use_random = rng.random() < 0.3
    random_direction = _random_direction(rng)
    direction = np.asarray((random_direction if use_random else np.eye(3)) if direction is None else direction, float)
    if direction.shape != (3, 3) or not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise FemurUNetError("direction must be an orthonormal 3x3 matrix (columns: i, j, k axes in LPS)")
    if shape is not None and (len(shape) != 3 or min(int(n) for n in shape) < 1):
        raise FemurUNetError(f"shape must be three positive voxel counts (k, j, i), got {tuple(shape)}")
    if spacing is not None and (len(spacing) != 3 or min(float(v) for v in spacing) <= 0):
        raise FemurUNetError(f"spacing must be three positive numbers (i, j, k) in mm, got {tuple(spacing)}")
    axis_world = np.abs(direction).argmax(axis=0)
    s_xy = scan["fov"] / scan["n_xy"]
    extent = np.array([scan["fov"], scan["fov_y"], scan["n_z"] * scan["s_z"]])[axis_world]   # per index axis
    world_s = np.array([s_xy, s_xy, scan["s_z"]])[axis_world]
    if shape is not None:
        n_ijk = np.array([int(n) for n in shape[::-1]])
        spacing = extent / n_ijk if spacing is None else np.asarray(spacing, float)
    else:
        spacing = world_s if spacing is None else np.asarray(spacing, float)
        n_ijk = np.maximum(1, np.rint(extent / spacing)).astype(int)
    half = direction @ (spacing * (n_ijk - 1) / 2)
    geometry = Geometry(tuple(float(v) for v in spacing), tuple(scan["centre"] - half), direction)
    return geometry, (int(n_ijk[2]), int(n_ijk[1]), int(n_ijk[0])), scan["rotation"], scan["fov"]


def _meet(box, other):
    """The index box where two meet (None if either is None or they do not meet)."""
    if box is None or other is None:
        return None
    box = tuple((max(a[0], b[0]), min(a[1], b[1])) for a, b in zip(box, other))
    return None if any(b <= a for a, b in box) else box


class Renderer:
    """Paints one slab of rows at a time: HU (float32) and the femur label."""

    def __init__(self, scene, geometry: Geometry, shape, rotation, tex_rng):
        self.s, self.g, self.shape, self.rotation = scene, geometry, shape, rotation
        self.index_to_lps = geometry.direction @ np.diag(geometry.spacing)
        self.lps_to_index = np.linalg.inv(self.index_to_lps)
        self.index_to_anat = rotation.T @ self.index_to_lps
        self.origin_anat = rotation.T @ np.asarray(geometry.origin)
        self.tex_key = int(tex_rng.integers(2**63))
        self.blur = 0.5 * min(geometry.spacing)
        self.body_parts = body_parts_bounds(scene.ind, scene.body)

    def coords(self, box) -> tuple:
        return grid_points(self.index_to_anat, self.origin_anat, box)

    def box_for(self, lo, hi, rows, margin=3.0):
        """Index box ((k0, k1), (j0, j1), (i0, i1)) within ``rows`` holding the anatomical box lo-hi; None if empty."""
        lo, hi = np.asarray(lo, float) - margin, np.asarray(hi, float) + margin
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        return self.index_box(corners @ self.rotation.T, rows)

    def rows_z_range(self, rows) -> tuple:
        """Anatomical z range of the voxel centres of ``rows``."""
        ends = [(0, self.shape[2] - 1), (0, self.shape[1] - 1), (rows[0], rows[1] - 1)]
        z = [(self.index_to_anat @ (i, j, k) + self.origin_anat)[2] for i in ends[0] for j in ends[1] for k in ends[2]]
        return min(z), max(z)

    def union_box(self, parts, rows, margin):
        """Index box within ``rows`` holding each anatomical box (lo, hi) of ``parts`` that reaches them (or None)."""
        z0, z1 = self.rows_z_range(rows)
        boxes = [self.box_for(np.maximum(lo, (-np.inf, -np.inf, z0 - margin)),
                              np.minimum(hi, (np.inf, np.inf, z1 + margin)), rows, margin)
                 for lo, hi in parts if lo[2] <= z1 + margin and hi[2] >= z0 - margin]
        boxes = [b for b in boxes if b is not None]
        if not boxes:
            return None
        return tuple((min(b[a][0] for b in boxes), max(b[a][1] for b in boxes)) for a in range(3))

    def index_box(self, corners_lps, rows):
        ijk = (np.asarray(corners_lps) - np.asarray(self.g.origin)) @ self.lps_to_index.T
        first, last = np.floor(ijk.min(0)).astype(int), np.ceil(ijk.max(0)).astype(int) + 1
        nk, nj, ni = self.shape
        box = ((max(first[2], rows[0]), min(last[2], rows[1])), (max(first[1], 0), min(last[1], nj)),
               (max(first[0], 0), min(last[0], ni)))
        return None if any(b <= a for a, b in box) else box

    def ramp(self, d, rows=None) -> np.ndarray:
        """Ramp widths of ``d`` (of its ``rows`` only: the same values as ``ramp(d)[rows]``)."""
        return ramp_width(d, self.blur, self.g.spacing, rows)

    @staticmethod
    def paint(hu, d, w, value) -> None:
        """``hu += clip(0.5 - d / w, 0, 1) * (value - hu)``: partial volume of the surface d = 0 (in place)."""
        occ = np.divide(d, w)
        np.subtract(0.5, occ, out=occ)
        np.clip(occ, 0.0, 1.0, out=occ)
        change = np.subtract(value, hu)
        change *= occ
        hu += change

    def slab(self, k0, k1) -> tuple:
        nk, nj, ni = self.shape
        tex = self.texture(k0, k1)
        rows = (max(k0 - 1, 0), min(k1 + 1, nk))
        hu = np.full((k1 - k0, nj, ni), self.s.hu["air"], np.float32)
        label = np.zeros(hu.shape, np.uint8)
        cavity = self._body_wall(rows, k0, hu, tex)
        for item in self.s.items:
            self._item(item, rows, k0, hu, label, tex, cavity)
        return hu, label

    def texture(self, k0, k1) -> np.ndarray:
        """Unit-variance tissue texture of rows k0-k1, drawn row by row (the same bits however rows are grouped)."""
        return row_noise(self.tex_key, k0, k1, self.shape[1:], 0.7 / self.g.spacing[0])

    def _body_wall(self, rows, k0, hu, tex):
        """Skin, fat, muscle, septa, cavity and table of the slab's rows, each within the index box that can hold
        it (beyond BODY_MARGIN nothing is painted); returns (cavity distance, its index box) or None."""
        h, body = self.s.hu, self.s.body
        parts = self.body_parts
        box = self.union_box([parts[k] for k in parts if k.startswith(SKIN_PARTS)], rows, BODY_MARGIN)
        cavity = None if box is None else self._body(box, rows, k0, hu, tex)
        table = body["table"]
        box = None if table is None else \
            self.union_box([((-230.0, table - 9.0, -np.inf), (230.0, table + 9.0, np.inf))], rows, BODY_MARGIN)
        if box is not None:
            q = self.coords(box)
            d_t = np.maximum(np.abs(q[1] - table) - 9.0, np.abs(q[0]) - 230.0)
            w = self._fill(box, k0, hu, d_t, h["table_shell"])
            self._fill(box, k0, hu, d_t + 2.0, h["table_core"], w)
        return cavity

    def _body(self, box, rows, k0, hu, tex):
        """Skin, fat, muscle, septa and cavity within the body's index box; returns (cavity distance, its box)."""
        h, body, ind = self.s.hu, self.s.body, self.s.ind
        q = self.coords(box)
        d = skin_distance(q, ind, body)
        w = self._fill(box, k0, hu, d, h["skin"])
        self._fill(box, k0, hu, d + 1.8, h["fat"], w)
        d_m = d + fat_thickness(q, body)
        self._fill(box, k0, hu, d_m, lambda view: h["muscle"] + 6.0 * tex[view])
        for side in LABEL:
            sub = self._part_box(f"septa_{side}", box, rows)
            if sub is not None:
                cut = self._cut(box, sub)
                qs = tuple(c[cut] for c in q)
                self._fill(sub, k0, hu, np.maximum(septa_distance(qs, ind, body, side), d_m[cut] + 3.0), h["fat"])
        sub = self._part_box("cavity", box, rows)
        if sub is None:
            return None
        cut = self._cut(box, sub)
        cavity = cavity_distance(tuple(c[cut] for c in q), body)
        self._fill(sub, k0, hu, np.maximum(cavity, d_m[cut] + 8.0), lambda view: h["visceral"] + 8.0 * tex[view])
        return cavity, sub

    def _part_box(self, part, box, rows):
        """The index box of a body part (``body_parts``) within ``box``; None if they do not meet."""
        return _meet(self.union_box([self.body_parts[part]], rows, BODY_MARGIN), box)

    @staticmethod
    def _cut(box, sub) -> tuple:
        """Slices of an array over ``box`` that hold the sub-box ``sub``."""
        return tuple(slice(s[0] - b[0], s[1] - b[0]) for s, b in zip(sub, box))

    def _fill(self, box, k0, hu, d, value, w=None) -> np.ndarray:
        """Paints the field ``d`` over index box ``box`` (its rows around the slab's included) into the slab's
        ``hu`` (from row k0); ``value``: HU, or a function of the painted view; ``w``: ramp widths to use (default:
        ``d``'s). Returns the ramp widths."""
        view, core = self._box_view(box, k0, hu)
        w = self.ramp(d, core) if w is None else w
        self.paint(hu[view], d[core], w, value(view) if callable(value) else value)
        return w

    @staticmethod
    def _box_view(box, k0, hu) -> tuple:
        """The view of the slab's ``hu`` (from row k0) that an index box paints, and the box's rows in that view."""
        (b0, b1), (j0, j1), (i0, i1) = box
        c0, c1 = max(b0, k0), max(min(b1, k0 + hu.shape[0]), max(b0, k0))
        return (slice(c0 - k0, c1 - k0), slice(j0, j1), slice(i0, i1)), slice(c0 - b0, c1 - b0)

    def _item(self, item, rows, k0, hu, label, tex, cavity) -> None:
        box = self.box_for(item.lo, item.hi, rows)
        if box is None:
            return
        view, inner = self._box_view(box, k0, hu)
        if inner.stop <= inner.start:
            return
        q = self.coords(box)
        d = self._item_distance(item, box, rows, q)
        if item.name.startswith(CAVITY_ONLY):
            d = np.maximum(d, self._cavity_over(box, q, cavity))
        w = self.ramp(d, inner)
        qi = tuple(c[inner] for c in q)
        if item.material.startswith("bone:"):
            self._bone(item, d[inner], w, qi, hu[view], tex[view])
        else:
            self.paint(hu[view], d[inner], w, self._value(item.material, tex[view]))
        if item.label:
            label[view][d[inner] < 0] = item.label

    def _item_distance(self, item, box, rows, q) -> np.ndarray:
        """``item.distance(q)`` over an index box; an item made of ``parts`` gets min(distance, BODY_MARGIN), each
        part evaluated within its own box only (beyond BODY_MARGIN nothing is painted, so the same image)."""
        parts = getattr(item.distance, "parts", None)
        if not parts or len(parts) == 1:
            return item.distance(q)
        d = np.full(q[0].shape, BODY_MARGIN, np.float32)
        for lo, hi, distance in parts:
            sub = _meet(self.box_for(lo, hi, rows, BODY_MARGIN), box)
            if sub is not None:
                cut = self._cut(box, sub)
                np.minimum(d[cut], distance(tuple(c[cut] for c in q)), out=d[cut])
        return d

    def _cavity_over(self, box, q, cavity) -> np.ndarray:
        """``cavity_distance(q)`` over an index box: sliced from the slab's (elementwise, so the same values)."""
        if cavity is not None and all(c[0] <= b[0] and b[1] <= c[1] for b, c in zip(box, cavity[1])):
            (b0, b1), (j0, j1), (i0, i1) = (tuple(v - c[0] for v in b) for b, c in zip(box, cavity[1]))
            return cavity[0][b0:b1, j0:j1, i0:i1]
        return cavity_distance(q, self.s.body)

    def _value(self, material, tex):
        h = self.s.hu
        if material == "stool":
            return h["stool"] + 120.0 * tex * (tex > 0.8) - 600.0 * (tex < -1.6)
        if material == "lung":
            return h["lung"] + 25.0 * tex + 500.0 * (tex > 2.2)
        return h[material] + {"organ": 8.0, "urine": 3.0}.get(material, 4.0) * tex

    def _head_density(self, q, centre) -> np.ndarray:
        """The femoral head's denser trabecular bone (its compressive trabeculae): the drawn factor from 4 mm
        inside the head's sphere, 1 from 4 mm outside it (the neck), a linear ramp between."""
        r = np.sqrt(sum((c - np.float32(x)) ** 2 for c, x in zip(q, centre)))
        inside = np.clip((np.float32(self.s.ind.head_radius + 4.0) - r) / np.float32(8.0), 0.0, 1.0)
        return np.float32(1.0) + np.float32(self.s.hu.get("head_density", 1.0) - 1.0) * inside

    def _bone(self, item, d, w, q, hu, tex) -> None:
        h, m = self.s.hu, self.s.ind.marks
        kind = item.material[5:]
        trabecular = h["trabecular"] * (1.0 + 0.35 * tex)
        thickness, interior = np.float32(1.2), trabecular
        long_bone = kind.split("_")[0] in ("femur", "tibia")
        if long_bone:
            side = kind.split("_")[1]
            top, bottom = (m[f"head_{side}"], m[f"knee_{side}"]) if kind.startswith("femur") else \
                (m[f"knee_{side}"], m[f"ankle_{side}"])
            t = (q[2] - bottom[2]) / max(top[2] - bottom[2], 1.0)
            shaft = np.clip(np.minimum((t - 0.12) / 0.15, (0.82 - t) / 0.12), 0.0, 1.0)
            end = np.float32(self.s.body.get("end_cortex", 1.2))     # subchondral plate: faint at 3 mm voxels
            thickness = end + shaft * np.float32(1.2 + self.s.body.get("shaft_cortex", 5.0) - end)
            interior = trabecular + shaft * (h["canal"] + 15.0 * tex - trabecular)
            if kind.startswith("femur"):
                interior = interior * self._head_density(q, m[f"head_{side}"])
        elif kind in ("arm", "rib"):
            thickness = np.float32(2.5 if kind == "arm" else 1.0)
        if self.s.oa and kind.split("_")[0] in ("femur", "hip"):
            side = kind.split("_")[1]
            interior = oa_interior(interior, q, kind.startswith("femur"), self.s.oa[side], side, m[f"head_{side}"],
                                   self.s.ind.head_radius, self.s.ind.hip_gap[side], tex)
        self.paint(hu, d, w, h["cortex"] + 40.0 * tex)
        self.paint(hu, d + thickness, w, interior)


# --- scanner physics ------------------------------------------------------------------------------------------
def row_noise(key, k0, k1, shape, sigma) -> np.ndarray:
    """Gaussian-filtered white noise (in-plane ``sigma`` voxels) of rows k0-k1, each row drawn from its own stream
    of ``key`` and scaled to unit standard deviation, so any grouping of rows gives the same bits."""
    out = np.empty((k1 - k0,) + tuple(shape), np.float32)
    for k in range(k0, k1):
        row = np.random.default_rng([key, k]).standard_normal(shape, dtype=np.float32)
        ndimage.gaussian_filter(row, sigma, output=out[k - k0])
        out[k - k0] /= max(float(out[k - k0].std()), 1e-6)
    return out


def draw_scanner(rng) -> dict:
    sharp = rng.random() < 0.35
    return {"psf_mm": float(rng.uniform(0.3, 0.8)), "profile": float(rng.uniform(0.3, 0.6)),
            "sharpen": float(rng.uniform(0.3, 1.0)) if sharp else 0.0,
            "noise": float(rng.uniform(15, 60) if sharp else rng.uniform(4, 30)),
            "noise_grain_mm": float(rng.uniform(0.4, 1.0)), "cupping": float(rng.uniform(0, 35)),
            "metal_artifact": float(rng.uniform(0.2, 1.0))}


def radius_squared(spacing, shape) -> np.ndarray:
    """Squared distance (mm^2) of each pixel of an axial slice (``shape`` j, i; ``spacing`` i, j mm) from its centre."""
    nj, ni = shape
    y, x = np.mgrid[0:nj, 0:ni].astype(np.float32)
    return ((x - (ni - 1) / 2) * spacing[0]) ** 2 + ((y - (nj - 1) / 2) * spacing[1]) ** 2


def outside_field(spacing, shape, fov) -> np.ndarray:
    """Pixels of an axial slice outside the reconstruction circle of diameter ``fov`` mm."""
    return radius_squared(spacing, shape) > (fov / 2) ** 2


def scanner_physics(hu, geometry: Geometry, rng, scanner, fov, threads: int = 1) -> np.ndarray:
    """PSF and slice profile, kernel, cupping, correlated noise, field-of-view cut-off (in place; ``threads``
    share the work with the same bits as one)."""
    sp, (nk, nj, ni) = geometry.spacing, hu.shape
    noise_key = int(rng.integers(2**63))
    rr = radius_squared(sp, (nj, ni))
    cupping = scanner["cupping"] * np.clip(1.0 - rr / (fov / 2) ** 2, 0, 1)
    outside = rr > (fov / 2) ** 2
    profile = scanner["profile"] * sp[2] / max(sp[2], 1e-6)

    def along_slices(j0, j1):           # the slice profile: axis 0 only, so any split of the other axes
        view = hu[:, j0:j1]
        ndimage.gaussian_filter1d(view, profile, axis=0, output=view)

    def in_plane(k0, k1):               # everything else works within axial slices
        view = hu[k0:k1]
        ndimage.gaussian_filter(view, (0, scanner["psf_mm"] / sp[1], scanner["psf_mm"] / sp[0]), output=view)
        if scanner["sharpen"]:
            view += scanner["sharpen"] * (view - ndimage.gaussian_filter(view, (0, 1.2, 1.2)))
        view -= cupping[None] * (view > -500)
        grain = scanner["noise_grain_mm"] / sp[0]
        view += row_noise(noise_key, k0, k1, (nj, ni), grain) * np.float32(scanner["noise"])
        view[:, outside] = HU_MIN

    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(lambda j: along_slices(j, min(j + 32, nj)), range(0, nj, 32)))
        list(pool.map(lambda k: in_plane(k, min(k + 8, nk)), range(0, nk, 8)))
    return hu


# --- cases ----------------------------------------------------------------------------------------------------
_ACTIVE = None     # the renderer a forked worker paints with


def _slab_job(k0, k1):
    return _ACTIVE.slab(k0, k1)


def default_jobs() -> int:
    return max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def render(renderer: Renderer, shape, jobs: int) -> tuple:
    """HU and label of every slab, painted by ``jobs`` processes (the same bits as one)."""
    global _ACTIVE
    step = max(1, min(SLAB_VOXELS // (shape[1] * shape[2]), -(-shape[0] // (4 * jobs))))   # 4 slabs a job at least
    slabs = [(k0, min(k0 + step, shape[0])) for k0 in range(0, shape[0], step)]
    hu, label = np.empty(shape, np.float32), np.empty(shape, np.uint8)
    if jobs > 1 and len(slabs) > 1 and "fork" in multiprocessing.get_all_start_methods():
        _ACTIVE = renderer
        try:
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = [pool.submit(_slab_job, k0, k1) for k0, k1 in slabs]
                for (k0, k1), future in zip(slabs, futures):
                    hu[k0:k1], label[k0:k1] = future.result()
        finally:
            _ACTIVE = None
        return hu, label
    for k0, k1 in slabs:
        hu[k0:k1], label[k0:k1] = renderer.slab(k0, k1)
    return hu, label


def _streams(seed):
    seed = int(seed)
    if seed < 0:
        raise FemurUNetError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([seed, 2]).spawn(12)    # later streams (femur shapes, native grid, hip field, hip
                                                         # bones, feet, osteoarthritis, arthroplasty): the first stay


def _scene(anatomy_rng, femur_rng, hips_rng, feet_rng, hips=None):
    individual = with_hip_shape(make_individual(anatomy_rng), hips_rng, hips)
    return with_feet(build_scene(anatomy_rng, with_real_femurs(individual, femur_rng)), feet_rng)


def _scanned(scene, grid, rotation, rngs, scanner, fov, jobs) -> tuple:
    """HU (after metal artefacts and scanner physics) and label of ``scene`` on ``grid`` (Geometry, shape)."""
    (geometry, shape), (tex_rng, noise_rng) = grid, rngs
    hu, label = render(Renderer(scene, geometry, shape, rotation, tex_rng), shape, jobs)
    axial = Reorientation.for_geometry(geometry)      # views: physics runs in the scanner's axial frame
    axial_spacing = axial.canonical_spacing(geometry)
    add_metal_artefacts(axial.to_canonical(hu), axial_spacing, noise_rng, scanner["metal_artifact"], jobs)
    scanner_physics(axial.to_canonical(hu), Geometry(axial_spacing), noise_rng, scanner, fov, jobs)
    return hu, label


def in_the_feet(scene, geometry, shape, rotation, margin=FEET_MARGIN) -> np.ndarray:
    """bool (k, j, i): voxel centres more than ``margin`` mm below the lower ankle joint (anatomical z), where
    every femur label is wrong."""
    ankle = min(scene.ind.marks[f"ankle_{side}"][2] for side in LABEL)
    slope = rotation.T[2] @ (geometry.direction @ np.diag(geometry.spacing))     # anatomical z per (i, j, k) step
    z0 = float(rotation.T[2] @ np.asarray(geometry.origin, float))
    k, j, i = (np.arange(n, dtype=np.float64) for n in shape)
    in_plane = (slope[1] * j)[:, None] + (slope[0] * i)[None, :]
    return in_plane[None] < (ankle - margin - z0 - slope[2] * k)[:, None, None]


def make_scene(seed: int, oa: bool = False, tha: bool = False, hips=None):
    """The seed's scene: its individual, tissues and structures; ``oa``, ``tha``, ``hips``: as ``generate_case``."""
    streams = _streams(seed)
    return _options(_scene(streams[0], streams[5], streams[8], streams[9], hips), streams, oa, tha)


def _options(scene, streams, oa: bool, tha: bool):
    """``scene`` with the on-request changes: osteoarthritic hips, then a hip arthroplasty (it cuts the femur): the
    scene's own (12 % of cases) or, with ``tha``, one from the twelfth stream in its place."""
    if oa:
        osteoarthritic(scene, streams[10])
    if tha:
        scene.flags["arthroplasty"] = draw_arthroplasty(streams[11])
    if "arthroplasty" in scene.flags:
        with_arthroplasty(scene, scene.flags["arthroplasty"])
    return scene


def femur_truth(seed: int, points_anat, oa: bool = False, tha: bool = False) -> np.ndarray:
    """uint8 label (1 left, 2 right, 0 none) of a seed's individual at anatomical-frame points (x, y, z);
    ``oa``, ``tha``: with its osteoarthritic hips' osteophytes, its hip arthroplasty (as ``generate_case``)."""
    scene = make_scene(seed, oa, tha)
    label = np.zeros(np.shape(points_anat[0]), np.uint8)
    for item in (i for i in scene.items if i.label):
        label[item.distance(points_anat) < 0] = item.label
    return label


def scanner_settings(rng, overrides=None) -> dict:
    """The drawn scanner (``draw_scanner``) with ``overrides`` (a dict of its keys) put over it; the draw is made
    either way, so the rest of the case does not change."""
    return _overridden(draw_scanner(rng), overrides, "scanner", minimum=0.0)


def tissue_settings(hu: dict, overrides=None) -> dict:
    """The drawn tissue values (``draw_hu``: HU, and ``head_density``) with ``overrides`` put over them."""
    numeric = {k: v for k, v in hu.items() if isinstance(v, float)}
    return {**hu, **_overridden(numeric, overrides, "tissue", minimum=-math.inf)}


def _overridden(drawn: dict, overrides, what: str, minimum: float) -> dict:
    unknown = sorted(set(overrides or {}) - set(drawn))
    if unknown:
        raise FemurUNetError(f"unknown {what} setting(s) {', '.join(unknown)}; known: {', '.join(drawn)}")
    for key, value in (overrides or {}).items():
        if not math.isfinite(float(value)) or float(value) < minimum:
            bound = " >= 0" if minimum == 0 else ""
            raise FemurUNetError(f"{what} setting {key} must be a finite number{bound}, got {value!r}")
        drawn[key] = float(value)
    return drawn


def generate_case(seed: int, *, shape=None, spacing=None, direction=None, coverage=None, jobs=None,
                  scanner=None, tissue=None, hips=None, oa: bool = False, tha: bool = False) -> PhantomCase:
    """One phantom v2 case, deterministic per seed (the individual depends on the seed only, so every grid of
    a seed shows the same patient). ``coverage``: one of ALL_COVERAGES (drawn from COVERAGES when None);
    ``spacing`` (i, j, k) mm and ``direction`` (3x3, columns i, j, k in LPS) override the drawn grid; ``shape``
    (numpy k, j, i) keeps the drawn field of view and coverage and derives the spacing. ``jobs``: processes painting
    slabs (default: up to 2 CPUs); the result does not depend on it. ``scanner``: fixed scanner settings over the
    drawn ones (keys of ``draw_scanner``: e.g. ``{"noise": 90, "sharpen": 1.0}``, a low-dose scan with a sharp
    kernel). ``tissue``: fixed tissue values over the drawn ones (numeric keys of ``draw_hu``: e.g.
    ``{"cortex": 900}``). ``hips``: the hip bones' shape (one of HIP_SHAPES) over the drawn one; the rest of the
    case stays as drawn. ``oa``: osteoarthritic hips (``phantom2_oa``; osteophytes on a femur are labelled).
    ``tha``: a total hip arthroplasty on one side (``phantom2_arthroplasty``; the component is labelled femur) in place
    of the one 12 % of scenes draw."""
    streams = _streams(seed)
    anatomy_rng, grid_rng, tex_rng, noise_rng, cov_rng, femur_rng, native_rng, hip_rng, hips_rng, feet_rng = \
        streams[:10]
    scanner = scanner_settings(noise_rng, scanner)        # noise_rng's first draw: checked before the painting
    if hips is not None and hips not in HIP_SHAPES:
        raise FemurUNetError(f"hips must be one of {', '.join(HIP_SHAPES)}, got {hips!r}")
    scene = _options(_scene(anatomy_rng, femur_rng, hips_rng, feet_rng, hips), streams, oa, tha)
    if tissue:
        scene.hu = tissue_settings(scene.hu, tissue)
    if coverage is None:
        coverage = str(cov_rng.choice(list(COVERAGES), p=list(COVERAGES.values())))
    if coverage not in ALL_COVERAGES:
        raise FemurUNetError(f"coverage must be one of {', '.join(ALL_COVERAGES)}, got {coverage!r}")
    hip = draw_hip_field(hip_rng, coverage)
    geometry, shape, rotation, fov = make_grid(grid_rng, scene, coverage, spacing, direction, shape, hip)
    native = draw_native(native_rng)
    factors = native_factors(geometry, shape) if native["native"] else None
    grid = (geometry, shape) if factors is None else native_grid(geometry, shape, factors)
    jobs = default_jobs() if jobs is None else int(jobs)
    with freed_memory_kept():
        hu, label = _scanned(scene, grid, rotation, (tex_rng, noise_rng), scanner, fov, jobs)
        if factors is not None:
            hu, label = resampled(hu, factors, native["antialias"]), at_coarse_centres(label, factors)
    axial = Reorientation.for_geometry(geometry)
    axial_spacing = axial.canonical_spacing(geometry)
    ct = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
    axial_label = axial.to_canonical(label)         # a view: outside the reconstructed field of view, no label
    axial_label[:, outside_field(axial_spacing, axial_label.shape[1:], fov)] = 0
    feet = in_the_feet(scene, geometry, ct.shape, rotation) if coverage in LEG_SCANS else None
    return PhantomCase(ct=ct, label=label, geometry=geometry, name=f"phantom{seed:04d}", feet=feet,
                       metal=bool(scene.metal_points), arms=any(i.name.startswith("arm") for i in scene.items),
                       coverage=coverage, body=scene.ind.body, femurs=scene.ind.femurs,
                       hip_field=hip["side"] if hip else "", hips=scene.ind.hips, oa=bool(scene.oa),
                       tha="arthroplasty" in scene.flags)
