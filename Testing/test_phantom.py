"""Synthetic hip phantom: determinism, anatomy, HU levels, exact truth on any grid, files and ``sample``."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from FemurUNetTrainLib import cli
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.geometry import Geometry, Reorientation
from FemurUNetLib.phantom import LEFT, RIGHT, SLICE_SPACINGS, TISSUE, generate_case, write_case

COARSE = dict(shape=(36, 96, 96), spacing=(4.0, 4.0, 4.0))   # whole default field of view, 4 mm voxels


def _rotation(rx, ry, rz):
    rx, ry, rz = np.radians([rx, ry, rz])
    mx = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    my = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    mz = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return mz @ my @ mx


def _centroid_lps(mask, geometry):
    ijk = np.argwhere(mask)[:, ::-1].mean(axis=0)
    return geometry.ijk_to_lps()[:3, :3] @ ijk + np.asarray(geometry.origin)


def test_same_seed_same_case_other_seed_other_case():
    a, b, c = generate_case(7, **COARSE), generate_case(7, **COARSE), generate_case(8, **COARSE)
    assert np.array_equal(a.ct, b.ct) and np.array_equal(a.label, b.label) and a.geometry == b.geometry
    assert a.name == "phantom0007"
    assert not np.array_equal(a.ct, c.ct)
    assert not np.array_equal(a.label, c.label)


def test_default_case_is_a_proximal_femur_ct():
    case = generate_case(4)
    nk, nj, ni = case.ct.shape
    assert case.ct.dtype == np.int16 and case.label.dtype == np.uint8
    assert set(np.unique(case.label)) == {0, LEFT, RIGHT}
    canonical = Reorientation.for_geometry(case.geometry)
    spacing = canonical.canonical_spacing(case.geometry)
    label = canonical.to_canonical(case.label)
    assert spacing[2] in SLICE_SPACINGS and 192 <= min(label.shape[1:]) and max(label.shape[1:]) <= 300
    assert 330 <= label.shape[2] * spacing[0] <= 520               # field of view (mm)
    assert 40 <= label.shape[0] <= 96
    per_slice = label.reshape(label.shape[0], -1).any(axis=1)
    assert per_slice.mean() > 0.6                                   # label in a good share of slices
    assert not per_slice[-1] and per_slice[0]                       # absent at the top, shaft at the bottom
    assert (label.shape[0] - 1 - np.nonzero(per_slice)[0].max()) * spacing[2] >= 10
    tissue = canonical.to_canonical(case.tissue)
    outside = [TISSUE["air"], TISSUE["table"]]
    assert np.isin(tissue[:, :, [0, -1]], outside).all() and np.isin(tissue[:, [0, -1], :], outside).all()  # whole body


def test_left_femur_has_larger_lps_x_on_a_flipped_grid():
    case = generate_case(3, **COARSE, direction=np.diag([-1.0, -1.0, 1.0]))
    left, right = _centroid_lps(case.label == LEFT, case.geometry), _centroid_lps(case.label == RIGHT, case.geometry)
    assert left[0] > 50 and right[0] < -50                          # patient left is +x in LPS
    # on this grid i runs toward patient right, so the left femur has the smaller i index
    assert np.argwhere(case.label == LEFT)[:, 2].mean() < np.argwhere(case.label == RIGHT)[:, 2].mean()


def test_hu_levels_of_the_tissues_are_ordered_and_plausible():
    case = generate_case(11, shape=(48, 192, 192), spacing=(2.0, 2.0, 3.0), metal=False)
    median = {name: float(np.median(case.ct[case.tissue == value]))
              for name, value in TISSUE.items() if np.any(case.tissue == value)}
    assert median["femur_cortex"] > median["femur_marrow"] + 300
    assert median["femur_marrow"] > median["soft_tissue"] + 80
    assert median["soft_tissue"] > median["fat"] + 100
    assert median["fat"] > median["air"] + 700
    assert median["air"] < -950 and -130 < median["fat"] < -60 and 20 < median["soft_tissue"] < 75
    assert 120 < median["femur_marrow"] < 420 and median["femur_cortex"] > 600     # thin cortex: partial volume
    assert np.percentile(case.ct[case.tissue == TISSUE["femur_cortex"]], 95) > 900
    assert case.ct.min() >= -1024 and case.ct.max() <= 3071
    # the label is the whole femur: cortex and marrow, nothing else
    assert np.array_equal(case.label > 0, np.isin(case.tissue, [TISSUE["femur_cortex"], TISSUE["femur_marrow"]]))


def test_femoral_head_sits_in_the_acetabulum_with_a_thin_joint_space():
    spacing = (1.5, 1.5, 2.0)
    case = generate_case(5, shape=(75, 200, 200), spacing=spacing, direction=np.eye(3), metal=False)
    pelvis = np.isin(case.tissue, [TISSUE["pelvis_cortex"], TISSUE["pelvis_marrow"]])
    assert not np.any(pelvis & (case.label > 0))
    for value in (LEFT, RIGHT):
        femur = case.label == value
        top = np.nonzero(femur.any(axis=(1, 2)))[0].max()
        region = np.s_[top - 25:top + 1]                            # the top 50 mm: the femoral head
        distance = ndimage.distance_transform_edt(~femur[region], sampling=spacing[::-1])
        near = distance[pelvis[region]]
        assert 1.0 <= near.min() <= 3.0          # a 1-2 mm joint space: often no soft-tissue voxel in between
        assert np.count_nonzero(near <= 3.0) > 200                  # bone against bone over the whole cup


@pytest.mark.parametrize("direction", [np.diag([-1.0, -1.0, 1.0]), np.eye(3)[:, [1, 0, 2]] * [1, -1, -1],
                                       np.eye(3)[:, [2, 0, 1]]])
def test_flipped_or_permuted_grid_holds_exactly_the_same_truth(direction):
    """Same voxel centres in another index order: the label must match voxel for voxel after reorientation."""
    reference = generate_case(5, **COARSE, direction=np.eye(3))
    world_axis = [int(np.argmax(np.abs(direction[:, a]))) for a in range(3)]     # of index axes i, j, k
    spacing_xyz, shape_xyz = COARSE["spacing"], COARSE["shape"][::-1]
    case = generate_case(5, shape=tuple(shape_xyz[w] for w in world_axis)[::-1],
                         spacing=tuple(spacing_xyz[w] for w in world_axis), direction=direction)
    canonical = Reorientation.for_geometry(case.geometry)
    label = canonical.to_canonical(case.label)
    assert label.shape == reference.label.shape
    assert np.array_equal(label, reference.label)
    assert np.array_equal(canonical.to_canonical(case.tissue), reference.tissue)
    inside = reference.label > 0
    ct = canonical.to_canonical(case.ct).astype(float)
    assert abs(ct[inside].mean() - reference.ct[inside].mean()) < 5     # only the noise differs
    assert 5 < np.abs(ct - reference.ct).mean() < 60


def test_oblique_grid_holds_the_same_femur_volumes():
    reference = generate_case(6, **COARSE, direction=np.eye(3))
    points = reference.geometry.physical_points(reference.label.shape).reshape(-1, 3)
    lo, hi = points.min(axis=0) + 10, points.max(axis=0) - 10
    oblique = generate_case(6, shape=(57, 120, 120), spacing=(4.0, 4.0, 4.0), direction=_rotation(15, -10, 20))
    assert not np.allclose(np.abs(oblique.geometry.direction), np.eye(3), atol=0.1)

    def in_box(case):
        """Per femur: volume (ml) and LPS centroid of the label voxels whose centres lie in the box."""
        pts = case.geometry.physical_points(case.label.shape)
        inside = np.all((pts >= lo) & (pts <= hi), axis=-1)
        voxel_ml = np.prod(case.geometry.spacing) / 1000
        masks = [(case.label == v) & inside for v in (LEFT, RIGHT)]
        return np.array([m.sum() * voxel_ml for m in masks]), np.array([pts[m].mean(axis=0) for m in masks])

    (expected, expected_centre), (got, got_centre) = in_box(reference), in_box(oblique)
    assert np.all(expected > 80)
    assert np.allclose(got, expected, rtol=0.02), (got, expected)
    assert np.abs(got_centre - expected_centre).max() < 1.0          # mm, the same place


def test_metal_changes_the_image_not_the_truth():
    plain = generate_case(9, **COARSE, direction=np.eye(3), metal=False)
    metal = generate_case(9, **COARSE, direction=np.eye(3), metal=True)
    assert metal.metal and not plain.metal
    assert np.array_equal(plain.label, metal.label)
    assert not np.any(plain.tissue == TISSUE["metal"]) and np.any(metal.tissue == TISSUE["metal"])
    assert metal.ct.max() > 2500 > plain.ct.max()
    # same seed and grid: same anatomy and noise, so the images differ only by the implant and its streaks
    difference = metal.ct.astype(float) - plain.ct
    assert not np.any(difference[-1])                                # top slice: above the implant
    soft = (plain.tissue == TISSUE["soft_tissue"]) & (metal.tissue == TISSUE["soft_tissue"])
    rows = np.any(metal.tissue == TISSUE["metal"], axis=(1, 2))
    streaks = difference[rows][soft[rows]]
    assert streaks.std() > 10 and np.abs(streaks).max() > 100         # bright and dark lines in soft tissue
    outside = plain.tissue == TISSUE["air"]
    assert not np.any(difference[outside & (ndimage.distance_transform_edt(outside) > 2)])   # not in the air


def test_arms_are_unlabelled_long_bones_beside_the_trunk():
    grid = dict(shape=(30, 130, 130), spacing=(4.0, 4.0, 5.0), direction=np.eye(3), metal=False)
    plain, arms = generate_case(9, **grid, arms=False), generate_case(9, **grid, arms=True)
    assert arms.arms and not plain.arms
    assert np.array_equal(plain.label, arms.label)                   # the truth does not move
    arm_bone = np.isin(arms.tissue, [TISSUE["arm_cortex"], TISSUE["arm_marrow"]])
    assert not np.any(np.isin(plain.tissue, [TISSUE["arm_cortex"], TISSUE["arm_marrow"]]))
    assert not np.any(arm_bone & (arms.label > 0))
    assert np.median(arms.ct[arms.tissue == TISSUE["arm_cortex"]]) > 600   # as bright as a femoral shaft
    # one bone per side (or two: radius and ulna), through every slice, lateral to both femora
    x = arms.geometry.physical_points(arms.label.shape)[..., 0]
    femur_x = np.abs(x[arms.label > 0]).max()
    for side in (-1, 1):
        bone = arm_bone & (side * x > 0)
        assert bone.any(axis=(1, 2)).all()
        assert np.abs(x[bone]).min() > femur_x + 20
        assert 1 <= ndimage.label(bone[15])[1] <= 2
    # the rest of the image is the same patient: same noise, no change inside the trunk's bones
    trunk_bone = np.isin(plain.tissue, [TISSUE["femur_cortex"], TISSUE["pelvis_cortex"]])
    assert np.array_equal(plain.ct[trunk_bone], arms.ct[trunk_bone])


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(FemurUNetError, match="orthonormal"):
        generate_case(1, **COARSE, direction=np.diag([2.0, 1.0, 1.0]))
    with pytest.raises(FemurUNetError, match="seed"):
        generate_case(-1)
    with pytest.raises(FemurUNetError, match="spacing"):
        generate_case(1, shape=(10, 10, 10), spacing=(1.0, 0.0, 1.0))


def test_written_files_read_back_identically(tmp_path):
    direction = np.eye(3)[:, [1, 0, 2]] * [-1, 1, -1]
    case = generate_case(2, shape=(20, 40, 50), spacing=(8.0, 9.0, 7.0), direction=direction)
    ct_path, label_path = write_case(case, tmp_path / "out")
    assert ct_path == tmp_path / "out" / "phantom0002_ct.nii.gz"
    assert label_path == tmp_path / "out" / "phantom0002_femur.nii.gz"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([ct_path.name, label_path.name])
    for path, array, pixel in ((ct_path, case.ct, sitk.sitkInt16), (label_path, case.label, sitk.sitkUInt8)):
        image = sitk.ReadImage(str(path))
        assert image.GetPixelID() == pixel
        assert np.array_equal(sitk.GetArrayFromImage(image), array)
        assert Geometry.from_sitk(image) == case.geometry


def test_sample_subcommand_writes_the_cases(tmp_path, capsys):
    out = tmp_path / "phantoms"
    assert cli.main(["sample", str(out), "--cases", "2", "--seed", "12", "--phantom", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("phantom0012") and lines[1].startswith("phantom0013")
    assert sorted(p.name for p in out.iterdir()) == ["phantom0012_ct.nii.gz", "phantom0012_femur.nii.gz",
                                                     "phantom0013_ct.nii.gz", "phantom0013_femur.nii.gz"]
    expected = generate_case(13)
    image = sitk.ReadImage(str(out / "phantom0013_femur.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(image), expected.label)
    assert Geometry.from_sitk(image) == expected.geometry


def test_sample_rejects_no_cases(tmp_path, capsys):
    assert cli.main(["sample", str(tmp_path / "x"), "--cases", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--cases" in err
    assert not (tmp_path / "x").exists()


def test_write_case_writes_both_files_or_neither(tmp_path, monkeypatch):
    from FemurUNetLib import volume_io
    case = generate_case(5, shape=(8, 32, 32))
    real = volume_io.write_image
    calls = []

    def second_fails(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(volume_io, "write_image", second_fails)   # write_case imports it when called
    with pytest.raises(FemurUNetError, match="cannot write the phantom files"):
        write_case(case, tmp_path)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []       # the CT written first did not appear alone
