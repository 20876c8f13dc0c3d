"""Measure a model the way README reports it: held-out phantoms, the real pelvis CT, the femur-free abdomen CT.

usage: python FemurUNetTrain/Scripts/evaluate_demo_model.py [MODEL.pt ...] [--seeds 90000-90039] [--phantom 2]
       [--tissue cortex=900,trabecular=400] [--coarse] [--hips atlas|mri2psm] [--oa] [--tha]
       [--coverage COV] [--no-real]
       [--json OUT.json] [segment options: --device cpu (the default here), --mirror, --fast, --min-field MM,
       --keep-all-pieces, --second-opinion MODEL [--second-opinion-fraction F], ... as `femurunet segment`]

Several models are measured on the same cases, each phantom made once (``--json`` then holds ``{"runs": [...]}``,
one entry per model, each as a single model's file). ``--seeds`` takes ranges and seeds: ``25096-25111,26066``.
Leg scans that reach the feet also get ``foot_ml``: labels more than 10 mm below the lower ankle joint (all wrong).

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
from FemurUNetLib.evaluate import dice, false_positives, femur_rows, hd95, midline, off_target_ml, \
    read_femur_reference, split_at_midline
from FemurUNetLib.resolve import resolve_gate, resolve_model
from FemurUNetLib.segment_options import add_segment_options, segment_flags, segment_keywords
from FemurUNetLib.phantom import generate_case
from FemurUNetLib.plausibility import check_plausibility
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.phantom2 import ALL_COVERAGES, generate_case as generate_case_v2, tissue_settings
from FemurUNetLib.phantom2_hips import HIP_SHAPES
from FemurUNetLib.phantom2_body import draw_hu
from FemurUNetLib.phantom2_native import coarse_spacing
from FemurUNetLib.volume_io import read_volume
from FemurUNetTrainLib.options import seed_list

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


def parse_tissue(text) -> dict:
    """``cortex=900,trabecular=400`` -> {"cortex": 900.0, "trabecular": 400.0} (phantom v2's fixed tissue values)."""
    if not text:
        return {}
    try:
        return {key.strip(): float(value) for key, value in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise SystemExit(f"--tissue: expected KEY=VALUE pairs like cortex=900,trabecular=400, got {text!r}") from None


def make_phantom(seed, phantom: int, tissue=None, coarse=False, hips=None, coverage=None, oa=False, tha=False):
    if phantom != 2:
        return generate_case(seed)
    return generate_case_v2(seed, tissue=tissue or None, spacing=coarse_spacing(seed) if coarse else None, hips=hips,
                            coverage=coverage, oa=oa, tha=tha)


def case_row(seed, case, predict) -> dict:
    """One phantom case: Dice/HD95 against the exact truth, or false positives (ml) when it has no femur; the
    plausibility check's warnings."""
    t = time.perf_counter()
    pred = predict(case.ct, case.geometry)
    seconds = time.perf_counter() - t
    truth = case.label > 0
    sp = case.geometry.spacing[::-1]
    row = {"seed": seed, "coverage": case.coverage or "hip", "body": case.body, "femurs": case.femurs,
           "hips": case.hips, "shape": list(case.ct.shape), "spacing": [round(v, 3) for v in case.geometry.spacing],
           "oa": case.oa, "tha": case.tha, "metal": case.metal, "arms": case.arms,
           "seconds": round(seconds, 2), "false_positive_ml": float((pred & ~truth).sum() * np.prod(sp) / 1000),
           "warnings": check_plausibility(pred, case.ct, case.geometry).warnings}
    if case.feet is not None and case.feet.any():
        row["foot_ml"] = float((pred & case.feet).sum() * np.prod(sp) / 1000)
    if truth.any():
        left, right = split_sides(pred, case.label == 1, case.label == 2, case.geometry)
        row.update(dice=dice(pred, truth), hd95_mm=hd95(pred, truth, sp), truth_ml=float(truth.sum() * np.prod(sp) / 1000),
                   off_femur_ml=off_target_ml(pred, truth, sp),
                   dice_left=dice(left, case.label == 1) if (case.label == 1).any() else None,
                   dice_right=dice(right, case.label == 2) if (case.label == 2).any() else None)
    return row


def phantom_summary(rows) -> dict:
    with_femur = [r for r in rows if "dice" in r]
    free = [r for r in rows if "dice" not in r]
    summary = {"cases": len(rows), "cases_with_femur": len(with_femur), "femur_free_cases": len(free),
               "femur_free_false_positive_ml_max": max([r["false_positive_ml"] for r in free], default=0.0)}
    if with_femur:
        d = np.array([r["dice"] for r in with_femur])
        h = np.array([r["hd95_mm"] for r in with_femur])
        summary.update(dice_mean=float(d.mean()), dice_std=float(d.std()), dice_min=float(d.min()),
                       hd95_mean_mm=float(np.mean(h[np.isfinite(h)])),
                       off_femur_ml_max=max(r["off_femur_ml"] for r in with_femur))
    if free:
        summary["femur_free_false_positive_ml_mean"] = float(np.mean([r["false_positive_ml"] for r in free]))
    if all("warnings" in r for r in rows):                   # rows stored before session 33 have none
        labelled = [r for r in free if r["false_positive_ml"] > 0]
        summary.update(cases_with_femur_warned=sum(bool(r["warnings"]) for r in with_femur),
                       femur_free_labelled=len(labelled),
                       femur_free_labelled_warned=sum(bool(r["warnings"]) for r in labelled))
    feet = [r["foot_ml"] for r in rows if "foot_ml" in r]
    if feet:
        summary.update(cases_into_the_feet=len(feet), foot_ml_mean=float(np.mean(feet)), foot_ml_max=max(feet),
                       cases_over_2ml_in_the_feet=sum(v > 2.0 for v in feet))
    for coverage in sorted({r["coverage"] for r in rows}):
        part = [r for r in with_femur if r["coverage"] == coverage]
        if part:
            summary[f"dice_mean_{coverage}"] = float(np.mean([r["dice"] for r in part]))
    for source, part in (("atlas", [r for r in with_femur if r.get("femurs") == "atlas"]),
                         ("libhip", [r for r in with_femur if r.get("femurs") not in ("atlas", "", None)])):
        if part:
            summary[f"dice_mean_{source}_femurs"] = float(np.mean([r["dice"] for r in part]))
    for shape in HIP_SHAPES:
        part = [r for r in with_femur if r.get("hips") == shape]
        if part:
            summary[f"dice_mean_{shape}_hips"] = float(np.mean([r["dice"] for r in part]))
    return summary


def real_ct(args, segment, segment_command) -> dict:
    results = {}
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
    return results


def parse_args(argv):
    """The options, checked before any work: (args, the --tissue values)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", nargs="*", metavar="model", help="model .pt (default: the shipped demo model)")
    parser.add_argument("--seeds", type=seed_list, default="90000-90039", help="held-out phantom seeds: A-B ranges and seeds, "
                        "comma-separated (default 90000-90039)")
    parser.add_argument("--phantom", type=int, choices=(1, 2), default=2, help="phantom generator (default 2)")
    parser.add_argument("--tissue", help="phantom v2 tissue values fixed over the drawn ones, e.g. "
                        "cortex=900,trabecular=400,head_density=1.5 (a stress test of the bone values)")
    parser.add_argument("--coarse", action="store_true", help="phantom v2 on an isotropic 2-3 mm grid drawn per seed, "
                        "as resampled scans are (a stress test of coarse grids)")
    parser.add_argument("--hips", choices=HIP_SHAPES, help="phantom v2 hip bones of this shape for every seed "
                        "(default: as each seed draws them)")
    parser.add_argument("--oa", action="store_true", help="phantom v2 osteoarthritic hips (subchondral "
                        "sclerosis, cysts, osteophytes: the femur's are labelled) for every seed (a stress test)")
    parser.add_argument("--tha", action="store_true", help="phantom v2 with a total hip arthroplasty on one side "
                        "(head and neck resected; the femoral component is labelled femur) for every seed")
    parser.add_argument("--coverage", choices=ALL_COVERAGES, help="phantom v2 scan range for every seed (default: "
                        "as each seed draws it), e.g. knee_to_ankle for leg scans into the feet, lower_leg for a shin "
                        "without femur")
    parser.add_argument("--no-real", action="store_true", help="phantoms only (model selection never looks at real CT)")
    parser.add_argument("--json", help="write the numbers here")
    add_segment_options(parser, model=False, device="cpu")     # cpu: as README reports
    args = parser.parse_args(argv)
    if args.second_opinion_fraction is not None and not args.second_opinion:
        parser.error("--second-opinion-fraction needs --second-opinion")
    tissue = parse_tissue(args.tissue)
    if tissue and args.phantom != 2:
        parser.error("--tissue: only phantom v2 draws tissue values")
    if args.coarse and args.phantom != 2:
        parser.error("--coarse: only phantom v2 renders resampled grids")
    if args.hips and args.phantom != 2:
        parser.error("--hips: only phantom v2 draws hip bone shapes")
    if args.coverage and args.phantom != 2:
        parser.error("--coverage: only phantom v2 draws scan ranges")
    if args.oa and args.phantom != 2:
        parser.error("--oa: only phantom v2 draws osteoarthritic hips")
    if args.tha and args.phantom != 2:
        parser.error("--tha: only phantom v2 draws hip arthroplasties")
    try:
        tissue_settings(draw_hu(np.random.default_rng(0)), tissue)       # unknown keys: refused before any work
    except FemurUNetError as exc:
        parser.error(f"--tissue: {exc}")
    return args, tissue


def main(argv=None) -> int:
    args, tissue = parse_args(argv)
    seeds, names = args.seeds, args.models or [None]
    runs = [{"model": name or "default", "phantom": args.phantom, **({"tissue": tissue} if tissue else {}),
             **({"min_field_mm": args.min_field} if args.min_field is not None else {}),
             **({"coarse": True} if args.coarse else {}), **({"hips": args.hips} if args.hips else {}),
             **({"coverage": args.coverage} if args.coverage else {}),
             **({"oa": True} if args.oa else {}), **({"tha": True} if args.tha else {}),
             **({"second_opinion": args.second_opinion} if args.second_opinion else {}),
             **({"second_opinion_fraction": args.second_opinion_fraction}
                if args.second_opinion_fraction is not None else {}),
             **({"gate": args.gate} if args.gate else {"gate": "none"} if args.no_gate else {}),
             **({"gate_threshold": args.gate_threshold} if args.gate_threshold is not None else {}),
             "phantoms": []} for name in names]
    nets = [resolve_model(name) for name in names]           # loaded once for every volume below
    confirm = resolve_model(args.second_opinion) if args.second_opinion else None

    keywords = {**segment_keywords(args), "confirm": confirm}
    keywords["gate"] = resolve_gate(args.gate) if args.gate else keywords["gate"]   # None: the demo model's

    def segment(net, ct, geometry) -> np.ndarray:
        return segment_volume(ct, geometry, net, **keywords).labelmap

    def segment_command(name, source, output):    # the flags that make `femurunet segment` predict as segment() does
        return ["femurunet", "segment", source, output, *(["--model", name] if name else []), *segment_flags(args)]

    for seed in seeds:
        case = make_phantom(seed, args.phantom, tissue, args.coarse, args.hips, args.coverage, args.oa,
                            args.tha)
        for run, net in zip(runs, nets):
            run["phantoms"].append(case_row(seed, case, lambda ct, g, net=net: segment(net, ct, g) > 0))
            print(json.dumps({**run["phantoms"][-1], **({"model": run["model"]} if len(runs) > 1 else {})}), flush=True)
    for run, net, name in zip(runs, nets, names):
        run["phantom_summary"] = phantom_summary(run["phantoms"])
        print(json.dumps({"model": run["model"], **run["phantom_summary"]}), flush=True)
        if not args.no_real:
            run.update(real_ct(args, lambda ct, g, net=net: segment(net, ct, g),
                               lambda source, output, name=name: segment_command(name, source, output)))
    if args.json:
        Path(args.json).write_text(json.dumps(runs[0] if len(runs) == 1 else {"runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
