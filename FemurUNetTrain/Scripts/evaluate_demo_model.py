"""Measure a model the way README reports it: held-out phantoms, the real pelvis CT, the femur-free abdomen CT.

usage: python FemurUNetTrain/Scripts/evaluate_demo_model.py [MODEL.pt] [--seeds 9000-9009] [--json OUT.json]
       [--device cpu] [--mirror]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from FemurUNetLib import segment_volume
from FemurUNetLib.evaluate import dice, hd95
from FemurUNetLib.geometry import Reorientation
from FemurUNetLib.modelfile import resolve_model
from FemurUNetLib.phantom import generate_case
from FemurUNetLib.volume_io import read_volume

REPO = Path(__file__).resolve().parents[2]
REAL_CT = REPO.parent / "shared" / "data" / "real_ct"


def split_sides(pred: np.ndarray, left_ref: np.ndarray, right_ref: np.ndarray, geometry):
    """Assign predicted voxels to the patient's left/right by the midline between the reference centroids."""
    reo = Reorientation.for_geometry(geometry)
    x = np.broadcast_to(np.arange(reo.to_canonical(pred).shape[2]), reo.to_canonical(pred).shape)
    x_native = reo.from_canonical(x)         # canonical x grows toward patient left
    mid = 0.5 * (x_native[left_ref.astype(bool)].mean() + x_native[right_ref.astype(bool)].mean())
    return pred.astype(bool) & (x_native > mid), pred.astype(bool) & (x_native <= mid)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", nargs="?", default=None, help="model .pt (default: the shipped demo model)")
    parser.add_argument("--seeds", default="9000-9009", help="held-out phantom seeds, A-B (default 9000-9009)")
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--device", default="cpu", help="cpu (default, as README reports), cuda, auto")
    parser.add_argument("--mirror", action="store_true", help="mirror test-time augmentation (segment --mirror)")
    args = parser.parse_args(argv)
    lo, hi = (int(v) for v in args.seeds.split("-"))
    results = {"model": args.model or "default", "phantoms": []}
    net = resolve_model(args.model)          # loaded once for every volume below

    def predict(ct, geometry) -> np.ndarray:
        return segment_volume(ct, geometry, net, device=args.device, mirror=args.mirror).labelmap > 0

    for seed in range(lo, hi + 1):
        case = generate_case(seed)
        t = time.perf_counter()
        pred = predict(case.ct, case.geometry)
        seconds = time.perf_counter() - t
        truth = case.label > 0
        sp = case.geometry.spacing[::-1]
        left, right = split_sides(pred, case.label == 1, case.label == 2, case.geometry)
        row = {"seed": seed, "shape": list(case.ct.shape), "spacing": list(case.geometry.spacing),
               "metal": case.metal, "arms": case.arms, "dice": dice(pred, truth), "hd95_mm": hd95(pred, truth, sp),
               "dice_left": dice(left, case.label == 1), "dice_right": dice(right, case.label == 2),
               "seconds": round(seconds, 2)}
        results["phantoms"].append(row)
        print(json.dumps(row), flush=True)
    d = np.array([r["dice"] for r in results["phantoms"]])
    h = np.array([r["hd95_mm"] for r in results["phantoms"]])
    results["phantom_summary"] = {"cases": len(d), "dice_mean": float(d.mean()), "dice_std": float(d.std()),
                                  "dice_min": float(d.min()), "hd95_mean_mm": float(h.mean()),
                                  "hd95_max_mm": float(h.max())}
    print(json.dumps(results["phantom_summary"]), flush=True)

    pelvis = REAL_CT / "pelvis_3mm"
    if pelvis.is_dir():
        ct, geometry = read_volume(pelvis / "ct.nii.gz")
        left_ref = read_volume(pelvis / "femur_left.nii.gz")[0] > 0.5
        right_ref = read_volume(pelvis / "femur_right.nii.gz")[0] > 0.5
        pred = predict(ct, geometry)
        left, right = split_sides(pred, left_ref, right_ref, geometry)
        sp = geometry.spacing[::-1]
        results["pelvis_3mm"] = {"dice_left": dice(left, left_ref), "dice_right": dice(right, right_ref),
                                 "dice_both": dice(pred, left_ref | right_ref),
                                 "hd95_left_mm": hd95(left, left_ref, sp), "hd95_right_mm": hd95(right, right_ref, sp),
                                 "predicted_voxels": int(pred.sum()), "reference_voxels": int((left_ref | right_ref).sum())}
        print(json.dumps({"pelvis_3mm": results["pelvis_3mm"]}), flush=True)
    abdomen = REAL_CT / "abdomen_dicom"
    if abdomen.is_dir():
        ct, geometry = read_volume(abdomen)
        pred = predict(ct, geometry)
        results["abdomen_dicom"] = {"voxels": int(pred.size), "predicted": int(pred.sum()),
                                    "fraction_percent": float(100.0 * pred.mean())}
        print(json.dumps({"abdomen_dicom": results["abdomen_dicom"]}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
