"""Build the phantom's bone atlas (FemurUNetLib/anatomy/*.npz) from the real-bone STL meshes.

Usage: python FemurUNet/Scripts/build_bone_atlas.py [../shared/data/bone_meshes] [OUTDIR]

Each bone becomes a signed-distance volume (mm, negative inside) on a 1 mm grid in the body's LPS frame with
the origin midway between the femoral head centres, quantised to int8 in 0.25 mm steps (-32 .. +31.75 mm).
Choices forced by the meshes (see bone_meshes/*/SOURCE.md): the published left legs are not seated in the
acetabulum and the right legs are mirror copies of the left, so the right leg (seated) is used and mirrored
about the pelvis midline for the left; the male lower leg is misplaced, so the female tibia, fibula and
patella are fitted to the male knee (translated to its distal femur, scaled by femur length).
Credit: HuBMAP Human Reference Atlas 3D Reference Object Library (CC BY 4.0); see NOTICE.
"""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

SPACING = 1.0
STEP = 0.25                     # mm per int8 unit
MARGIN = 8.0                    # mm of outside distance kept around each bone
LEG = ("femur", "tibia", "fibula", "patella")


def read_stl(path) -> np.ndarray:
    """Triangles (N, 3, 3) of a binary STL, converted from the HRA frame (+x left, +y superior, +z anterior)
    to LPS (+x left, +y posterior, +z superior)."""
    data = Path(path).read_bytes()
    n = struct.unpack("<I", data[80:84])[0]
    rec = np.frombuffer(data[84:84 + 50 * n], dtype=np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]))
    v = rec["v"].astype(np.float64)
    return np.stack([v[..., 0], -v[..., 2], v[..., 1]], axis=-1)


def mirror(tris, x_mid) -> np.ndarray:
    out = tris.copy()
    out[..., 0] = 2 * x_mid - out[..., 0]
    return out[:, ::-1]          # keep the outward winding


def signed_distance(tris):
    """(sdf float32 (k, j, i), origin (x, y, z)) on a 1 mm grid around the mesh."""
    import vtk
    from vtk.util import numpy_support
    pts = tris.reshape(-1, 3)
    lo = np.floor(pts.min(0) - MARGIN)
    n = (np.ceil(pts.max(0) + MARGIN - lo) / SPACING).astype(int) + 1
    poly = vtk.vtkPolyData()
    vp = vtk.vtkPoints()
    vp.SetData(numpy_support.numpy_to_vtk(pts.astype(np.float64), deep=True))
    cells = vtk.vtkCellArray()
    ids = np.hstack([np.full((len(tris), 1), 3), np.arange(len(pts)).reshape(-1, 3)]).astype(np.int64)
    cells.SetCells(len(tris), numpy_support.numpy_to_vtkIdTypeArray(ids.ravel(), deep=True))
    poly.SetPoints(vp)
    poly.SetPolys(cells)
    inside = _inside_mask(poly, lo, n)
    sdf = (ndimage.distance_transform_edt(~inside) - ndimage.distance_transform_edt(inside)) * SPACING
    band = np.abs(sdf) < 4.0
    implicit = vtk.vtkImplicitPolyDataDistance()
    implicit.SetInput(poly)
    kk, jj, ii = np.nonzero(band)
    q = np.stack([lo[0] + ii * SPACING, lo[1] + jj * SPACING, lo[2] + kk * SPACING], 1)
    vals = vtk.vtkDoubleArray()
    implicit.FunctionValue(numpy_support.numpy_to_vtk(q, deep=True), vals)
    exact = numpy_support.vtk_to_numpy(vals)
    sdf[band] = np.where(inside[band], -np.abs(exact), np.abs(exact))
    return sdf.astype(np.float32), lo


def _inside_mask(poly, lo, n) -> np.ndarray:
    import vtk
    from vtk.util import numpy_support
    image = vtk.vtkImageData()
    image.SetOrigin(*lo)
    image.SetSpacing(SPACING, SPACING, SPACING)
    image.SetDimensions(*[int(c) for c in n])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.GetPointData().GetScalars().Fill(1)
    stencil = vtk.vtkPolyDataToImageStencil()
    stencil.SetInputData(poly)
    stencil.SetOutputOrigin(*lo)
    stencil.SetOutputSpacing(SPACING, SPACING, SPACING)
    stencil.SetOutputWholeExtent(image.GetExtent())
    stencil.Update()
    to_image = vtk.vtkImageStencil()
    to_image.SetInputData(image)
    to_image.SetStencilConnection(stencil.GetOutputPort())
    to_image.ReverseStencilOff()
    to_image.SetBackgroundValue(0)
    to_image.Update()
    flat = numpy_support.vtk_to_numpy(to_image.GetOutput().GetPointData().GetScalars())
    return flat.reshape(int(n[2]), int(n[1]), int(n[0])).astype(bool)


def load_body(root: Path, name: str, knee_donor=None) -> tuple:
    """Triangles per bone (LPS, mm) with both legs seated, and landmarks."""
    d = root / name
    stats = json.loads((d / "stats.json").read_text())["hip_joint"]["right"]
    c = np.asarray(stats["head_centre_mm"], float)
    head_r = np.array([c[0], -c[2], c[1]])
    bones = {b: read_stl(d / f"{b}.stl") for b in ("hip_left", "hip_right", "sacrum", "coccyx", "femur_right")}
    x_mid = 0.5 * (bones["hip_left"].reshape(-1, 3)[:, 0].mean() + bones["hip_right"].reshape(-1, 3)[:, 0].mean())
    for b in LEG[1:]:
        bones[f"{b}_right"] = read_stl(d / f"{b}_right.stl")
    if knee_donor is not None:
        _fit_lower_leg(bones, knee_donor)
    for b in LEG:
        bones[f"{b}_left"] = mirror(bones[f"{b}_right"], x_mid)
    head_l = head_r.copy()
    head_l[0] = 2 * x_mid - head_r[0]
    origin = 0.5 * (head_l + head_r)
    for b in bones:
        bones[b] = bones[b] - origin
    marks = {"head_left": head_l - origin, "head_right": head_r - origin, "head_radius": float(stats["head_radius_mm"])}
    for side in ("left", "right"):
        femur = bones[f"femur_{side}"].reshape(-1, 3)
        tibia = bones[f"tibia_{side}"].reshape(-1, 3)
        low = femur[femur[:, 2] < femur[:, 2].min() + 25]
        marks[f"knee_{side}"] = np.array([*low[:, :2].mean(0), 0.5 * (femur[:, 2].min() + tibia[:, 2].max())])
        foot = tibia[tibia[:, 2] < tibia[:, 2].min() + 15]
        marks[f"ankle_{side}"] = np.array([*foot[:, :2].mean(0), tibia[:, 2].min()])
    return bones, marks


def _fit_lower_leg(bones, donor) -> None:
    """Place the donor's right tibia, fibula and patella under this body's right femur (translation to the
    distal femur, isotropic scale by femur length)."""
    mine, theirs = bones["femur_right"].reshape(-1, 3), donor["femur_right"].reshape(-1, 3)
    scale = np.ptp(mine[:, 2]) / np.ptp(theirs[:, 2])
    def knee(f):
        low = f[f[:, 2] < f[:, 2].min() + 25]
        return np.array([*low[:, :2].mean(0), f[:, 2].min()])
    k_mine, k_theirs = knee(mine), knee(theirs)
    for b in LEG[1:]:
        bones[f"{b}_right"] = (donor[f"{b}_right"] - k_theirs) * scale + k_mine


def quantise(sdf) -> np.ndarray:
    return np.clip(np.rint(sdf / STEP), -128, 127).astype(np.int8)


def main(argv) -> int:
    root = Path(argv[1] if len(argv) > 1 else "../shared/data/bone_meshes")
    out = Path(argv[2] if len(argv) > 2 else Path(__file__).resolve().parents[1] / "FemurUNetLib" / "anatomy")
    out.mkdir(parents=True, exist_ok=True)
    female, female_marks = load_body(root, "hra_vh_female")
    donor = {f"{b}_right": female[f"{b}_right"] for b in LEG}
    male, male_marks = load_body(root, "hra_vh_male", knee_donor=donor)
    for name, (bones, marks) in {"vh_female": (female, female_marks), "vh_male": (male, male_marks)}.items():
        arrays = {}
        for bone, tris in bones.items():
            sdf, lo = signed_distance(tris)
            arrays[f"{bone}__sdf"] = quantise(sdf)
            arrays[f"{bone}__origin"] = lo.astype(np.float32)
            print(f"{name} {bone}: {sdf.shape[::-1]} voxels, {(sdf < 0).sum() / 1000:.0f} ml")
        for key, value in marks.items():
            arrays[f"mark__{key}"] = np.asarray(value, np.float32)
        np.savez_compressed(out / f"{name}.npz", **arrays)
        print(f"{out / name}.npz: {(out / f'{name}.npz').stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
