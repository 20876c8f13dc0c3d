#!/usr/bin/env python3
"""Score level gates (files of ``gate_train``) on phantom v2 scans with exact truth.

Per scan: the lowest P the gate gives a slice holding a femur voxel (a piece on such slices stays at any threshold
below it, so no femur voxel can go), the highest P on a slice without one and on any slice (a scan-wide rule keeps a
scan's labels when that reaches the threshold); with ``--segment`` also the demo model's labels (cleaned as by
default) before and after the gate at each threshold, in ml, how much of what it removes is truth femur (the
harm: a femur piece wholly on low levels goes even when the femur's other slices are sure) and the labels off the
femur (pieces sharing no voxel with the truth) before and after.

    python3 FemurUNetTrain/Scripts/evaluate_gate.py gate.pt --seeds 99800-99811 --coverage lower_leg --segment

Several gates: each scan is made (and segmented) once and every gate scores it; the JSON holds each gate's rows
and summary under ``gates`` (one gate: its ``rows`` and ``summary`` at the top).

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


def gate_row(seed: int, case, gate, segmented=None) -> dict:
    """One scan's row for one gate; ``segmented``: the demo model's result on it (labels before any gate), or None
    for P only."""
    axial = Reorientation.for_geometry(case.geometry)
    p = slice_probabilities(gate, axial.to_canonical(case.ct), axial.canonical_spacing(case.geometry))
    femur = axial.to_canonical(case.label > 0).any(axis=(1, 2))
    row = {"seed": seed, "coverage": case.coverage, "femur_slices": int(femur.sum()),
           "lowest_p_on_femur": round(float(p[femur].min()), 4) if femur.any() else None,
           "highest_p_without": round(float(p[~femur].max()), 4) if (~femur).any() else None,
           "highest_p": round(float(p.max()), 4)}
    if segmented is not None:
        row.update(_removals(case, p, segmented))
    return row


def _removals(case, p: np.ndarray, segmented) -> dict:
    """The labels before and after the gate at each threshold, the truth femur and the off-femur labels (ml)."""
    voxel_ml = float(np.prod(case.geometry.spacing)) / 1000.0
    truth = case.label > 0
    out = {"labelled_ml": round(np.count_nonzero(segmented.labelmap) * voxel_ml, 2),
           "off_femur_ml": round(off_target_ml(segmented.labelmap > 0, truth, case.geometry.spacing), 2),
           "after_gate_ml": {}, "femur_removed_ml": {}, "off_femur_after_ml": {}}
    labelled_femur = (segmented.labelmap > 0) & truth
    for t in THRESHOLDS:
        labels = segmented.labelmap.copy()
        gate_pieces(labels, p, case.ct, case.geometry, segmented.labels, t)
        out["after_gate_ml"][f"{t:g}"] = round(np.count_nonzero(labels) * voxel_ml, 2)
        out["femur_removed_ml"][f"{t:g}"] = round(np.count_nonzero(labelled_femur & (labels == 0)) * voxel_ml, 2)
        out["off_femur_after_ml"][f"{t:g}"] = round(off_target_ml(labels > 0, truth, case.geometry.spacing), 2)
    return out


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
    parser.add_argument("gates", nargs="+", metavar="gate", help="a gate file (FemurUNetTrainLib.gate_train); "
                        "several: each scan is made (and segmented) once and scored by each")
    parser.add_argument("--seeds", type=seed_list, required=True, help="e.g. 99800-99811,99820")
    parser.add_argument("--coverage", choices=ALL_COVERAGES, help="scan range for every seed (default: drawn)")
    parser.add_argument("--coarse", action="store_true", help="isotropic 2-3 mm grids, as evaluate_demo_model's")
    parser.add_argument("--hips", choices=HIP_SHAPES, help="hip bone shape for every seed (default: drawn)")
    parser.add_argument("--segment", action="store_true", help="also the demo model's labels before and after")
    parser.add_argument("--json", help="write the rows and the summary here")
    args = parser.parse_args(argv)
    try:
        gates = _load_gates(args.gates)
    except FemurUNetError as exc:
        print(f"evaluate_gate.py: error: {exc}", file=sys.stderr)
        return 2
    rows = {name: [] for name in gates}
    for seed in args.seeds:
        case = evaluate_demo_model.make_phantom(seed, 2, None, args.coarse, args.hips, args.coverage)
        segmented = segment_volume(case.ct, case.geometry, None, device="cpu", gate=False) if args.segment else None
        for name, gate in gates.items():
            rows[name].append(gate_row(seed, case, gate, segmented))
            print(json.dumps(rows[name][-1] if len(gates) == 1 else {"gate": name, **rows[name][-1]}), flush=True)
    command = " ".join(argv if argv is not None else sys.argv[1:])
    per_gate = {name: {"rows": r, "summary": summary(r)} for name, r in rows.items()}
    if len(gates) == 1:                              # one gate: its rows and summary at the top
        (name, only), = per_gate.items()
        result, last_line = {"gate": name, "command": command, **only}, only["summary"]
    else:
        result, last_line = {"command": command, "gates": per_gate}, {n: g["summary"] for n, g in per_gate.items()}
    print(json.dumps(last_line))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def _load_gates(paths: list) -> dict:
    """{name: gate} in the order given; the file name, or the path where two files share a name."""
    if len(set(paths)) < len(paths):
        raise FemurUNetError("a gate file is named twice")
    names = [Path(p).name for p in paths]
    names = names if len(set(names)) == len(names) else list(paths)
    return {name: load_gate(path) for name, path in zip(names, paths)}


if __name__ == "__main__":
    sys.exit(main())
