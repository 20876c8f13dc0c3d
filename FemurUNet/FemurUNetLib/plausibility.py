"""Plausibility check of a femur labelmap: per-side volume, pieces, length, HU; one-line warnings.

Pure numpy/scipy (no torch, no Slicer): ``check_plausibility(labelmap, hu, geometry, labels)`` on the CT grid.

Sides. A model whose label records all carry ``side`` ('left'/'right', e.g. 1 = left, 2 = right) is trusted:
its labels give the sides. Otherwise every labelled voxel goes to the side of the patient's midline it lies
on: the LPS x of the body's centroid (voxels above -300 HU; +x is the patient's left). In a field that holds
one hip or one leg that centroid lies on the femur itself; so when it cuts the largest labelled piece (at least
``ONE_SIDED_FRACTION`` of it on each side) and that piece is one femur wide (under ``ONE_FEMUR_WIDTH_MM`` of x),
the report's split is "one-sided": that piece's x band, widened by ``SIDE_MARGIN_MM``, is one side and the rest
the other; the band is named by the sign of the piece's mean LPS x (DICOM's patient coordinates put x = 0 at
the scanner's isocentre, where the patient is centred; a volume whose origin was moved makes the name a guess).
The removal of detached pieces keeps the midline split (the one-sided split failed its rule there:
docs/MODEL_HISTORY.md, run 17).

Per side the report holds the volume, the pieces ("components", 26-connected) of at least ``LARGE_ML``,
the cranio-caudal length the large pieces cover (first to last labelled slice along the axis closest to
superior), their mean cross-section (volume / length) and largest slice area, and the HU inside the labels.

Warnings and why (adult femur anatomy; limits are generous so that a real femur never trips them):

* mean cross-section outside 2-45 cm2: the shaft (canal included) is 4-9 cm2, the proximal femur
  (head, neck, trochanters cut obliquely) 15-30 cm2, the condyles up to ~40-45 cm2. A one-slice cap of
  the femoral head or condyles at the edge of the scan can be ~2 cm2; more than 45 is not one femur.
* one slice larger than 60 cm2: the largest femoral cross-section (condyles) is ~45 cm2, plus a margin for
  partial volume at thick slices.
* more than 1000 ml on a side: a whole adult femur is 300-800 ml (+25 % for partial volume).
* longer than 550 mm: the femur is ~27 % of stature, 35-52 cm in adults (~53 cm at 2 m tall).
* the large pieces lie wholly inside the scanned volume (over ``EDGE_MARGIN_MM`` from its lower and upper end
  and from the sides of its field) and cover under 250 mm: a femur either leaves the scan (the scan's range or a
  small field cuts it) or lies in it whole, and a whole femur is over 250 mm long (27 % of a 95 cm child); such
  labels are another bone: a shin bone in a scan below the knee, an arm bone, a piece of the pelvis. The margin:
  a network may miss a femur's last slices at a scan's end (15 mm, three 5 mm slices, seen in development
  phantoms: docs/MODEL_HISTORY.md, "Labels inside the scan").
* more than two large pieces overall, or (when that is not the case) more than one on a side: a CT holds
  at most two femurs, each one piece of bone (a second piece on a side is e.g. the tibia or the pelvis).
* a large piece with under 2 % of its voxels above 300 HU (one line per side): every femur has a cortex
  (1000-1800 HU, still > 300 HU blurred over 3-5 mm voxels); the real proximal femurs in the test CT
  (../shared/data/real_ct/pelvis_3mm) have 17 % and 46 %.
* under 20 % of a side's labelled voxels above 150 HU (bone), when no piece already tripped the cortex
  check: soft tissue is below 100 HU (muscle 40-60, fat -120..-80, air -1000), so such labels lie mostly
  off bone. Not the median: the shaft's fatty canal (-50..-100 HU in adults) can be half of its cross-
  section, so a shaft-only femur may have a fat-like median; its cortex alone is 30-60 % of the voxels,
  and the real proximal femur in the test CT has 51 % and 75 % above 150 HU.
* two or more pieces under 1 ml that together outweigh the large pieces: scattered false positives.
* at least ``MIN_IMPLANT_ML`` of a side's labels above ``IMPLANT_HU`` (2500 HU): metal, an implant (a hip or knee
  replacement, screws); cortical bone stays under ~2000 HU, titanium and cobalt-chrome reach the scanner's top
  (3071 HU on a 12-bit scale). Not an error in itself (a hip replacement's stem belongs to the femur), but the demo
  model, trained on phantoms, also labels a hip replacement's liner and cup (docs/MODEL_HISTORY.md, "Hip
  arthroplasty as patients have it"): the labels around an implant need checking.

An empty labelmap gives no warning (a scan need not show a femur).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage

from .geometry import Geometry, Reorientation

SIDES = ("left", "right")
CONNECTIVITY = np.ones((3, 3, 3), bool)   # 26-connected pieces
BODY_HU = -300.0                 # body mask for the midline
CORTEX_HU = 300.0                # cortical bone is above this
LARGE_ML = 1.0                   # a piece this large counts as a component
MEAN_AREA_CM2 = (2.0, 45.0)      # volume / covered length
MAX_SLICE_AREA_CM2 = 60.0
MAX_VOLUME_ML = 1000.0
MAX_LENGTH_MM = 550.0
MIN_CORTEX_FRACTION = 0.02
BONE_HU = 150.0                  # cancellous bone and cortex are above this, soft tissue below ~100
MIN_BONE_FRACTION = 0.20
IMPLANT_HU = 2500.0              # metal: above cortical bone (< ~2000 HU)
MIN_IMPLANT_ML = 1.0
MIN_WHOLE_FEMUR_MM = 250.0     # a femur that lies wholly inside the scan is longer than this
EDGE_MARGIN_MM = 20.0          # labels this close to a face of the scanned volume reach it (edge slices missed)
ONE_SIDED_FRACTION = 0.01      # the midline cuts the largest piece when this share of it lies on each side
ONE_FEMUR_WIDTH_MM = 200.0     # one femur spans under ~150 mm of x (head or trochanter to condyles); two more
SIDE_MARGIN_MM = 20.0          # a one-sided split: the largest piece's x band widened by this


@dataclass
class SideReport:
    side: str
    volume_ml: float = 0.0                          # every labelled voxel of the side
    components_ml: list = field(default_factory=list)   # large pieces (>= LARGE_ML), largest first
    cortex_fractions: list = field(default_factory=list)  # per large piece: fraction of voxels > CORTEX_HU
    small_pieces: int = 0
    small_ml: float = 0.0
    length_mm: float = 0.0                          # covered by the large pieces
    end_gaps_mm: tuple = ()                         # from the large pieces to the scan's lower and upper end
    side_gap_mm: float = 0.0                        # from the large pieces to the nearest in-plane field edge
    mean_area_cm2: float = 0.0
    max_area_cm2: float = 0.0
    median_hu: Optional[float] = None
    bone_fraction: float = 0.0                      # fraction of the side's voxels above BONE_HU
    implant_ml: float = 0.0                         # labelled voxels above IMPLANT_HU

    def summary(self) -> str:
        if not self.volume_ml:
            return f"{self.side} femur: none"
        text = (f"{self.side} femur: {self.volume_ml:.1f} ml, {len(self.components_ml)} component(s) >= "
                f"{LARGE_ML:g} ml")
        if self.components_ml:
            text += f", {self.length_mm:.0f} mm long, mean cross-section {self.mean_area_cm2:.1f} cm2"
        if self.small_pieces:
            text += f", {self.small_pieces} small piece(s) ({self.small_ml:.2f} ml)"
        return text + f", median {self.median_hu:.0f} HU"


@dataclass
class PlausibilityReport:
    sides: dict                      # 'left'/'right' -> SideReport
    warnings: list                   # one line each
    split: str = "midline"           # 'labels' (the model's left/right labels), 'midline' or 'one-sided'
    midline_x: Optional[float] = None   # LPS x (mm) of the body's centroid, for 'midline' and 'one-sided'

    @property
    def plausible(self) -> bool:
        return not self.warnings

    def summary_lines(self) -> list:
        lines = [self.sides[s].summary() for s in SIDES]
        if self.split == "one-sided":
            lines.append("one-sided field (one hip or leg): sides split beside the largest piece, not at the body's "
                         "centre; left/right from the scanner's centre (x = 0)")
        return lines


def midline_x(hu: np.ndarray, geometry: Geometry) -> float:
    """LPS x (mm) of the centroid of the body (voxels above BODY_HU), on a subsampled grid; grid centre if none."""
    step = max(1, int(round((hu.size / 4e6) ** (1 / 3))))
    body = np.asarray(hu[::step, ::step, ::step]) > BODY_HU
    count = int(np.count_nonzero(body))
    if count:   # centroid from the three marginal profiles (exact, and no index arrays of the whole mask)
        kji = [float((body.sum(axis=tuple(a for a in range(3) if a != axis)) * np.arange(body.shape[axis])).sum())
               * step / count for axis in range(3)]
    else:
        kji = [(n - 1) / 2 for n in hu.shape]
    return float((geometry.ijk_to_lps() @ np.array([kji[2], kji[1], kji[0], 1.0]))[0])


def _lps_x(shape, offset, geometry: Geometry) -> np.ndarray:
    """LPS x of every voxel of a (k, j, i) box starting at index ``offset`` (k, j, i), by broadcasting."""
    k, j, i = (np.arange(o, o + n, dtype=np.float64) for o, n in zip(offset, shape))
    return geometry.lps_coordinate(0, k[:, None, None], j[None, :, None], i[None, None, :])


def bounding_box(mask: np.ndarray):
    """Slices of the smallest box holding ``mask``'s True voxels, or None."""
    box = []
    for axis in range(3):
        hit = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        if not hit.size:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _has_sides(labels) -> bool:
    return bool(labels) and all(l.get("side") in SIDES for l in labels)


def side_masks(labels_box: np.ndarray, offset, geometry: Geometry, hu: np.ndarray, labels,
               one_sided: bool = False) -> tuple:
    """({side: bool mask in the box}, split method, midline x or None). ``one_sided``: allow the one-sided split."""
    if _has_sides(labels):
        return ({s: np.isin(labels_box, [l["value"] for l in labels if l["side"] == s]) for s in SIDES},
                "labels", None)
    mid = midline_x(hu, geometry)
    x = _lps_x(labels_box.shape, offset, geometry)
    femur = labels_box > 0
    band = one_sided_band(femur, x, mid) if one_sided else None
    if band is not None:
        inside, side = band
        other = SIDES[1 - SIDES.index(side)]
        return {side: femur & inside, other: femur & ~inside}, "one-sided", mid
    left = x > mid
    return {"left": femur & left, "right": femur & ~left}, "midline", mid


def labelled_pieces(mask: np.ndarray) -> tuple:
    """(26-connected pieces of ``mask`` numbered from 1, voxel count per number with 0 for the background)."""
    pieces, count = ndimage.label(mask, structure=CONNECTIVITY)
    sizes = np.bincount(pieces.ravel(), minlength=count + 1)
    sizes[0] = 0
    return pieces, sizes


def one_sided_band(femur: np.ndarray, x: np.ndarray, mid: float):
    """(bool mask of the largest piece's x band widened by SIDE_MARGIN_MM, that piece's side) when the midline x
    ``mid`` cuts that piece and it is one femur wide, else None. ``x``: LPS x of every voxel of ``femur``."""
    pieces, sizes = labelled_pieces(femur)
    if len(sizes) < 2:
        return None
    px = x[pieces == int(sizes.argmax())]
    across = min(np.count_nonzero(px > mid), np.count_nonzero(px <= mid)) / px.size
    if across < ONE_SIDED_FRACTION or np.ptp(px) > ONE_FEMUR_WIDTH_MM:
        return None
    inside = (x >= px.min() - SIDE_MARGIN_MM) & (x <= px.max() + SIDE_MARGIN_MM)
    return inside, "left" if px.mean() > 0 else "right"          # x = 0: the scanner's isocentre


def _gaps_to_the_edges(mask: np.ndarray, frame: tuple, geometry: Geometry, z_axis: int) -> tuple:
    """((below, above), in-plane) distances in mm from ``mask``'s voxels to the scanned volume's faces: to its
    lower and upper end, and to the nearest side face. ``frame``: the box's first index (k, j, i), the volume's
    shape, whether ``z_axis`` runs toward inferior."""
    start, shape, downward = frame
    near, far = {}, {}
    for axis, box in enumerate(bounding_box(mask)):
        step = geometry.spacing[2 - axis]
        near[axis] = float((start[axis] + box.start) * step)
        far[axis] = float((shape[axis] - start[axis] - box.stop) * step)
    ends = (near[z_axis], far[z_axis])
    return ends[::-1] if downward else ends, min(min(near[a], far[a]) for a in range(3) if a != z_axis)


def _measure_side(side: str, mask: np.ndarray, hu: np.ndarray, geometry: Geometry, z_axis: int,
                  frame: tuple) -> SideReport:
    """Volume, pieces, length, areas, gaps to the volume's faces and HU of one side's mask (hu: the same box of
    the CT; ``frame``: as ``_gaps_to_the_edges`` takes it)."""
    report = SideReport(side)
    if not mask.any():
        return report
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    pieces, n = ndimage.label(mask, structure=CONNECTIVITY)
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)[1:] * voxel_ml
    cortex = np.bincount(pieces.ravel(), weights=(hu > CORTEX_HU).ravel(), minlength=n + 1)[1:]
    large = np.nonzero(sizes >= LARGE_ML)[0]
    large = large[np.argsort(-sizes[large])]
    report.volume_ml = float(sizes.sum())
    report.components_ml = [float(sizes[c]) for c in large]
    report.cortex_fractions = [float(cortex[c] * voxel_ml / sizes[c]) for c in large]
    report.small_pieces = int(n - large.size)
    report.small_ml = report.volume_ml - float(sizes[large].sum())
    inside = hu[mask]
    report.median_hu = float(np.median(inside))
    report.bone_fraction = float(np.count_nonzero(inside > BONE_HU)) / inside.size
    report.implant_ml = float(np.count_nonzero(inside > IMPLANT_HU)) * voxel_ml
    if large.size:
        thickness = geometry.spacing[2 - z_axis]
        in_large = np.isin(pieces, large + 1)
        per_slice = in_large.sum(axis=tuple(a for a in range(3) if a != z_axis)) * voxel_ml * 10 / thickness
        covered = np.nonzero(per_slice)[0]
        report.length_mm = float((covered[-1] - covered[0] + 1) * thickness)
        report.end_gaps_mm, report.side_gap_mm = _gaps_to_the_edges(in_large, frame, geometry, z_axis)
        report.mean_area_cm2 = float(sizes[large].sum() * 10 / report.length_mm)   # ml * 10 / mm = cm2
        report.max_area_cm2 = float(per_slice.max())
    return report


def _side_warnings(r: SideReport) -> list:
    """The anatomical and HU warnings of one side (not the component count: that needs both sides)."""
    warnings, name = [], f"{r.side} femur"
    if r.components_ml:
        lo, hi = MEAN_AREA_CM2
        if not lo <= r.mean_area_cm2 <= hi:
            warnings.append(f"{name}: {sum(r.components_ml):.0f} ml over {r.length_mm:.0f} mm is a mean "
                            f"cross-section of {r.mean_area_cm2:.1f} cm2; a real femur has {lo:g}-{hi:g} cm2")
        if r.max_area_cm2 > MAX_SLICE_AREA_CM2:
            warnings.append(f"{name}: {r.max_area_cm2:.0f} cm2 in one slice; a femur's largest cross-section "
                            f"(the condyles) is under {MAX_SLICE_AREA_CM2:g} cm2")
        if _inside_the_scan(r) and r.length_mm < MIN_WHOLE_FEMUR_MM:
            warnings.append(f"{name}: {sum(r.components_ml):.0f} ml over {r.length_mm:.0f} mm lie wholly inside "
                            f"the scan ({r.end_gaps_mm[0]:.0f} mm above its lower end, {r.end_gaps_mm[1]:.0f} mm "
                            f"below its upper end); a femur leaves the scan or, whole, is over "
                            f"{MIN_WHOLE_FEMUR_MM:g} mm long: probably another bone (a tibia, fibula or arm bone)")
        if r.length_mm > MAX_LENGTH_MM:
            warnings.append(f"{name}: labels span {r.length_mm:.0f} mm; an adult femur is at most "
                            f"~{MAX_LENGTH_MM:g} mm long")
    if r.volume_ml > MAX_VOLUME_ML:
        warnings.append(f"{name}: {r.volume_ml:.0f} ml; a whole adult femur is 300-800 ml "
                        f"(limit {MAX_VOLUME_ML:g} ml)")
    boneless = [(ml, f) for ml, f in zip(r.components_ml, r.cortex_fractions) if f < MIN_CORTEX_FRACTION]
    if boneless:
        warnings.append(f"{name}: {len(boneless)} of {len(r.components_ml)} component(s) "
                        f"({_ml_list([ml for ml, _ in boneless])}) have under {100 * MIN_CORTEX_FRACTION:g} % of "
                        f"their voxels above {CORTEX_HU:g} HU (the largest {100 * boneless[0][1]:.1f} %): "
                        "no cortical bone, probably not bone")
    elif r.volume_ml and r.bone_fraction < MIN_BONE_FRACTION:
        warnings.append(f"{name}: only {100 * r.bone_fraction:.0f} % of the labelled voxels are above {BONE_HU:g} "
                        f"HU (median {r.median_hu:.0f} HU): the labels lie mostly on soft tissue, fat or air")
    if r.small_pieces >= 2 and r.small_ml > sum(r.components_ml):
        warnings.append(f"{name}: {r.small_pieces} pieces under {LARGE_ML:g} ml ({r.small_ml:.2f} ml in all) "
                        f"against {sum(r.components_ml):.1f} ml in larger ones: probably scattered false positives")
    if r.implant_ml >= MIN_IMPLANT_ML:
        warnings.append(f"{name}: {r.implant_ml:.1f} ml of the labels are metal (above {IMPLANT_HU:g} HU), an implant: "
                        "check the labels around it (a hip replacement's liner and cup)")
    return warnings


def _inside_the_scan(r: SideReport) -> bool:
    """True when the side's large pieces come no closer than EDGE_MARGIN_MM to any face of the scanned volume
    (a femur that is not whole in the scan leaves it through one: an end, or the side of a small field)."""
    return bool(r.end_gaps_mm) and min(*r.end_gaps_mm, r.side_gap_mm) > EDGE_MARGIN_MM


def _ml_list(values, most: int = 5) -> str:
    text = ", ".join(f"{ml:.1f}" for ml in values[:most]) + " ml"
    return text + (f" and {len(values) - most} more" if len(values) > most else "")


def _component_warnings(sides: dict) -> list:
    count = sum(len(r.components_ml) for r in sides.values())
    if count > 2:
        per_side = ", ".join(f"{r.side} {len(r.components_ml)} ({_ml_list(r.components_ml)})"
                             for r in sides.values() if r.components_ml)
        return [f"{count} components >= {LARGE_ML:g} ml: {per_side}; a CT holds at most two femurs, one piece each"]
    return [f"{r.side} femur: {len(r.components_ml)} components >= {LARGE_ML:g} ml "
            f"({_ml_list(r.components_ml)}); a femur is one piece"
            for r in sides.values() if len(r.components_ml) > 1]


def check_plausibility(labelmap: np.ndarray, hu: np.ndarray, geometry: Geometry,
                       labels: Optional[list] = None) -> PlausibilityReport:
    """Per-side report and warnings for a femur labelmap (uint8, (k, j, i)) on the grid of ``hu``.

    ``labels``: the model's label records (value, name, optional side); with a side on every record the
    labels give the sides, otherwise the body's midline does (or, in a one-sided field, the largest piece).
    """
    labelmap, hu = np.asarray(labelmap), np.asarray(hu)
    if labelmap.shape != hu.shape:
        raise ValueError(f"labelmap shape {labelmap.shape} differs from the CT's {hu.shape}")
    box = bounding_box(labelmap > 0)
    if box is None:
        return PlausibilityReport({s: SideReport(s) for s in SIDES}, [], "labels" if _has_sides(labels) else "midline")
    offset = tuple(b.start for b in box)
    masks, split, mid = side_masks(labelmap[box], offset, geometry, hu, labels, one_sided=True)
    reorient = Reorientation.for_geometry(geometry)
    z_axis = reorient.axes[0]
    frame = (offset, labelmap.shape, reorient.flip[0])
    sides = {s: _measure_side(s, masks[s], hu[box], geometry, z_axis, frame) for s in SIDES}
    warnings = _component_warnings(sides)
    for s in SIDES:
        warnings += _side_warnings(sides[s])
    return PlausibilityReport(sides, warnings, split, mid)


def check_result(result, hu: np.ndarray) -> PlausibilityReport:
    """Check an engine SegmentationResult against its CT array; stores the report as ``result.plausibility``."""
    report = check_plausibility(result.labelmap, hu, result.geometry, result.labels)
    result.plausibility = report
    return report
