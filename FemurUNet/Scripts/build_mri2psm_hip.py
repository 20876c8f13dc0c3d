"""Build the phantom's third hip bone shape (FemurUNetLib/anatomy/mri2psm_hip.npz) from the MRI2PSM mesh.

Usage: python FemurUNet/Scripts/build_mri2psm_hip.py [../shared/data/bone_meshes] [OUTDIR]

MRI2PSM's hip bone was segmented from Visible Human MRI (zlib licence, credit in NOTICE; its right and left are
mirror copies). It is thinner than the artist-built atlas hips (332 against 476-496 cm3). The script turns the
right one into a signed-distance volume like the atlas bones (build_bone_atlas.py), in its own frame converted to
LPS mm, and fits it onto each atlas body's right hip: the centre of its acetabulum (a sphere fitted to the socket)
on the body's femoral head centre, scaled so the socket has the radius of the body's femoral head (the phantom
then carves the drawn joint space), rotated about that centre to lie closest to the body's hip bone
(build_libhip_femurs.fit_onto), then stretched along x to meet its mirror image at the symphysis. It also stores
the fitted bone's atlas-frame box. Altered from the source: frame and units converted, signed distances computed,
scaled and placed (zlib licence, point 2).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from build_bone_atlas import quantise, signed_distance
from build_libhip_femurs import fit_onto, read_stl_lps, refit_sphere

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from FemurUNetLib.phantom2_anatomy import BODIES, load_body  # noqa: E402

MRI2PSM_TO_LPS = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])   # +x posterior, +y right, +z up
SOCKET_GUESS = (np.array([-95.5, 53.7, -79.7]), 23.0)   # LPS: SOURCE.md's head centre, about the head's radius
SYMPHYSIS_HALF_GAP = 2.0   # mm from the midline to the pubic symphysis's face (a 4 mm disc between the mirrored hips)


def read_mri2psm_stl(path) -> np.ndarray:
    """Triangles (N, 3, 3) of a binary STL in MRI2PSM's frame, converted to LPS mm."""
    return read_stl_lps(path) @ MRI2PSM_TO_LPS.T


def meet_at_symphysis(fit, points, head_x) -> tuple:
    """``fit`` followed by a stretch along x about the femoral head centre that puts the bone's most medial point
    (the symphysis) SYMPHYSIS_HALF_GAP from the midline: the atlas bodies' heads lie 189-210 mm apart, so the
    mirrored pair would otherwise overlap or leave a wide gap there. Returns (the 4x4, the stretch)."""
    medial = float((points @ fit[:3, :3].T + fit[:3, 3])[:, 0].max())
    stretch = np.eye(4)
    stretch[0, 0] = (-SYMPHYSIS_HALF_GAP - head_x) / (medial - head_x)
    stretch[0, 3] = head_x * (1.0 - stretch[0, 0])
    return stretch @ fit, float(stretch[0, 0])


def main(argv) -> int:
    root = Path(argv[1] if len(argv) > 1 else "../shared/data/bone_meshes") / "mri2psm_vh_pelvis"
    out = Path(argv[2] if len(argv) > 2 else Path(__file__).resolve().parents[1] / "FemurUNetLib" / "anatomy")
    tris = read_mri2psm_stl(root / "hip_right.stl")
    pts = np.unique(tris.reshape(-1, 3), axis=0)
    socket, radius = refit_sphere(pts, *SOCKET_GUESS, band=0.2)      # the acetabulum's sphere
    sdf, lo = signed_distance(tris)
    arrays = {"sdf": quantise(sdf), "origin": lo.astype(np.float32)}
    print(f"socket centre {np.round(socket, 1)} mm, radius {radius:.1f} mm; {(sdf < 0).sum() / 1000:.0f} ml")
    for body in BODIES:
        bones, marks = load_body(body)
        fit, resid = fit_onto(pts, socket, radius, bones["hip_right"], marks["head_right"], float(marks["head_radius"]))
        fit, stretch = meet_at_symphysis(fit, pts, float(marks["head_right"][0]))
        placed = pts @ fit[:3, :3].T + fit[:3, 3]
        arrays[f"to_{body}"] = fit.astype(np.float32)
        arrays[f"box_{body}"] = np.stack([placed.min(0), placed.max(0)]).astype(np.float32)
        lo_x, hi_x, lo_z, hi_z = placed[:, 0].min(), placed[:, 0].max(), placed[:, 2].min(), placed[:, 2].max()
        print(f"-> {body}: scale {float(marks['head_radius']) / radius:.3f}, x stretch {stretch:.3f}, "
              f"residual {resid:.2f} mm, x {lo_x:.1f}..{hi_x:.1f}, z {lo_z:.1f}..{hi_z:.1f}")
    np.savez_compressed(out / "mri2psm_hip.npz", **arrays)
    shutil.copyfile(root / "LICENSE_mri2psm_zlib.txt", out / "LICENSE_mri2psm_zlib.txt")
    print(f"{out / 'mri2psm_hip.npz'}: {(out / 'mri2psm_hip.npz').stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
