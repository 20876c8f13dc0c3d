#!/usr/bin/env python3
"""Score a level gate (``--gate``) on phantom v2 scans with exact truth.

Per scan: the lowest P the gate gives a slice holding a femur voxel (a piece on such slices stays at any threshold
below it, so no femur voxel can go), the highest P on a slice without one and on any slice (a scan-wide rule keeps a
scan's labels when that reaches the threshold); with ``--segment`` also the demo model's labels (cleaned as by
default) before and after the gate at each threshold, in ml, how much of what it removes is truth femur (the
harm: a femur piece wholly on low levels goes even when the femur's other slices are sure) and the labels off the
femur (pieces sharing no voxel with the truth) before and after.

    python3 FemurUNetTrain/Scripts/evaluate_gate.py gate.pt --seeds 99800-99811 --coverage lower_leg --segment

Phantoms are made as ``evaluate_demo_model.py`` makes them (the same ``--coverage``, ``--coarse``, ``--hips``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate_demo_model  # noqa: E402

from FemurUNetLib import segment_volume  # noqa: E402
from FemurUNetLib.errors import FemurUNetError  # noqa: E402
from FemurUNetLib.evaluate import off_target_ml  # noqa: E402
from FemurUNetLib.gate import gate_pieces, load_gate, slice_probabilities  # noqa: E402
from FemurUNetLib.geometry import Reorientation  # noqa: E402
from FemurUNetLib.phantom2 import ALL_COVERAGES  # noqa: E402
from FemurUNetLib.phantom2_hips import HIP_SHAPES  # noqa: E402
from FemurUNetTrainLib.options import seed_list  # noqa: E402

THRESHOLDS = (0.02, 0.05, 0.1, 0.2, 0.3)


def gate_row(seed: int, case, gate, segment: bool) -> dict:
    axial = Reorientation.for_geometry(case.geometry)
    p = slice_probabilities(gate, axial.to_canonical(case.ct), axial.canonical_spacing(case.geometry))
    femur = axial.to_canonical(case.label > 0).any(axis=(1, 2))
    row = {"seed": seed, "coverage": case.coverage, "femur_slices": int(femur.sum()),
           "lowest_p_on_femur": round(float(p[femur].min()), 4) if femur.any() else None,
           "highest_p_without": round(float(p[~femur].max()), 4) if (~femur).any() else None,
           "highest_p": round(float(p.max()), 4)}
    if segment:
        result = segment_volume(case.ct, case.geometry, None, device="cpu", gate=False)   # the gate's "before"
        voxel_ml = float(np.prod(case.geometry.spacing)) / 1000.0
        row["labelled_ml"] = round(np.count_nonzero(result.labelmap) * voxel_ml, 2)
        row["off_femur_ml"] = round(off_target_ml(result.labelmap > 0, case.label > 0, case.geometry.spacing), 2)
        row["after_gate_ml"], row["femur_removed_ml"], row["off_femur_after_ml"] = {}, {}, {}
        labelled_femur = (result.labelmap > 0) & (case.label > 0)
        for t in THRESHOLDS:
            labels = result.labelmap.copy()
            gate_pieces(labels, p, case.ct, case.geometry, result.labels, t)
            row["after_gate_ml"][f"{t:g}"] = round(np.count_nonzero(labels) * voxel_ml, 2)
            row["femur_removed_ml"][f"{t:g}"] = round(np.count_nonzero(labelled_femur & (labels == 0)) * voxel_ml, 2)
            row["off_femur_after_ml"][f"{t:g}"] = round(off_target_ml(labels > 0, case.label > 0,
                                                                      case.geometry.spacing), 2)
    return row


def summary(rows: list) -> dict:
    with_femur = [r for r in rows if r["lowest_p_on_femur"] is not None]
    out = {"scans": len(rows), "scans_with_femur": len(with_femur)}
    if with_femur:
        worst = min(with_femur, key=lambda r: r["lowest_p_on_femur"])
        out["lowest_p_on_femur"] = {"p": worst["lowest_p_on_femur"], "seed": worst["seed"]}
    segmented = [r for r in rows if "labelled_ml" in r]
    if segmented:
        for key in ("labelled_ml", "off_femur_ml"):
            out[key] = round(sum(r[key] for r in segmented), 2)
        for key in ("after_gate_ml", "femur_removed_ml", "off_femur_after_ml"):
            out[key] = {k: round(sum(r[key][k] for r in segmented), 2) for k in segmented[0][key]}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("gate", help="a gate file (FemurUNetTrainLib.gate_train)")
    parser.add_argument("--seeds", type=seed_list, required=True, help="e.g. 99800-99811,99820")
    parser.add_argument("--coverage", choices=ALL_COVERAGES, help="scan range for every seed (default: drawn)")
    parser.add_argument("--coarse", action="store_true", help="isotropic 2-3 mm grids, as evaluate_demo_model's")
    parser.add_argument("--hips", choices=HIP_SHAPES, help="hip bone shape for every seed (default: drawn)")
    parser.add_argument("--segment", action="store_true", help="also the demo model's labels before and after")
    parser.add_argument("--json", help="write the rows and the summary here")
    args = parser.parse_args(argv)
    try:
        gate, rows = load_gate(args.gate), []
    except FemurUNetError as exc:
        print(f"evaluate_gate.py: error: {exc}", file=sys.stderr)
        return 2
    for seed in args.seeds:
        case = evaluate_demo_model.make_phantom(seed, 2, None, args.coarse, args.hips, args.coverage)
        rows.append(gate_row(seed, case, gate, args.segment))
        print(json.dumps(rows[-1]), flush=True)
    result = {"gate": Path(args.gate).name, "command": " ".join(argv if argv is not None else sys.argv[1:]),
              "rows": rows, "summary": summary(rows)}
    print(json.dumps(result["summary"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
