"""Segmentation metrics (Dice, the seed's smoothed Dice, HD95, volumes) and ``femurunet evaluate``.

Array functions take ``spacing`` in numpy (k, j, i) order, i.e. ``reversed(image.GetSpacing())``.
"""
from __future__ import annotations

import csv
import io
import math
import os
import secrets
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import FemurUNetError

COLUMNS = ("label", "dice", "seed_dice", "hd95_mm", "volume_pred_ml", "volume_ref_ml", "volume_diff_ml",
           "volume_diff_percent")


def _pair(a, b):
    a, b = np.asarray(a).astype(bool, copy=False), np.asarray(b).astype(bool, copy=False)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    return a, b


def dice(a, b, smooth: float = 0.0) -> float:
    """(2|A∩B| + smooth) / (|A| + |B| + smooth); 1.0 when both masks are empty."""
    a, b = _pair(a, b)
    total = int(a.sum()) + int(b.sum())
    if total == 0 and smooth == 0:
        return 1.0
    return (2.0 * int(np.count_nonzero(a & b)) + smooth) / (total + smooth)


def seed_dice(a, b) -> float:
    """The seed project's Dice: smooth 1, (2|A∩B| + 1) / (|A| + |B| + 1)."""
    return dice(a, b, smooth=1.0)


def _spacing(spacing, ndim):
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or min(spacing) <= 0:
        raise ValueError(f"spacing must be {ndim} positive numbers in numpy axis order, got {spacing}")
    return spacing


def _surface(mask):
    """Voxels of the mask with a face neighbour outside it (the image border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(a, b, spacing) -> float:
    """Symmetric 95th-percentile Hausdorff distance (mm) between the surfaces of two masks.

    max(p95 of A-surface -> B-surface distances, p95 of B -> A), as in DeepMind's surface-distance and MONAI.
    Both empty: 0.0; exactly one empty: inf.
    """
    a, b = _pair(a, b)
    spacing = _spacing(spacing, a.ndim)
    empty_a, empty_b = not a.any(), not b.any()
    if empty_a and empty_b:
        return 0.0
    if empty_a or empty_b:
        return math.inf
    surf_a, surf_b = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~surf_b, sampling=spacing)[surf_a]
    to_a = ndimage.distance_transform_edt(~surf_a, sampling=spacing)[surf_b]
    return float(max(np.percentile(to_b, 95), np.percentile(to_a, 95)))


def volume_ml(mask, spacing) -> float:
    mask = np.asarray(mask).astype(bool, copy=False)
    return int(np.count_nonzero(mask)) * float(np.prod(_spacing(spacing, mask.ndim))) / 1000.0


def _row(label, pred, ref, spacing) -> dict:
    v_pred, v_ref = volume_ml(pred, spacing), volume_ml(ref, spacing)
    diff = v_pred - v_ref
    percent = 100.0 * diff / v_ref if v_ref > 0 else (0.0 if v_pred == 0 else math.inf)
    return dict(label=label, dice=dice(pred, ref), seed_dice=seed_dice(pred, ref), hd95_mm=hd95(pred, ref, spacing),
                volume_pred_ml=v_pred, volume_ref_ml=v_ref, volume_diff_ml=diff, volume_diff_percent=percent)


def _labels(array, name="labels"):
    array = np.asarray(array)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise FemurUNetError(f"{name}: not a label image (non-integer values)")
        array = array.astype(np.int64)
    elif array.dtype.kind not in "biu":
        raise FemurUNetError(f"{name}: not a label image (dtype {array.dtype})")
    return array


def evaluate_labels(pred, ref, spacing) -> list:
    """One row per non-zero label value found in either image, then ``label="any"`` (all non-zero as one)."""
    pred, ref = _labels(pred, "prediction"), _labels(ref, "reference")
    if pred.shape != ref.shape:
        raise ValueError(f"label image shapes differ: {pred.shape} vs {ref.shape}")
    values = sorted(int(v) for v in np.union1d(np.unique(pred), np.unique(ref)) if v != 0)
    rows = [_row(v, pred == v, ref == v, spacing) for v in values]
    rows.append(_row("any", pred != 0, ref != 0, spacing))
    return rows


# --- CLI ----------------------------------------------------------------------------------------------------
def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(rows) -> str:
    header = ("label", "dice", "seed_dice", "hd95_mm", "vol_pred_ml", "vol_ref_ml", "vol_diff_ml", "vol_diff_%")
    cells = [header] + [tuple(_format(r[c]) for c in COLUMNS) for r in rows]
    widths = [max(len(row[n]) for row in cells) for n in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def csv_text(rows) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([r[c] if not isinstance(r[c], float) else f"{r[c]:.6f}" for c in COLUMNS])
    return out.getvalue()


def write_csv(path, rows) -> Path:
    """Write the rows as CSV under a temporary name beside ``path``, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial.csv")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(csv_text(rows))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FemurUNetError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path


def _check_same_grid(pred_path, pred_geometry, pred_shape, ref_path, ref_geometry, ref_shape) -> None:
    def differ(what, a, b):
        raise FemurUNetError(f"{pred_path} and {ref_path} are on different grids: {what} {a} vs {b}")

    if pred_shape != ref_shape:
        differ("size (i, j, k)", tuple(pred_shape[::-1]), tuple(ref_shape[::-1]))
    if not np.allclose(pred_geometry.spacing, ref_geometry.spacing, rtol=1e-4, atol=1e-6):
        differ("spacing", _mm(pred_geometry.spacing), _mm(ref_geometry.spacing))
    if not np.allclose(pred_geometry.origin, ref_geometry.origin, rtol=0, atol=1e-3 * min(pred_geometry.spacing)):
        differ("origin", _mm(pred_geometry.origin), _mm(ref_geometry.origin))
    if not np.allclose(pred_geometry.direction, ref_geometry.direction, rtol=0, atol=1e-4):
        differ("direction", _mm(pred_geometry.direction.ravel()), _mm(ref_geometry.direction.ravel()))


def _mm(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def run_evaluate(args) -> int:
    from .volume_io import read_volume

    pred, pred_geometry = read_volume(args.pred)
    ref, ref_geometry = read_volume(args.ref)
    _check_same_grid(args.pred, pred_geometry, pred.shape, args.ref, ref_geometry, ref.shape)
    pred, ref = _labels(pred, args.pred), _labels(ref, args.ref)
    rows = evaluate_labels(pred, ref, tuple(reversed(pred_geometry.spacing)))
    print(format_table(rows))
    if args.csv:
        write_csv(args.csv, rows)
        print(f"-> {args.csv}")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="compare a predicted labelmap with a reference",
                              description="Dice, the seed's smoothed Dice, HD95 and volumes per label value "
                                          "(and for all labels together) of PRED against REF; both on one grid.")
    p.add_argument("pred", metavar="PRED", help="predicted labelmap (NIfTI/NRRD/MHA)")
    p.add_argument("ref", metavar="REF", help="reference labelmap on the same grid")
    p.add_argument("--csv", metavar="OUT", help="also write the table as CSV")
    p.set_defaults(func=run_evaluate)
