"""FemurUNetLib.plausibility: per-side report and one-line warnings on crafted and real labelmaps, and the
warning's way out through the CLI, the MRML bridge and the batch script."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from FemurUNetLib.geometry import Geometry
from FemurUNetLib.modelfile import save_model
from FemurUNetLib.plausibility import SIDES, check_plausibility, midline_x
from conftest import threshold_unet
from test_cli_segment import run_cli

PIXEL, N = 2.5, 128                    # 128 x 128 axial slices of 2.5 mm: a 32 cm field of view
SIDED = [{"value": 1, "name": "Femur left", "side": "left"}, {"value": 2, "name": "Femur right", "side": "right"}]


def leg_grid(slices=40, thickness=5.0):
    """Identity-direction grid centred on x = y = 0 (LPS); k grows toward superior."""
    half = (N - 1) * PIXEL / 2
    return Geometry((PIXEL, PIXEL, thickness), (-half, -half, 0.0)), (slices, N, N)


def soft_tissue_ct(shape, geometry):
    """Air around an elliptic body (30 x 20 cm) of muscle (40 HU) under 1 cm of fat (-100 HU)."""
    x, y = axial_xy(geometry)
    r = (x / 150) ** 2 + (y / 100) ** 2
    hu = np.where(r < 1, np.where(r < 0.87, 40, -100), -1000).astype(np.int16)
    return np.broadcast_to(hu, shape).copy()


def axial_xy(geometry):
    x = geometry.origin[0] + PIXEL * np.arange(N)
    y = geometry.origin[1] + PIXEL * np.arange(N)
    return x[None, :], y[:, None]


def add_bone(hu, label, geometry, x0, k0, k1, radius=14.0, value=1, cortex=5.0, marrow_hu=50, cortex_hu=1400,
             y0=0.0):
    """A femur-like cylinder at LPS x = x0 over slices k0..k1-1: a cortex ring around marrow, all labelled."""
    x, y = axial_xy(geometry)
    d = np.hypot(x - x0, y - y0)
    hu[k0:k1][:, d < radius] = marrow_hu
    hu[k0:k1][:, (d < radius) & (d >= radius - cortex)] = cortex_hu
    label[k0:k1][:, d < radius] = value


def two_femurs(slices=40, radii=(14.0, 14.0), values=(1, 1), **bone):
    g, shape = leg_grid(slices)
    hu, label = soft_tissue_ct(shape, g), np.zeros(shape, np.uint8)
    for x0, radius, value in zip((90.0, -90.0), radii, values):     # +x is the patient's left
        add_bone(hu, label, g, x0, 0, slices, radius, value, **bone)
    return hu, label, g


def flip_x(arrays, g):
    """The same voxels on a grid whose i axis runs toward patient right (like the real CT)."""
    direction = np.diag([-1.0, 1.0, 1.0])
    origin = (g.origin[0] + (N - 1) * PIXEL, g.origin[1], g.origin[2])
    return [a[:, :, ::-1].copy() for a in arrays], Geometry(g.spacing, origin, direction)


def warnings_with(report, *words):
    return [w for w in report.warnings if all(word in w for word in words)]


# --- crafted labelmaps ------------------------------------------------------------------------------------
def test_two_realistic_femurs_give_no_warning_and_the_right_figures():
    hu, label, g = two_femurs(radii=(15.0, 13.0))
    report = check_plausibility(label, hu, g)
    assert report.warnings == [] and report.plausible
    assert report.split == "midline" and midline_x(hu, g) == pytest.approx(0.0, abs=PIXEL)
    for side, radius in zip(SIDES, (15.0, 13.0)):
        r = report.sides[side]
        assert r.volume_ml == pytest.approx(np.pi * radius ** 2 * 200 / 1000, rel=0.08)
        assert len(r.components_ml) == 1 and r.small_pieces == 0 and r.length_mm == pytest.approx(200.0)
        assert r.mean_area_cm2 == pytest.approx(np.pi * radius ** 2 / 100, rel=0.08)
        assert r.cortex_fractions[0] > 0.4 and r.median_hu == 1400
    assert report.sides["left"].volume_ml > report.sides["right"].volume_ml   # +x femur is the left one
    lines = report.summary_lines()
    assert lines[0].startswith("left femur: ") and " ml, 1 component(s)" in lines[0] and "200 mm long" in lines[0]


def test_fatty_marrow_osteoporotic_femur_is_still_plausible():
    """Yellow marrow (-80 HU) inside a thin 2.5 mm cortex: median and cortex fraction stay above the limits."""
    hu, label, g = two_femurs(cortex=2.5, marrow_hu=-80, cortex_hu=700)
    assert check_plausibility(label, hu, g).warnings == []


def test_side_labels_and_a_flipped_grid_give_the_same_sides():
    hu, label, g = two_femurs(radii=(15.0, 13.0), values=(1, 2))
    (fhu, flabel), fg = flip_x([hu, label], g)
    by_midline = check_plausibility(flabel > 0, fhu, fg)
    by_labels = check_plausibility(flabel, fhu, fg, SIDED)
    assert by_labels.split == "labels" and by_midline.split == "midline"
    assert by_midline.midline_x == pytest.approx(0, abs=PIXEL)
    for side in SIDES:
        assert by_labels.sides[side].volume_ml == pytest.approx(by_midline.sides[side].volume_ml)
    assert by_labels.sides["left"].volume_ml > by_labels.sides["right"].volume_ml
    assert by_labels.warnings == by_midline.warnings == []


def test_empty_labelmap_is_no_warning():
    hu, label, g = two_femurs()
    report = check_plausibility(np.zeros_like(label), hu, g)
    assert report.warnings == [] and report.summary_lines() == ["left femur: none", "right femur: none"]


def one_hip_field(femur_x=10.0, slices=40):
    """A field inside the body (soft tissue to every edge, as in a targeted hip scan): the body's centroid is
    the field's centre, x = 0, and one femur at ``femur_x`` lies across it."""
    g, shape = leg_grid(slices)
    hu, label = np.full(shape, 40, np.int16), np.zeros(shape, np.uint8)
    add_bone(hu, label, g, femur_x, 0, slices)
    return hu, label, g


def test_a_field_holding_one_femur_is_reported_beside_it_not_through_it():
    hu, label, g = one_hip_field()
    assert midline_x(hu, g) == pytest.approx(0.0, abs=PIXEL)       # the body's centre cuts the femur
    report = check_plausibility(label, hu, g)
    assert report.split == "one-sided" and report.warnings == []
    left, right = report.sides["left"], report.sides["right"]      # its mean x is +10 mm: the patient's left
    assert len(left.components_ml) == 1 and right.volume_ml == 0
    assert left.volume_ml == pytest.approx(np.count_nonzero(label) * PIXEL * PIXEL * 5.0 / 1000)
    lines = report.summary_lines()
    assert lines[1] == "right femur: none" and lines[2].startswith("one-sided field (one hip or leg)")
    (fhu, flabel), fg = flip_x([hu, label], g)
    flipped = check_plausibility(flabel, fhu, fg)
    assert flipped.split == "one-sided" and flipped.sides["left"].volume_ml == pytest.approx(left.volume_ml)


def test_a_one_sided_field_names_sides_by_the_scanner_centre_and_keeps_a_second_femur_apart():
    hu, label, g = one_hip_field()
    add_bone(hu, label, g, -130.0, 0, 10, radius=10.0)              # the other knee at the field's edge
    moved = Geometry(g.spacing, (g.origin[0] - 200.0, *g.origin[1:]), g.direction)   # origin moved: x < 0 all over
    near, far = check_plausibility(label, hu, g), check_plausibility(label, hu, moved)
    assert near.split == far.split == "one-sided"
    assert len(near.sides["left"].components_ml) == len(near.sides["right"].components_ml) == 1
    assert far.sides["right"].volume_ml == near.sides["left"].volume_ml      # the name follows x = 0 only
    assert far.sides["left"].volume_ml == near.sides["right"].volume_ml > 0


def test_the_midline_split_stays_when_the_largest_piece_is_wider_than_one_femur():
    hu, label, g = two_femurs()
    label[18:22, 60:68, :] = 1                                      # a bar joins both femurs: one 2-femur piece
    report = check_plausibility(label, hu, g)
    assert report.split == "midline" and report.sides["left"].volume_ml == pytest.approx(
        report.sides["right"].volume_ml, rel=0.05)


def test_too_large_cross_section_warns():
    hu, label, g = two_femurs()
    add_bone(hu, label, g, 60.0, 10, 30, radius=55.0)     # 95 cm2: a thigh, not a femur
    report = check_plausibility(label, hu, g)
    assert warnings_with(report, "left femur", "mean cross-section", "2-45 cm2")
    assert warnings_with(report, "left femur", "cm2 in one slice")
    assert not warnings_with(report, "right femur")


def test_too_large_volume_and_length_warn():
    g, shape = leg_grid(slices=70, thickness=10.0)          # 70 cm of leg
    hu, label = soft_tissue_ct(shape, g), np.zeros(shape, np.uint8)
    add_bone(hu, label, g, 80.0, 0, 65, radius=25.0)        # 20 cm2 over 65 cm: 1280 ml
    add_bone(hu, label, g, -80.0, 20, 60, radius=14.0)
    report = check_plausibility(label, hu, g)
    assert warnings_with(report, "left femur", "ml; a whole adult femur is 300-800 ml")
    assert warnings_with(report, "left femur", "labels span 650 mm")
    assert len(report.warnings) == 2


def test_four_big_components_warn_in_one_line():
    hu, label, g = two_femurs(slices=40)
    label[18:22] = 0                                         # each femur cut in two pieces
    report = check_plausibility(label, hu, g)
    assert warnings_with(report, "4 components >= 1 ml: left 2 (", "right 2 (", "at most two femurs")
    assert len(report.warnings) == 1


def test_shin_bone_far_below_on_one_side_warns():
    g, shape = leg_grid(slices=80, thickness=10.0)
    hu, label = soft_tissue_ct(shape, g), np.zeros(shape, np.uint8)
    add_bone(hu, label, g, 90.0, 40, 80)                     # left femur, top 40 cm
    add_bone(hu, label, g, -90.0, 40, 80)
    add_bone(hu, label, g, 95.0, 0, 30, radius=16.0)         # left tibia, 10 cm further down
    report = check_plausibility(label, hu, g)
    assert warnings_with(report, "3 components >= 1 ml: left 2 (240.0, 232.5 ml), right 1", "at most two femurs")
    assert warnings_with(report, "left femur", "labels span 800 mm")
    assert len(report.warnings) == 2
    label[:, :, :N // 2] = 0                                 # the right leg out of the field of view
    report = check_plausibility(label, hu, g)
    assert warnings_with(report, "left femur: 2 components >= 1 ml (240.0, 232.5 ml)", "a femur is one piece")
    assert len(report.warnings) == 2


def shin_scan(k0, k1, x0=90.0, slices=80):
    """40 cm of leg in 5 mm slices (k grows toward superior): the right femur leaves the scan at its top, a
    labelled bone on the left, at LPS x = ``x0``, covers slices k0..k1-1."""
    g, shape = leg_grid(slices, thickness=5.0)
    hu, label = soft_tissue_ct(shape, g), np.zeros(shape, np.uint8)
    add_bone(hu, label, g, -90.0, slices - 30, slices)
    add_bone(hu, label, g, x0, k0, k1, radius=12.0)
    return hu, label, g


def test_a_short_bone_that_ends_inside_the_scan_at_both_ends_warns():
    """A shin bone or arm bone: a femur in a scan either leaves it or lies in it whole (over 250 mm long)."""
    hu, label, g = shin_scan(20, 50)
    report = check_plausibility(label, hu, g)
    left, right = report.sides["left"], report.sides["right"]
    assert left.end_gaps_mm == (100.0, 150.0) and right.end_gaps_mm == (250.0, 0.0)
    assert left.side_gap_mm == pytest.approx(158.75 - 90 - 12, abs=PIXEL)          # to the field's left edge
    assert warnings_with(report, "left femur: ", "over 150 mm lie wholly inside the scan (100 mm above its lower end, "
                         "150 mm below its upper end)", "probably another bone")
    assert len(report.warnings) == 1
    flipped = Geometry(g.spacing, (g.origin[0], g.origin[1], g.origin[2] + 79 * 5.0), np.diag([1.0, 1.0, -1.0]))
    upside_down = check_plausibility(label[::-1].copy(), hu[::-1].copy(), flipped)   # k toward inferior
    assert upside_down.sides["left"].end_gaps_mm == (100.0, 150.0) and upside_down.warnings == report.warnings
    # the same voxels stored with the superior axis last (numpy (y, x, z), as a sagittal series can come)
    permuted = Geometry((5.0, PIXEL, PIXEL), g.origin, np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]))
    sideways = check_plausibility(label.transpose(1, 2, 0).copy(), hu.transpose(1, 2, 0).copy(), permuted)
    assert sideways.sides["left"].end_gaps_mm == (100.0, 150.0) and sideways.warnings == report.warnings
    assert sideways.sides["left"].side_gap_mm == left.side_gap_mm


@pytest.mark.parametrize("k0, k1, x0", [(0, 30, 90.0), (4, 30, 90.0), (20, 50, 145.0), (10, 70, 90.0)])
def test_a_bone_that_leaves_the_scan_or_is_a_whole_femur_long_is_no_warning(k0, k1, x0):
    """Cut by the scan's range (or 20 mm short of it: the network may miss edge slices) or by the side of the field
    (a small field of view), or 300 mm long."""
    hu, label, g = shin_scan(k0, k1, x0)
    report = check_plausibility(label, hu, g)
    assert report.warnings == [] and report.sides["left"].length_mm == (k1 - k0) * 5.0


def test_labels_on_soft_tissue_and_fat_warn():
    hu, label, g = two_femurs()
    x, y = axial_xy(g)
    label[:] = 0
    label[:, (np.hypot(x - 60, y) < 15)] = 1                 # left: a cylinder of muscle (40 HU)
    label[:, (np.abs(x + 130) < 6) & (np.abs(y) < 30)] = 1   # right: a slab in the fat (-100 HU)
    report = check_plausibility(label, hu, g)
    assert warnings_with(report, "left femur", "1 of 1 component(s)", "no cortical bone")
    assert warnings_with(report, "right femur", "no cortical bone")
    assert len(report.warnings) == 2


def test_bone_wrapped_in_much_soft_tissue_warns():
    """A label four times the bone's area around it: the bone has cortex, but most labelled voxels are muscle."""
    hu, label, g = two_femurs()
    x, y = axial_xy(g)
    label[:, np.hypot(x - 90, y) < 30] = 1
    report = check_plausibility(label, hu, g)
    assert warnings_with(report, "left femur", "% of the labelled voxels are above 150 HU", "median 40 HU")
    assert len(report.warnings) == 1


def test_metal_in_the_labels_warns_as_an_implant_and_dense_cortex_or_metal_beside_them_does_not():
    hu, label, g = two_femurs(cortex_hu=2000)                # the densest cortex
    assert check_plausibility(label, hu, g).warnings == []
    x, y = axial_xy(g)
    stem = np.hypot(x - 90, y) < 6                            # a 12 mm metal rod in the left canal, 100 mm long
    hu[10:30][:, stem] = 3071
    report = check_plausibility(label, hu, g)
    assert len(report.warnings) == 1 and warnings_with(report, "left femur: ", "are metal (above 2500 HU), an implant")
    assert report.sides["left"].implant_ml == pytest.approx(np.pi * 6 ** 2 * 100 / 1000, rel=0.2)
    label[:, stem] = 0                                        # the metal beside the labels, not in them
    assert check_plausibility(label, hu, g).warnings == []


def test_scattered_specks_warn_but_a_few_beside_a_femur_do_not():
    hu, label, g = two_femurs()
    specks = np.zeros_like(label)
    for k, j, i in [(2, 30, 70), (8, 90, 66), (15, 40, 75), (22, 80, 70), (30, 50, 72)]:
        specks[k:k + 2, j:j + 2, i:i + 2] = 1                # 0.25 ml each, in the muscle left of the midline
    alone = check_plausibility(specks, hu, g)
    assert warnings_with(alone, "left femur: 5 pieces under 1 ml", "1.25 ml in all", "scattered false positives")
    assert warnings_with(alone, "left femur: only 0 % of the labelled voxels are above 150 HU")
    assert len(alone.warnings) == 2
    beside = check_plausibility(np.maximum(label, specks), hu, g)
    assert beside.warnings == [] and beside.sides["left"].small_pieces == 5


def test_shape_mismatch_is_an_error():
    hu, label, g = two_femurs()
    with pytest.raises(ValueError, match="shape"):
        check_plausibility(label[1:], hu, g)


# --- real CT ----------------------------------------------------------------------------------------------
def read(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), Geometry.from_sitk(image)


def test_real_reference_femurs_warn_only_of_the_left_implant_and_bone_everywhere_warns(real_ct):
    folder = real_ct / "pelvis_3mm"
    hu, g = read(folder / "ct.nii.gz")
    left, right = (read(folder / f"femur_{s}.nii.gz")[0] > 0 for s in SIDES)
    combined = check_plausibility((left | right).astype(np.uint8), hu, g)
    implant = [w for w in combined.warnings if w.startswith("left femur: ") and "are metal (above 2500 HU)" in w]
    assert combined.warnings == implant and len(implant) == 1, combined.warnings     # the left hip's metal
    assert combined.sides["left"].volume_ml == pytest.approx(left.sum() * 27 / 1000)    # the midline split
    assert combined.sides["right"].volume_ml == pytest.approx(right.sum() * 27 / 1000)  # matches the masks
    assert all(len(combined.sides[s].components_ml) == 1 for s in SIDES)
    sided = check_plausibility(left * np.uint8(1) + right * np.uint8(2), hu, g, SIDED)
    assert sided.warnings == implant and sided.sides["left"].volume_ml == combined.sides["left"].volume_ml
    every_bone = check_plausibility((hu > 300).astype(np.uint8), hu, g)     # pelvis, spine, femurs
    assert warnings_with(every_bone, "components >= 1 ml", "at most two femurs")


# --- where the warnings go --------------------------------------------------------------------------------
def write_ct(path, hu, g):
    image = sitk.GetImageFromArray(hu)
    g.apply_to_sitk(image)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def cts(tmp_path_factory):
    """A plausible and an implausible (four pieces) CT whose bone the 300-HU threshold model labels whole."""
    folder = tmp_path_factory.mktemp("plausibility")
    hu, _, g = two_femurs(slices=12, cortex_hu=1400, marrow_hu=500)
    cut = hu.copy()
    cut[5:7][cut[5:7] > 300] = 40
    return {"good": write_ct(folder / "good.nrrd", hu, g), "bad": write_ct(folder / "bad.nrrd", cut, g)}


@pytest.fixture(scope="module")
def model_128(tmp_path_factory):
    return save_model(threshold_unet(input_size=N), tmp_path_factory.mktemp("model") / "threshold128.pt")


def test_cli_prints_sides_and_one_warning_line_on_stderr_exit_zero(cts, model_128, tmp_path, capsys):
    code, out, err = run_cli(capsys, "segment", cts["bad"], tmp_path / "bad.nii.gz", "--model", model_128, "--quiet")
    assert code == 0 and (tmp_path / "bad.nii.gz").is_file()
    assert "Femur:" in out and "left femur: " in out and "right femur: " in out
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "4 components >= 1 ml" in lines[0], err
    code, out, err = run_cli(capsys, "segment", cts["good"], tmp_path / "good.nii.gz", "--model", model_128, "--quiet")
    assert code == 0 and "warning" not in err and "left femur: " in out and "1 component(s)" in out


def test_mrml_result_and_node_carry_the_warnings(cts, model_128):
    import slicer  # slicer-core (test extra): real MRML without the application
    from FemurUNetLib import mrml
    scene = slicer.vtkMRMLScene()
    nodes = {}
    for name, path in cts.items():
        hu, g = read(path)
        nodes[name] = mrml.array_to_volume_node(scene, hu, g, name)
    net = threshold_unet(input_size=N)
    seg, result, _ = mrml.segment_and_import(nodes["bad"], net, device="cpu", closed_surface=False)
    assert any("4 components" in w for w in result.plausibility.warnings)
    assert mrml.plausibility_warnings(seg) == result.plausibility.warnings
    again = mrml.segment_volume_node(nodes["good"], net, device="cpu", closed_surface=False)
    assert mrml.plausibility_warnings(again) == []
    source = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(nodes["bad"])
    _, effect_result = mrml.segment_oriented_image(source, net, device="cpu")   # the Segment Editor's path
    assert effect_result.plausibility.warnings == result.plausibility.warnings


def test_batch_script_writes_the_warnings_column(cts, model_128, tmp_path, capsys):
    import csv
    script_path = Path(__file__).resolve().parents[1] / "FemurUNet" / "Scripts" / "segment_folder.py"
    spec = importlib.util.spec_from_file_location("segment_folder_plausibility", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--input", str(cts["bad"]), str(cts["good"]), "--output", str(tmp_path), "--model",
                        str(model_128), "--device", "cpu", "--no-surface"]) == 0
    with open(tmp_path / script.RESULTS_NAME, newline="") as f:
        rows = {row["case"]: row for row in csv.DictReader(f)}
    assert "4 components >= 1 ml" in rows["bad"]["warnings"] and rows["good"]["warnings"] == ""
    assert "bad: warning: 4 components" in capsys.readouterr().err
