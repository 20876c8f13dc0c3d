"""Real proximal femurs for phantom v2: LibHip's femurs of 4 men, segmented from clinical CT.

The atlas femurs of the two Visible Human bodies are artist-built, so every phantom femur had one of two head,
neck and trochanter shapes. ``anatomy/libhip.npz`` (built by ``Scripts/build_libhip_femurs.py``; credit in
NOTICE) holds 7 proximal femurs (88-175 mm long, cut flat below the trochanters), each fitted onto each body's
right femur (head centre on head centre, the same head radius, rotated about the head to lie closest). A
drawn share of individuals get one man's femurs (the mirror of his other side where one is missing): above the
cut the bone is his, below it the atlas femur, blended over ``BLEND`` mm. The label stays exact: it is the
blended bone's own signed distance < 0, like every other phantom bone.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .phantom2_anatomy import ATLAS_DIR, SDF_STEP, Bone, affine_points, box_through

LIBHIP_P = 0.5                 # share of individuals with real proximal femurs
BLEND = (10.0, 40.0)           # mm above the cut: the atlas femur below the first, LibHip's above the second
MIRROR_X = np.diag([-1.0, 1.0, 1.0, 1.0])


@dataclass
class RealFemur:
    bone: Bone                 # signed distance in the femur's own CT frame (LPS mm)
    cut: float                 # z (mm) of its flat distal cut
    to_body: dict              # atlas body -> 4x4 own frame -> body's right-femur atlas frame


@lru_cache(maxsize=1)
def load_real_femurs() -> dict:
    """name ('m3_left', ...) -> RealFemur."""
    with np.load(ATLAS_DIR / "libhip.npz") as z:
        return {n: RealFemur(Bone(z[f"{n}__sdf"].astype(np.float32) * SDF_STEP, z[f"{n}__origin"].astype(float)),
                             float(z[f"{n}__cut"]),
                             {k.split("__to_")[1]: z[k].astype(float) for k in z.files if k.startswith(f"{n}__to_")})
                for n in (str(s) for s in z["names"])}


def subjects() -> list:
    return sorted({name.split("_")[0] for name in load_real_femurs()})


@dataclass
class BlendedFemur:
    """Atlas femur below, a real proximal femur above (same interface as ``Bone``: atlas-frame points)."""
    atlas: Bone
    real: Bone
    to_real: np.ndarray        # 4x4 atlas frame -> the real femur's own frame
    cut: float
    name: str

    @property
    def bounds(self):
        r_lo, r_hi = box_through(np.linalg.inv(self.to_real), *self.real.bounds)
        a_lo, a_hi = self.atlas.bounds
        return np.minimum(a_lo, r_lo), np.maximum(a_hi, r_hi)

    def distance(self, a) -> np.ndarray:
        v = affine_points(self.to_real, a)
        lo, hi = BLEND
        w = np.clip((v[2] - np.float32(self.cut + lo)) / np.float32(hi - lo), 0.0, 1.0)
        d = np.empty(np.shape(w), np.float32)
        low, high = w < 1.0, w > 0.0
        d[low] = self.atlas.distance([c[low] for c in a])
        real = self.real.distance([c[high] for c in v])
        d[high] = w[high] * real + (1.0 - w[high]) * np.where(low[high], d[high], 0.0)
        return d


def with_real_femurs(ind, rng):
    """``ind`` with one drawn man's proximal femurs in a LIBHIP_P share of draws (one draw of ``rng``)."""
    if rng.random() < LIBHIP_P:
        names = subjects()
        subject = names[int(rng.integers(len(names)))]
        ind.bones = {**ind.bones, **real_femurs(subject, ind.body, ind.bones)}
        ind.femurs = subject
    return ind


def real_femurs(subject: str, body: str, atlas_bones: dict) -> dict:
    """{'femur_left': BlendedFemur, 'femur_right': ...}: one man's femurs on an atlas body."""
    femurs = load_real_femurs()
    out = {}
    for side in ("left", "right"):
        other = "right" if side == "left" else "left"
        name = f"{subject}_{side}" if f"{subject}_{side}" in femurs else f"{subject}_{other}"
        real = femurs[name]
        to_atlas = real.to_body[body] if side == "right" else MIRROR_X @ real.to_body[body]
        out[f"femur_{side}"] = BlendedFemur(atlas_bones[f"femur_{side}"], real.bone, np.linalg.inv(to_atlas),
                                            real.cut, name)
    return out
