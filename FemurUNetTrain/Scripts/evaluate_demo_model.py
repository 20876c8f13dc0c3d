"""Measure a model the way README reports it: held-out phantoms, the real pelvis CT, the femur-free abdomen CT.

usage: python FemurUNetTrain/Scripts/evaluate_demo_model.py [MODEL.pt] [--seeds 9000-9009] [--json OUT.json]
       [--device cpu] [--mirror]

The real-CT numbers come from the functions behind ``femurunet evaluate`` (``read_femur_reference``,
``femur_rows``, ``false_positives``); the CLI commands that reproduce each one are printed beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from FemurUNetLib import segment_volume
from FemurUNetLib.evaluate import dice, false_positives, femur_rows, hd95, midline, read_femur_reference, \
    split_at_midline
from FemurUNetLib.modelfile import resolve_model
from FemurUNetLib.phantom import generate_case
from FemurUNetLib.volume_io import read_volume

REPO = Path(__file__).resolve().parents[2]
REAL_CT = REPO.parent / "shared" / "data" / "real_ct"


def split_sides(pred: np.ndarray, left_ref: np.ndarray, right_ref: np.ndarray, geometry):
    """Assign predicted voxels to the patient's left/right by the midline between the reference centroids
    (the split ``femurunet evaluate`` makes for a one-label prediction)."""
    return split_at_midline(pred, midline(left_ref, right_ref, geometry))


def reproduce(*commands) -> list:
    """Shell lines (paths relative to the current folder) that give the same figure with the CLI."""
    def arg(a):
        return shlex.quote(os.path.relpath(a) if isinstance(a, Path) else str(a))
    return [" ".join(arg(a) for a in command if a is not None) for command in commands]


def print_reproduce(lines) -> None:
    print("  reproduce with:  " + "\n                   ".join(lines), flush=True)


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

    def segment(ct, geometry) -> np.ndarray:
        return segment_volume(ct, geometry, net, device=args.device, mirror=args.mirror).labelmap

    def predict(ct, geometry) -> np.ndarray:
        return segment(ct, geometry) > 0

    def segment_command(source, output):    # the flags that make `femurunet segment` predict as segment() does
        return ["femurunet", "segment", source, output, "--device", args.device,
                *(["--model", args.model] if args.model else []), *(["--mirror"] if args.mirror else [])]

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
        refs = (pelvis / "femur_left.nii.gz", pelvis / "femur_right.nii.gz")
        ct, geometry = read_volume(pelvis / "ct.nii.gz")
        left_ref, right_ref, _ = read_femur_reference(*refs)
        labelmap = segment(ct, geometry)
        result = femur_rows(labelmap, left_ref, right_ref, geometry)
        rows = {r["label"]: r for r in result.rows}
        lines = reproduce(segment_command(pelvis / "ct.nii.gz", "pelvis_pred.nii.gz"),
                          ["femurunet", "evaluate", "pelvis_pred.nii.gz", *refs])
        results["pelvis_3mm"] = {"dice_left": rows["left"]["dice"], "dice_right": rows["right"]["dice"],
                                 "dice_both": rows["both"]["dice"], "hd95_left_mm": rows["left"]["hd95_mm"],
                                 "hd95_right_mm": rows["right"]["hd95_mm"],
                                 "predicted_voxels": int(np.count_nonzero(labelmap)),
                                 "reference_voxels": int((left_ref | right_ref).sum()), "split": result.note,
                                 "reproduce": lines}
        print(json.dumps({"pelvis_3mm": results["pelvis_3mm"]}), flush=True)
        print_reproduce(lines)
    abdomen = REAL_CT / "abdomen_dicom"
    if abdomen.is_dir():
        ct, geometry = read_volume(abdomen)
        fp = false_positives(segment(ct, geometry), tuple(reversed(geometry.spacing)))[-1]
        lines = reproduce(segment_command(abdomen, "abdomen_pred.nii.gz"),
                          ["femurunet", "evaluate", "abdomen_pred.nii.gz", "--no-femur"])
        results["abdomen_dicom"] = {"voxels": fp["voxels_total"], "predicted": fp["voxels_labelled"],
                                    "fraction_percent": fp["percent"], "reproduce": lines}
        print(json.dumps({"abdomen_dicom": results["abdomen_dicom"]}), flush=True)
        print_reproduce(lines)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
