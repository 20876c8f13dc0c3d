"""Segmentation metrics (Dice, the seed's smoothed Dice, HD95, volumes) and ``femurunet evaluate``.

Array functions take ``spacing`` in numpy (k, j, i) order, i.e. ``reversed(image.GetSpacing())``.

Femur references (label 1 = left femur, 2 = right femur, or two mask files): a prediction with labels 1 and 2 is
compared label by label; a prediction with one label (any non-zero value, as ``femurunet segment`` writes) is
split at the patient's midline first (``midline``: midway between the two reference femurs' centroids along the
patient left-right axis of the canonical LPS frame). Rows ``left``, ``right`` and ``both`` (union vs union).
``false_positives`` measures a prediction on a femur-free scan (``femurunet evaluate PRED --no-femur``).
``off_target_ml``: the volume of labelled pieces that touch no reference voxel (labels on other bones).
"""
from __future__ import annotations

import csv
import io
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import FemurUNetError
from .geometry import Geometry, Reorientation
from .plausibility import CONNECTIVITY

LEFT, RIGHT = 1, 2          # label values of a two-label femur labelmap (as the phantoms and training data)
FP_COLUMNS = ("label", "voxels_labelled", "voxels_total", "percent", "volume_ml")

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
    box = ndimage.find_objects((a | b).view(np.uint8))[0]   # every surface voxel lies in the union's bounding box:
    a, b = a[box], b[box]                                  # the same surfaces and exact distances, far less work
    surf_a, surf_b = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~surf_b, sampling=spacing)[surf_a]
    to_a = ndimage.distance_transform_edt(~surf_a, sampling=spacing)[surf_b]
    return float(max(np.percentile(to_b, 95), np.percentile(to_a, 95)))


def volume_ml(mask, spacing) -> float:
    mask = np.asarray(mask).astype(bool, copy=False)
    return int(np.count_nonzero(mask)) * float(np.prod(_spacing(spacing, mask.ndim))) / 1000.0


def off_target_ml(pred, ref, spacing) -> float:
    """Volume (ml) of the 26-connected pieces of ``pred`` (3-D) that share no voxel with ``ref``: labels on other
    bones or tissue, not the rims of the pieces that found the femur."""
    pred, ref = np.asarray(pred).astype(bool, copy=False), np.asarray(ref).astype(bool, copy=False)
    pieces, _ = ndimage.label(pred, structure=CONNECTIVITY)
    return volume_ml(pred & ~np.isin(pieces, np.unique(pieces[pred & ref])), spacing)


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


def _values(labels) -> list:
    return sorted(int(v) for v in np.unique(labels) if v != 0)


# --- femur left / right -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Midline:
    """The plane splitting a one-label prediction into the patient's left and right femur.

    It is normal to the canonical (LPS-reoriented, see ``Reorientation``) x axis, which grows toward patient left,
    at canonical x ``index``; a voxel with a larger canonical x is on the left. ``axis``/``native_index``: the same
    plane in the image's own index axis; ``lps_x``: LPS x (mm) of the midpoint the plane goes through.
    """
    index: float
    native_index: float
    axis: str
    toward_left: bool
    lps_x: float
    source: str

    def describe(self) -> str:
        sign = ">" if self.toward_left else "<"
        return (f"midline split of the one-label prediction: left = patient-left of LPS x {self.lps_x:.1f} mm "
                f"(image axis {self.axis} {sign} {self.native_index:.2f}), right = the rest; {self.source}")


def midline(ref_left, ref_right, geometry: Geometry) -> Midline:
    """Midway between the centroids of the left and right reference femurs along the patient left-right axis
    (the volume centre if either reference is empty). README's real-CT figures are computed with it."""
    ref_left, ref_right = np.asarray(ref_left) != 0, np.asarray(ref_right) != 0
    reo = Reorientation.for_geometry(geometry)
    src, flip = reo.axes[2], reo.flip[2]          # numpy axis feeding canonical x, and whether it is reversed
    if ref_left.any() and ref_right.any():
        centroids = [np.array(ndimage.center_of_mass(m)) for m in (ref_left, ref_right)]
        source = "midway between the reference femur centroids"
    else:
        centroids = [(np.array(ref_left.shape) - 1) / 2.0] * 2
        source = "volume centre (a reference femur is empty)"
    mid = 0.5 * (centroids[0] + centroids[1])     # numpy (k, j, i)
    native = float(mid[src])
    index = ref_left.shape[src] - 1 - native if flip else native
    lps_x = float((geometry.ijk_to_lps() @ np.append(mid[::-1], 1.0))[0])
    return Midline(index=index, native_index=native, axis="kji"[src], toward_left=not flip, lps_x=lps_x,
                   source=source)


def split_at_midline(pred, line: Midline) -> tuple:
    """(left, right) boolean masks of the non-zero voxels of ``pred``; a voxel on the plane counts as right."""
    pred = np.asarray(pred) != 0
    src = "kji".index(line.axis)
    native = np.arange(pred.shape[src], dtype=np.float64)
    canonical = native if line.toward_left else pred.shape[src] - 1 - native
    shape = [1, 1, 1]
    shape[src] = -1
    is_left = (canonical > line.index).reshape(shape)
    return pred & is_left, pred & ~is_left


@dataclass(frozen=True)
class FemurEvaluation:
    rows: list                  # left, right, both
    note: str                   # how the prediction was assigned to the sides (one line)
    midline: Midline = None     # None when the prediction was compared label by label


def femur_rows(pred, ref_left, ref_right, geometry: Geometry, pred_name: str = "prediction") -> FemurEvaluation:
    """Rows ``left``, ``right``, ``both`` of a prediction against left and right femur reference masks.

    A prediction with labels 1 and 2 is compared label by label (1 = left, 2 = right); one with one label (any
    non-zero value) or none is split by ``midline``; other label sets raise ``FemurUNetError`` naming ``pred_name``.
    """
    pred = _labels(pred, pred_name)
    ref_left, ref_right = np.asarray(ref_left) != 0, np.asarray(ref_right) != 0
    if not pred.shape == ref_left.shape == ref_right.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {ref_left.shape} / {ref_right.shape}")
    values, line = _values(pred), None
    if values == [LEFT, RIGHT]:
        left, right = pred == LEFT, pred == RIGHT
        note = "two-label prediction compared label by label: 1 = left, 2 = right"
    elif len(values) <= 1:
        line = midline(ref_left, ref_right, geometry)
        left, right = split_at_midline(pred, line)
        note = line.describe()
    else:
        raise FemurUNetError(f"{pred_name}: labels {_list(values)}; against left/right femur references a "
                             "prediction needs one label (split at the midline) or exactly 1 = left, 2 = right")
    sp = tuple(reversed(geometry.spacing))
    rows = [_row("left", left, ref_left, sp), _row("right", right, ref_right, sp),
            _row("both", left | right, ref_left | ref_right, sp)]
    return FemurEvaluation(rows, note, line)


def _list(values, most: int = 6) -> str:
    values = list(values)
    more = f", ... ({len(values)} values)" if len(values) > most else ""
    return (", ".join(str(v) for v in values[:most]) or "none") + more


def false_positives(pred, spacing) -> list:
    """Labelled voxels of a prediction on a femur-free scan: one row per non-zero label, then ``any``."""
    pred = _labels(pred, "prediction")
    voxel_ml = float(np.prod(_spacing(spacing, pred.ndim))) / 1000.0
    masks = [(v, pred == v) for v in _values(pred)] if len(_values(pred)) > 1 else []
    rows = []
    for label, mask in masks + [("any", pred != 0)]:
        n = int(np.count_nonzero(mask))
        rows.append(dict(label=label, voxels_labelled=n, voxels_total=int(pred.size),
                         percent=100.0 * n / pred.size, volume_ml=n * voxel_ml))
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


def csv_text(rows, columns=COLUMNS) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([r[c] if not isinstance(r[c], float) else f"{r[c]:.6f}" for c in columns])
    return out.getvalue()


def write_csv(path, rows, columns=COLUMNS) -> Path:
    """Write the rows as CSV under a temporary name beside ``path``, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial.csv")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(csv_text(rows, columns))
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


def _read_labels(path) -> tuple:
    from .volume_io import read_volume

    array, geometry = read_volume(path)
    return _labels(array, path), geometry


def _femur_mask(array, path):
    values = _values(array)
    if len(values) > 1:
        raise FemurUNetError(f"{path}: a femur mask holds one non-zero value, found labels {_list(values)} "
                             "(a 1 = left / 2 = right labelmap is given alone as REF)")
    return array != 0


def read_femur_reference(left_path, right_path) -> tuple:
    """(left mask, right mask, Geometry) from two femur mask files on one grid (any one non-zero value each)."""
    left, geometry = _read_labels(left_path)
    right, right_geometry = _read_labels(right_path)
    _check_same_grid(left_path, geometry, left.shape, right_path, right_geometry, right.shape)
    left, right = _femur_mask(left, left_path), _femur_mask(right, right_path)
    overlap = int(np.count_nonzero(left & right))
    if overlap:
        raise FemurUNetError(f"{left_path} and {right_path} overlap in {overlap} voxels (left and right femur "
                             "masks must be disjoint)")
    return left, right, geometry
