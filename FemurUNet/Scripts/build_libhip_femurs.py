"""Build the phantom's real proximal femurs (FemurUNetLib/anatomy/libhip.npz) from the LibHip meshes.

Usage: python FemurUNet/Scripts/build_libhip_femurs.py [../shared/data/bone_meshes] [OUTDIR]

LibHip's 7 proximal femurs (4 men, segmented from clinical CT; MIT licence, credit in NOTICE) become signed-
distance volumes like the Visible Human bones (build_bone_atlas.py), each in its own CT frame (LPS mm). For
each atlas body the script fits every femur, mirrored to a right femur when it is a left one, onto the body's
right femur: its head centre onto the body's, scaled so the heads have the same radius (the acetabulum stays
seated), rotated about the head centre to lie closest to the body's femur. The phantom blends it into the
body's femur above its distal cut (phantom2_libhip.py).
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation

from build_bone_atlas import quantise, signed_distance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from FemurUNetLib.phantom2_anatomy import BODIES, load_body  # noqa: E402

CLIP = 8.0          # mm: distances beyond this count as this in the fit (shapes differ)


def read_stl_lps(path) -> np.ndarray:
    """Triangles (N, 3, 3) of a binary STL already in LPS mm (LibHip's CT frames)."""
    data = Path(path).read_bytes()
    n = struct.unpack("<I", data[80:84])[0]
    rec = np.frombuffer(data[84:84 + 50 * n], dtype=np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]))
    return rec["v"].astype(np.float64)


def fit_head(points) -> tuple:
    """(centre, radius) of the femoral head: a sphere fitted to the top of the bone, then to the surface points
    nearest to it (the neck and trochanters trimmed away)."""
    top = points[:, 2].max()
    cap = points[points[:, 2] > top - 12]
    return refit_sphere(points, np.array([*cap[:, :2].mean(0), top - 24.0]), 24.0, band=0.25)


def refit_sphere(points, centre, radius, band) -> tuple:
    """(centre, radius) of a sphere refitted 12 times to the points within ``band`` x radius of the last one
    (the 60 % nearest of those: the rest of the bone trimmed away)."""
    for _ in range(12):
        dist = np.linalg.norm(points - centre, axis=1)
        near = points[np.abs(dist - radius) < band * radius]
        resid = np.abs(np.linalg.norm(near - centre, axis=1) - radius)
        near = near[resid <= np.quantile(resid, 0.6)]
        a = np.hstack([2 * near, np.ones((len(near), 1))])
        sol = np.linalg.lstsq(a, (near ** 2).sum(1), rcond=None)[0]
        centre, radius = sol[:3], float(np.sqrt(sol[3] + sol[:3] @ sol[:3]))
    return centre, radius


def fit_onto(points, head, radius, target, target_head, target_radius) -> tuple:
    """4x4 (source frame -> atlas frame) putting the head on the target's, the same radius, rotated about the
    head to minimise the clipped squared distance of ``points`` to the target bone; and its residual (mm)."""
    scale = target_radius / radius
    local = (points - head) * scale

    def placed(rotvec):
        return Rotation.from_rotvec(rotvec).apply(local) + target_head

    def cost(rotvec):
        return float(np.mean(np.minimum(np.abs(_distance(target, placed(rotvec))), CLIP) ** 2))
    best = min((optimize.minimize(cost, np.array([0.0, 0.0, z]), method="Powell") for z in (-0.4, 0.0, 0.4)),
               key=lambda r: r.fun)
    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(best.x).as_matrix() * scale
    m[:3, 3] = target_head - m[:3, :3] @ head
    return m, float(np.sqrt(best.fun))


def _distance(bone, pts) -> np.ndarray:
    """Like ``Bone.distance`` but in float64 with edge values outside the box: the fits in the shipped file were
    made with this lookup (Bone.distance moves them by up to 0.04 mm)."""
    idx = (pts - bone.origin)[:, ::-1].T
    return ndimage.map_coordinates(bone.sdf, idx, order=1, mode="nearest")


def main(argv) -> int:
    root = Path(argv[1] if len(argv) > 1 else "../shared/data/bone_meshes") / "libhip_proximal_femurs"
    out = Path(argv[2] if len(argv) > 2 else Path(__file__).resolve().parents[1] / "FemurUNetLib" / "anatomy")
    arrays, names = {}, []
    for path in sorted(root.glob("m*/femur_*.stl")):
        name = f"{path.parent.name}_{path.stem.split('_')[1]}"
        tris = read_stl_lps(path)
        pts = tris.reshape(-1, 3)
        mirror = np.diag([-1.0, 1.0, 1.0]) if name.endswith("left") else np.eye(3)
        head, radius = fit_head(pts @ mirror)
        sdf, lo = signed_distance(tris)
        arrays[f"{name}__sdf"], arrays[f"{name}__origin"] = quantise(sdf), lo.astype(np.float32)
        arrays[f"{name}__cut"] = np.float32(pts[:, 2].min())
        sample = (pts @ mirror)[::17]
        sample = sample[sample[:, 2] > pts[:, 2].min() + 15.0]         # not the flat distal cut
        for body in BODIES:
            bones, marks = load_body(body)
            fit, resid = fit_onto(sample, head, radius, bones["femur_right"], marks["head_right"],
                                  float(marks["head_radius"]))
            arrays[f"{name}__to_{body}"] = (fit @ np.diag([*np.diag(mirror), 1.0])).astype(np.float32)
            print(f"{name} -> {body}: head r {radius:.1f} mm, scale {np.linalg.norm(fit[:3, 0]):.3f}, "
                  f"residual {resid:.2f} mm")
        names.append(name)
        print(f"{name}: {sdf.shape[::-1]} voxels, {(sdf < 0).sum() / 1000:.0f} ml")
    arrays["names"] = np.array(names)
    np.savez_compressed(out / "libhip.npz", **arrays)
    print(f"{out / 'libhip.npz'}: {(out / 'libhip.npz').stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
