"""Metrics against hand-computed values and brute force, and ``femurunet evaluate`` end to end (label by label,
left/right femur with the midline split of a one-label prediction, the femur-free false-positive mode)."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.distance import cdist

from FemurUNetTrainLib import cli
from FemurUNetLib.evaluate import (dice, evaluate_labels, false_positives, femur_rows, hd95, midline, off_target_ml,
                                   seed_dice, split_at_midline, volume_ml)
from FemurUNetLib.geometry import Geometry

ANISOTROPIC = (3.0, 1.0, 0.5)   # numpy (k, j, i) order: sz, sy, sx


def test_dice_by_hand():
    a, b = np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])
    assert dice(a, b) == 0.5                                  # 2*1 / (2+2)
    assert seed_dice(a, b) == pytest.approx(3 / 5)            # (2*1+1) / (2+2+1)
    assert dice(a, a) == 1.0 and seed_dice(a, a) == 1.0
    empty = np.zeros(4, bool)
    assert dice(empty, empty) == 1.0 and seed_dice(empty, empty) == 1.0
    assert dice(a, empty) == 0.0 and seed_dice(a, empty) == pytest.approx(1 / 3)
    three = np.array([[1, 1], [1, 0]])
    assert dice(three, np.array([[1, 0], [0, 0]])) == pytest.approx(2 / 4)
    with pytest.raises(ValueError):
        dice(a, np.ones(5))


def _cube(shift=(0, 0, 0)):
    mask = np.zeros((20, 20, 20), bool)
    z, y, x = (4 + s for s in shift)
    mask[z:z + 10, y:y + 10, x:x + 10] = True
    return mask


@pytest.mark.parametrize("axis, expected", [(0, 2 * 3.0), (1, 2 * 1.0), (2, 2 * 0.5)])
def test_hd95_of_shifted_cubes_uses_the_spacing_of_each_axis(axis, expected):
    """Two 10-voxel cubes shifted by 2 voxels: the 100 voxels of the trailing face are exactly 2 steps from the
    other cube's surface and all other surface voxels are closer; they are 20% of the surface, so p95 = 2 steps."""
    shift = [0, 0, 0]
    shift[axis] = 2
    a, b = _cube(), _cube(tuple(shift))
    assert hd95(a, b, ANISOTROPIC) == pytest.approx(expected)
    assert hd95(b, a, ANISOTROPIC) == pytest.approx(expected)
    assert hd95(a, a, ANISOTROPIC) == 0.0


def _surface_points(mask, spacing):
    padded = np.pad(mask, 1)
    interior = padded.copy()
    for axis in range(3):
        interior &= np.roll(padded, 1, axis) & np.roll(padded, -1, axis)
    surface = mask & ~interior[1:-1, 1:-1, 1:-1]
    return np.argwhere(surface) * np.asarray(spacing)


def test_hd95_matches_brute_force_on_random_blobs():
    rng = np.random.default_rng(3)
    for _ in range(3):
        a = ndimage.binary_opening(rng.random((12, 14, 16)) > 0.4)
        b = ndimage.binary_opening(rng.random((12, 14, 16)) > 0.45)
        pa, pb = _surface_points(a, ANISOTROPIC), _surface_points(b, ANISOTROPIC)
        d = cdist(pa, pb)
        expected = max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))
        assert hd95(a, b, ANISOTROPIC) == pytest.approx(expected)


def test_empty_masks():
    empty, cube = np.zeros((5, 5, 5), bool), _cube()[:5, :5, :5]
    assert cube.any()
    assert hd95(empty, empty, (1, 1, 1)) == 0.0
    assert hd95(cube, empty, (1, 1, 1)) == math.inf and hd95(empty, cube, (1, 1, 1)) == math.inf
    assert volume_ml(empty, (1, 1, 1)) == 0.0


def test_volume_ml():
    mask = np.zeros((4, 4, 4), bool)
    mask[0, 0, :3] = True
    assert volume_ml(mask, (10.0, 2.0, 5.0)) == pytest.approx(3 * 100 / 1000)


def test_evaluate_labels_rows():
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[_cube()] = 1
    ref[0, 0, :5] = 3
    pred = np.zeros_like(ref)
    pred[_cube((2, 0, 0))] = 1
    pred[19, 19, :2] = 2
    rows = {r["label"]: r for r in evaluate_labels(pred, ref, ANISOTROPIC)}
    assert list(rows) == [1, 2, 3, "any"]
    voxel_ml = 1.5 / 1000
    one = rows[1]
    assert one["dice"] == pytest.approx(0.8) and one["seed_dice"] == pytest.approx(1601 / 2001)
    assert one["hd95_mm"] == pytest.approx(6.0)
    assert one["volume_pred_ml"] == pytest.approx(1000 * voxel_ml) and one["volume_diff_ml"] == pytest.approx(0)
    assert one["volume_diff_percent"] == pytest.approx(0)
    two, three = rows[2], rows[3]
    assert two["dice"] == 0.0 and two["hd95_mm"] == math.inf and two["volume_diff_percent"] == math.inf
    assert two["seed_dice"] == pytest.approx(1 / 3)
    assert three["volume_pred_ml"] == 0 and three["volume_diff_percent"] == pytest.approx(-100)
    anything = rows["any"]
    assert anything["dice"] == pytest.approx(2 * 800 / (1002 + 1005))
    assert anything["volume_diff_ml"] == pytest.approx((1002 - 1005) * voxel_ml)
    # probability-like float masks are not label images
    with pytest.raises(Exception, match="label"):
        evaluate_labels(pred * 0.5, ref, ANISOTROPIC)


def _write(path, array, spacing=(0.5, 1.0, 3.0), origin=(0.0, 0.0, 0.0), direction=None):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(tuple(np.asarray(direction, float).ravel()))
    sitk.WriteImage(image, str(path))
    return str(path)


@pytest.fixture
def masks(tmp_path):
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[_cube()] = 1
    pred = np.zeros_like(ref)
    pred[_cube((2, 0, 0))] = 1
    return tmp_path, _write(tmp_path / "pred.nii.gz", pred), _write(tmp_path / "ref.nrrd", ref.astype(np.float32))


def test_cli_prints_the_table_and_writes_csv(masks, capsys):
    tmp_path, pred, ref = masks
    out = tmp_path / "sub" / "metrics.csv"
    assert cli.main(["evaluate", pred, ref, "--csv", str(out)]) == 0
    text = capsys.readouterr().out
    lines = text.strip().splitlines()
    assert lines[0].split()[:4] == ["label", "dice", "seed_dice", "hd95_mm"]
    assert lines[1].split()[:4] == ["1", "0.8000", "0.8001", "6.0000"]
    assert lines[2].split()[0] == "any"
    assert len({len(line) for line in lines[:3]}) == 1                      # aligned columns
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["1", "any"]
    assert float(rows[0]["dice"]) == pytest.approx(0.8) and float(rows[0]["hd95_mm"]) == pytest.approx(6.0)
    assert float(rows[0]["volume_ref_ml"]) == pytest.approx(1000 * 1.5 / 1000)
    assert [p.name for p in out.parent.iterdir()] == ["metrics.csv"]        # no temporary file left


@pytest.mark.parametrize("change", ["origin", "spacing", "size"])
def test_cli_rejects_images_on_different_grids(masks, capsys, change):
    tmp_path, pred, _ = masks
    ref = np.zeros((20, 20, 20), np.uint8) if change != "size" else np.zeros((20, 20, 21), np.uint8)
    kwargs = {"origin": dict(origin=(0.0, 0.0, 1.5)), "spacing": dict(spacing=(0.5, 1.0, 2.0)), "size": {}}[change]
    other = _write(tmp_path / "other.mha", ref, **kwargs)
    out = tmp_path / "m.csv"
    assert cli.main(["evaluate", pred, other, "--csv", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and pred in err and other in err
    assert ("size" if change == "size" else change) in err
    assert not out.exists() and captured.out == ""


def test_cli_names_a_missing_or_unreadable_file(masks, capsys):
    tmp_path, pred, _ = masks
    missing = str(tmp_path / "nope.nii.gz")
    assert cli.main(["evaluate", pred, missing]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and missing in err
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image")
    assert cli.main(["evaluate", str(garbage), pred]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(garbage) in err


# --- left / right femur ---------------------------------------------------------------------------------------
GRIDS = {                                                  # direction columns: the i, j, k axes in LPS
    "LPS": np.eye(3),
    "RAS-stored (i toward patient right, like pelvis_3mm)": np.diag([-1.0, -1.0, 1.0]),
    "permuted (j across the patient, toward right)": np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
}
SPACING_IJK = (3.0, 2.0, 1.5)


def _femur_case(direction):
    """Slabs across the patient's left-right axis, found from the voxels' LPS x (not from the code under test).

    With 24 distinct x positions xs (ascending = toward patient left): left femur = xs[17..20], right femur =
    xs[3..6], so the centroid midpoint is halfway between xs[11] and xs[12]; the extra slabs xs[11] (right of
    the midline) and xs[12] (left of it) are the prediction's errors.
    """
    shape = (5, 24, 24)                                    # numpy (k, j, i)
    geometry = Geometry(SPACING_IJK, (10.0, -20.0, 30.0), direction)
    x = np.round(geometry.physical_points(shape)[..., 0], 6)
    xs = np.unique(x)
    assert len(xs) == 24

    def slabs(a, b):
        return (x >= xs[a]) & (x <= xs[b])

    return geometry, slabs(17, 20), slabs(3, 6), slabs(11, 11), slabs(12, 12), (xs[11] + xs[12]) / 2


@pytest.mark.parametrize("direction", GRIDS.values(), ids=GRIDS.keys())
def test_one_label_prediction_is_split_at_the_midline(direction):
    geometry, left, right, just_right, just_left, mid_x = _femur_case(direction)
    pred = (left | right | just_right | just_left).astype(np.uint8)
    line = midline(left, right, geometry)
    assert line.lps_x == pytest.approx(mid_x)
    assert line.source.startswith("midway between the reference femur centroids")
    got_left, got_right = split_at_midline(pred, line)
    assert np.array_equal(got_left, left | just_left) and np.array_equal(got_right, right | just_right)
    result = femur_rows(pred, left, right, geometry)
    rows = {r["label"]: r for r in result.rows}
    assert list(rows) == ["left", "right", "both"]
    assert rows["left"]["dice"] == pytest.approx(8 / 9) and rows["right"]["dice"] == pytest.approx(8 / 9)
    assert rows["both"]["dice"] == pytest.approx(16 / 18)
    assert result.midline == line and f"LPS x {mid_x:.1f} mm" in result.note and "\n" not in result.note


@pytest.mark.parametrize("direction", GRIDS.values(), ids=GRIDS.keys())
@pytest.mark.parametrize("value", [1, 2, 255])
def test_correct_one_label_prediction_scores_one_per_side(direction, value):
    """Any one non-zero value is 'femur': a correct prediction gets Dice 1 and HD95 0 per side, not 0 / inf."""
    geometry, left, right, *_ = _femur_case(direction)
    rows = femur_rows((left | right).astype(np.uint8) * value, left, right, geometry).rows
    for row in rows:
        assert row["dice"] == 1.0 and row["hd95_mm"] == 0.0 and row["volume_diff_ml"] == 0.0


def test_two_label_prediction_is_compared_label_by_label():
    geometry, left, right, *_ = _femur_case(np.eye(3))
    swapped = (left * 2 + right * 1).astype(np.uint8)      # sides swapped: label by label, not re-split
    result = femur_rows(swapped, left, right, geometry)
    rows = {r["label"]: r for r in result.rows}
    assert rows["left"]["dice"] == 0.0 and rows["right"]["dice"] == 0.0 and rows["both"]["dice"] == 1.0
    assert result.midline is None and "label by label" in result.note
    rows = femur_rows((left * 1 + right * 2).astype(np.uint8), left, right, geometry).rows
    assert [r["dice"] for r in rows] == [1.0, 1.0, 1.0]


def test_midline_falls_back_to_the_volume_centre_when_a_reference_femur_is_empty():
    geometry, left, _, *_ = _femur_case(np.diag([-1.0, -1.0, 1.0]))
    line = midline(left, np.zeros_like(left), geometry)
    assert line.source.startswith("volume centre") and line.native_index == pytest.approx(11.5)
    result = femur_rows(left.astype(np.uint8), left, np.zeros_like(left), geometry)
    assert [r["dice"] for r in result.rows] == [1.0, 1.0, 1.0]


def _write_case(tmp_path, direction, pred):
    geometry, left, right, *_ = _femur_case(direction)
    kw = dict(spacing=SPACING_IJK, origin=geometry.origin, direction=direction)
    return (_write(tmp_path / "pred.nii.gz", pred(left, right), **kw),
            _write(tmp_path / "left.nii.gz", left.astype(np.float32), **kw),     # float 0/1 like TotalSegmentator
            _write(tmp_path / "right.nii.gz", right.astype(np.float32), **kw),
            _write(tmp_path / "both.nrrd", (left * 1 + right * 2).astype(np.uint8), **kw), kw)


@pytest.mark.parametrize("direction", GRIDS.values(), ids=GRIDS.keys())
def test_cli_two_reference_files_and_one_labelmap_give_the_same_rows(tmp_path, capsys, direction):
    pred, left, right, both, _ = _write_case(tmp_path, direction, lambda l, r: (l | r).astype(np.uint8))
    out = tmp_path / "m.csv"
    assert cli.main(["evaluate", pred, left, right, "--csv", str(out)]) == 0
    two_files = capsys.readouterr().out.splitlines()
    assert two_files[0].startswith("midline split of the one-label prediction: left = patient-left of LPS x")
    assert [line.split()[:2] for line in two_files[2:5]] == [["left", "1.0000"], ["right", "1.0000"],
                                                            ["both", "1.0000"]]
    with open(out, newline="") as f:
        assert [r["label"] for r in csv.DictReader(f)] == ["left", "right", "both"]
    assert cli.main(["evaluate", pred, both]) == 0
    assert capsys.readouterr().out.splitlines() == two_files[:5]


def test_cli_one_label_reference_is_still_compared_label_by_label(masks, capsys):
    _, pred, ref = masks
    assert cli.main(["evaluate", pred, ref]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "label" and [line.split()[0] for line in lines[1:]] == ["1", "any"]


def _error(capsys, argv):
    assert cli.main(["evaluate", *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and len(err.splitlines()) == 1 and err.startswith("femurunet evaluate: error: ")
    return err


def test_cli_errors_for_mismatched_inputs(tmp_path, capsys):
    eye = np.eye(3)
    pred, left, right, both, kw = _write_case(tmp_path, eye, lambda l, r: (l * 1 + r * 3).astype(np.uint8))
    err = _error(capsys, [pred, left, right])                  # labels 1 and 3 against left/right femurs
    assert pred in err and "1, 3" in err
    err = _error(capsys, [pred, both])
    assert pred in err and "1, 3" in err
    err = _error(capsys, [both, both, right])                  # a 1/2 labelmap passed as one femur mask
    assert both in err and "1, 2" in err
    err = _error(capsys, [right, left, left])                  # the same femur twice
    assert "overlap" in err and left in err
    moved = _write(tmp_path / "moved.nii.gz", np.zeros((5, 24, 24), np.float32), **{**kw, "origin": (0, 0, 0)})
    err = _error(capsys, [right, left, moved])
    assert left in err and moved in err and "origin" in err
    err = _error(capsys, [moved, left, right])
    assert moved in err and left in err and "origin" in err
    two_label = _write(tmp_path / "two.nii.gz", np.asarray(sitk.GetArrayFromImage(sitk.ReadImage(both))), **kw)
    err = _error(capsys, [two_label, left])                     # left/right prediction, one-label reference
    assert left in err and two_label in err and "REF_LEFT REF_RIGHT" in err
    assert "at most two" in _error(capsys, [pred, left, right, both])
    assert "--no-femur" in _error(capsys, [pred])
    assert "--no-femur" in _error(capsys, [pred, left, "--no-femur"])
    assert str(tmp_path / "nope.nii.gz") in _error(capsys, [pred, left, str(tmp_path / "nope.nii.gz")])


def test_off_target_volume_counts_pieces_apart_from_the_reference_not_its_rims():
    ref = np.zeros((10, 20, 50), bool)
    ref[2:8, 5:15, 10:20] = True
    pred = ref.copy()
    pred[2:8, 5:15, 20] = True                               # a rim on the reference's piece: 60 voxels
    pred[2:4, 5:7, 40:43] = True                             # a piece apart: 12 voxels
    pred[8, 15, 21] = True                                   # touches the rim by a corner only: the same piece
    assert off_target_ml(pred, ref, (3.0, 1.0, 0.5)) == pytest.approx(12 * 1.5 / 1000)
    assert off_target_ml(ref, ref, (3.0, 1.0, 0.5)) == 0.0
    everything = np.count_nonzero(pred) * 1.5 / 1000
    assert off_target_ml(pred, np.zeros_like(ref), (3.0, 1.0, 0.5)) == pytest.approx(everything)


def test_false_positives():
    pred = np.zeros((10, 20, 50), np.uint8)                  # 10,000 voxels of 0.5 * 1 * 3 mm
    pred[0, 0, :4] = 1
    pred[9, 19, 49] = 2
    rows = false_positives(pred, (3.0, 1.0, 0.5))
    assert [r["label"] for r in rows] == [1, 2, "any"]
    assert rows[-1] == dict(label="any", voxels_labelled=5, voxels_total=10000, percent=pytest.approx(0.05),
                            volume_ml=pytest.approx(5 * 1.5 / 1000))
    assert [r["label"] for r in false_positives(pred > 0, (3.0, 1.0, 0.5))] == ["any"]


def test_cli_no_femur_mode(tmp_path, capsys):
    pred = np.zeros((10, 20, 50), np.uint8)
    pred[0, 0, :3] = 1
    path = _write(tmp_path / "fp.nii.gz", pred)
    out = tmp_path / "fp.csv"
    assert cli.main(["evaluate", path, "--no-femur", "--csv", str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line == (f"{path}: 3 of 10,000 voxels labelled = 0.0300 % of the volume, 0.00 ml "
                    "(femur-free scan: all false positives)")
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["label"] == "any" and rows[0]["voxels_labelled"] == "3" and float(rows[0]["percent"]) == 0.03
    assert float(rows[0]["volume_ml"]) == pytest.approx(3 * 1.5 / 1000)
    assert cli.main(["evaluate", _write(tmp_path / "none.nii.gz", pred * 0), "--no-femur"]) == 0
    assert " 0 of 10,000 voxels labelled = 0.0000 %" in capsys.readouterr().out


def test_real_pelvis_reference_union_scores_one_per_side(real_ct, tmp_path, capsys):
    """The union of the two TotalSegmentator masks, as a one-label prediction, is split back into exactly them."""
    pelvis = real_ct / "pelvis_3mm"
    left_path, right_path = str(pelvis / "femur_left.nii.gz"), str(pelvis / "femur_right.nii.gz")
    left_image = sitk.ReadImage(left_path)
    union = (sitk.GetArrayFromImage(left_image) + sitk.GetArrayFromImage(sitk.ReadImage(right_path))) > 0
    image = sitk.GetImageFromArray(union.astype(np.uint8))
    image.CopyInformation(left_image)
    pred = str(tmp_path / "union.nii.gz")
    sitk.WriteImage(image, pred)
    out = tmp_path / "pelvis.csv"
    assert cli.main(["evaluate", pred, left_path, right_path, "--csv", str(out)]) == 0
    assert capsys.readouterr().out.startswith("midline split of the one-label prediction")
    with open(out, newline="") as f:
        rows = {r["label"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["left", "right", "both"]
    for row in rows.values():
        assert float(row["dice"]) == 1.0 and float(row["hd95_mm"]) == 0.0
    assert round(float(rows["both"]["volume_ref_ml"]) * 1000 / 27) == 6049   # 2,267 + 3,782 voxels of 3 mm


@pytest.mark.parametrize("offset", [(0, 0, 0), (5, 9, 3), (14, 26, 20)])   # at the border, inside, far corner
def test_hd95_on_the_bounding_box_equals_the_whole_volume_computation(offset):
    rng = np.random.default_rng(sum(offset))
    a, b = np.zeros((20, 32, 28), bool), np.zeros((20, 32, 28), bool)
    k, j, i = offset
    a[k:k + 6, j:j + 6, i:i + 8] = rng.random((6, 6, 8))[: 20 - k, : 32 - j, : 28 - i] > 0.3
    b[max(k - 2, 0):k + 5, j:j + 4, max(i - 3, 0):i + 8] = True
    spacing = (2.5, 0.7, 1.1)

    def surface(m):
        return m & ~ndimage.binary_erosion(m, border_value=0)

    whole = max(np.percentile(ndimage.distance_transform_edt(~surface(b), sampling=spacing)[surface(a)], 95),
                np.percentile(ndimage.distance_transform_edt(~surface(a), sampling=spacing)[surface(b)], 95))
    assert hd95(a, b, spacing) == pytest.approx(whole, abs=1e-12)
