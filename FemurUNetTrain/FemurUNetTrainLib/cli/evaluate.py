"""``femurunet evaluate``: Dice/HD95 of a prediction against a reference, or false positives of a femur-free scan."""
from __future__ import annotations

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.evaluate import (FP_COLUMNS, LEFT, RIGHT, _check_same_grid, _read_labels, _values, evaluate_labels,
                                   false_positives, femur_rows, format_table, read_femur_reference, write_csv)


def _reference(args, pred, geometry):
    """(left, right) femur masks, or None for a reference that is not a left/right femur labelmap."""
    if len(args.refs) == 2:
        left, right, ref_geometry = read_femur_reference(*args.refs)
        _check_same_grid(args.pred, geometry, pred.shape, args.refs[0], ref_geometry, left.shape)
        return left, right, None
    ref, ref_geometry = _read_labels(args.refs[0])
    _check_same_grid(args.pred, geometry, pred.shape, args.refs[0], ref_geometry, ref.shape)
    if _values(ref) == [LEFT, RIGHT]:
        return ref == LEFT, ref == RIGHT, None
    if _values(pred) == [LEFT, RIGHT] and len(_values(ref)) == 1:
        raise FemurUNetError(f"{args.refs[0]}: one label ({_values(ref)[0]}) but {args.pred} has labels 1 = left, "
                             "2 = right; give the reference as REF_LEFT REF_RIGHT or as one 1/2 labelmap")
    return None, None, ref


def _check_arguments(args) -> None:
    if args.no_femur and args.refs:
        raise FemurUNetError("--no-femur takes no reference (it counts what PRED labels in a femur-free scan)")
    if not args.no_femur and not args.refs:
        raise FemurUNetError("give a reference (REF, or REF_LEFT REF_RIGHT), or --no-femur for a femur-free scan")
    if len(args.refs) > 2:
        raise FemurUNetError(f"at most two references (REF_LEFT REF_RIGHT), got {len(args.refs)}: "
                             + " ".join(args.refs))


def _run_no_femur(args) -> int:
    pred, geometry = _read_labels(args.pred)
    rows = false_positives(pred, tuple(reversed(geometry.spacing)))
    for r in rows:
        what = "voxels labelled" if r["label"] == "any" else f"voxels labelled {r['label']}"
        print(f"{args.pred}: {r['voxels_labelled']:,} of {r['voxels_total']:,} {what} = {r['percent']:.4f} % "
              f"of the volume, {r['volume_ml']:.2f} ml (femur-free scan: all false positives)")
    if args.csv:
        write_csv(args.csv, rows, FP_COLUMNS)
        print(f"-> {args.csv}")
    return 0


def run_evaluate(args) -> int:
    _check_arguments(args)
    if args.no_femur:
        return _run_no_femur(args)
    pred, geometry = _read_labels(args.pred)
    left, right, ref = _reference(args, pred, geometry)
    if ref is not None:
        rows = evaluate_labels(pred, ref, tuple(reversed(geometry.spacing)))
    else:
        result = femur_rows(pred, left, right, geometry, args.pred)
        rows = result.rows
        print(result.note)
    print(format_table(rows))
    if args.csv:
        write_csv(args.csv, rows)
        print(f"-> {args.csv}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="compare a predicted labelmap with a reference, or count false positives",
        usage="femurunet evaluate PRED (REF | REF_LEFT REF_RIGHT | --no-femur) [--csv OUT]",
        description="Dice, the seed's smoothed Dice, HD95 and volumes of PRED against a reference on the same grid. "
                    "REF: a labelmap; one with labels 1 = left femur, 2 = right femur (or two mask files REF_LEFT "
                    "REF_RIGHT, any one non-zero value each) gives rows left, right and both (union). A one-label "
                    "PRED (any non-zero value, as `femurunet segment` writes) is then split at the patient's "
                    "midline: midway between the two reference femurs' centroids along the left-right axis (the "
                    "line printed says where); a PRED with labels 1 and 2 is compared label by label. Any other "
                    "REF: one row per label value and one for all labels (any). --no-femur: PRED of a scan without "
                    "femur; prints the labelled voxels, their percent of the volume and ml.")
    p.add_argument("pred", metavar="PRED", help="predicted labelmap (NIfTI/NRRD/MHA)")
    p.add_argument("refs", metavar="REF", nargs="*",
                   help="reference labelmap, or left and right femur masks (REF_LEFT REF_RIGHT), on PRED's grid")
    p.add_argument("--no-femur", action="store_true",
                   help="PRED is of a femur-free scan: report its labelled voxels (all false positives)")
    p.add_argument("--csv", metavar="OUT", help="also write the table as CSV")
    p.set_defaults(func=run_evaluate)
