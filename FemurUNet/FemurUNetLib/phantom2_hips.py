"""A third hip bone shape for phantom v2: MRI2PSM's hip bone, segmented from Visible Human MRI.

The atlas hip bones are artist-built and thick (476-496 cm3 each, where adult hip bones have about 250-350 cm3),
so every phantom acetabulum had one of two thick walls around the femoral head. ``anatomy/mri2psm_hip.npz``
(built by ``Scripts/build_mri2psm_hip.py``; zlib licence, credit in NOTICE) holds one thinner right hip bone
(332 cm3) fitted onto each atlas body: its socket on the body's femoral head centre, the socket's radius that of
the head, rotated to lie closest to the body's hip bone and stretched along x to meet its mirror image at the
symphysis. A drawn share of individuals get it on both sides (the left one mirrored, as MRI2PSM's own left is);
the body's carve of the hip joint space applies to it as to the atlas hips. Only negatives change: the femur
label does not depend on the hip bones.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .phantom2_anatomy import ATLAS_DIR, SDF_STEP, Bone, affine_points, pelvis_halfwidth
from .phantom2_libhip import MIRROR_X

MRI_HIP_P = 1.0 / 3.0          # share of individuals with MRI2PSM's hip bones
HIP_SHAPES = ("atlas", "mri2psm")


@dataclass
class PlacedBone:
    """A bone stored in its own frame, placed in an atlas frame (the interface of ``Bone``: atlas-frame points)."""
    bone: Bone
    to_own: np.ndarray         # 4x4 atlas frame -> the bone's own frame
    bounds: tuple              # (lo, hi) atlas-frame box of the placed bone

    def distance(self, a) -> np.ndarray:
        return self.bone.distance(affine_points(self.to_own, a))


@lru_cache(maxsize=1)
def _load() -> tuple:
    """(Bone in MRI2PSM's own LPS frame, {body: 4x4 own -> atlas right hip}, {body: (lo, hi) atlas box})."""
    with np.load(ATLAS_DIR / "mri2psm_hip.npz") as z:
        bone = Bone(z["sdf"].astype(np.float32) * SDF_STEP, z["origin"].astype(float))
        fits = {k[3:]: z[k].astype(float) for k in z.files if k.startswith("to_")}
        boxes = {k[4:]: z[k].astype(float) for k in z.files if k.startswith("box_")}
    return bone, fits, boxes


def mri2psm_hips(body: str) -> dict:
    """{'hip_left': PlacedBone, 'hip_right': PlacedBone} of MRI2PSM's hip bone on atlas ``body``."""
    bone, fits, boxes = _load()
    lo, hi = boxes[body]
    mirrored_lo, mirrored_hi = np.array([-hi[0], lo[1], lo[2]]), np.array([-lo[0], hi[1], hi[2]])
    return {"hip_right": PlacedBone(bone, np.linalg.inv(fits[body]), (lo, hi)),
            "hip_left": PlacedBone(bone, np.linalg.inv(MIRROR_X @ fits[body]), (mirrored_lo, mirrored_hi))}


def with_hip_shape(ind, rng, shape=None):
    """``ind`` with MRI2PSM's hip bones in a MRI_HIP_P share of draws (one draw of ``rng``, made whatever
    ``shape`` says, so a forced shape leaves the rest of the seed's case as drawn); ``shape`` one of HIP_SHAPES."""
    drawn = HIP_SHAPES[1] if rng.random() < MRI_HIP_P else HIP_SHAPES[0]
    shape = shape or drawn
    if shape == "mri2psm":
        ind.bones = {**ind.bones, **mri2psm_hips(ind.body)}
        ind.marks["pelvis_halfwidth"] = pelvis_halfwidth(ind.bones, ind.marks["scale"])
    ind.hips = shape
    return ind
