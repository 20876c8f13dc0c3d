"""``femurunet export``: a CT and its femur label as PNG training pairs."""
from __future__ import annotations

from ..export import export_files
from ..options import EMPTY_FRACTION
from .common import window_arg


def run_export(args) -> int:
    summary = export_files(args.ct, args.label, args.outdir, case=args.case, labels=args.labels,
                           segments=args.segments, empty_fraction=args.empty_fraction,
                           resample_label=args.resample_label, window=window_arg(args.window), seed=args.seed,
                           negative=args.negative, replace=args.replace)
    print(f"{summary['case']}: {summary['slices']} slices ({summary['positive']} with femur, "
          f"{summary['negative']} without), {summary['slice_shape'][1]}x{summary['slice_shape'][0]} pixels "
          f"-> {args.outdir}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a CT + femur label as PNG training pairs",
                              description="Export a CT and its femur label as the seed's training folders "
                                          "(OUTDIR/image, OUTDIR/label, OUTDIR/dataset.json); appends to OUTDIR.")
    p.add_argument("ct", metavar="CT", help="CT volume file or DICOM folder")
    p.add_argument("label", metavar="LABEL", help="labelmap (.nii.gz/.nrrd/...) or Slicer .seg.nrrd")
    p.add_argument("outdir", metavar="OUTDIR", help="dataset folder (created or appended to)")
    p.add_argument("--case", help="case name (slice files are <case>_<k>.png; default: from the CT file name)")
    p.add_argument("--labels", help="label values that are femur, e.g. 1,2 (default: every nonzero value)")
    p.add_argument("--segments", help="segment names of a .seg.nrrd, comma-separated (default: all)")
    p.add_argument("--empty-fraction", type=float, default=EMPTY_FRACTION,
                   help=f"fraction of the label-free slices to include as negatives (default {EMPTY_FRACTION:g})")
    p.add_argument("--resample-label", action="store_true",
                   help="resample a label on another grid onto the CT grid (nearest neighbour)")
    p.add_argument("--window", metavar="CENTER,WIDTH", help="HU window (default: the engine's 400,2000)")
    p.add_argument("--seed", type=int, default=0, help="seed for choosing the label-free slices (default 0)")
    p.add_argument("--negative", action="store_true",
                   help="the scan has no femur (its LABEL is empty): export --empty-fraction of its slices as negatives")
    p.add_argument("--replace", action="store_true",
                   help="replace a case of the same name already in OUTDIR (e.g. after correcting it); its old slices go")
    p.set_defaults(func=run_export)
