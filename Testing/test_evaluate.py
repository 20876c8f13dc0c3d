"""Metrics against hand-computed values and brute force, and ``femurunet evaluate`` end to end."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.distance import cdist

from FemurUNetLib import cli
from FemurUNetLib.evaluate import dice, evaluate_labels, hd95, seed_dice, volume_ml

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


def _write(path, array, spacing=(0.5, 1.0, 3.0), origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
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
