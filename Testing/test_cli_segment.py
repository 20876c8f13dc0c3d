from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from FemurUNetTrainLib.cli import main
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.geometry import Geometry
from FemurUNetLib.volume_io import read_volume, terminology_string
from conftest import expected_threshold_labels


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_same_grid(path, reference_image):
    out = sitk.ReadImage(str(path))
    assert out.GetSize() == reference_image.GetSize()
    assert np.allclose(out.GetSpacing(), reference_image.GetSpacing())
    assert np.allclose(out.GetOrigin(), reference_image.GetOrigin())
    assert np.allclose(out.GetDirection(), reference_image.GetDirection())
    return sitk.GetArrayFromImage(out)


def test_segment_real_nifti_lands_on_its_grid(real_ct, tmp_path, capsys, threshold_model_file):
    ct_path = real_ct / "pelvis_3mm" / "ct.nii.gz"
    out = tmp_path / "femur.nii.gz"
    code, stdout, err = run_cli(capsys, "segment", ct_path, out, "--model", threshold_model_file, "--quiet",
                                "--keep-all-pieces")     # every bone above the threshold, not only the femurs
    assert code == 0, err
    ct = sitk.ReadImage(str(ct_path))
    labels = assert_same_grid(out, ct)
    hu = sitk.GetArrayFromImage(ct)
    exp = expected_threshold_labels(hu).astype(bool)
    got = labels.astype(bool)
    # 3 mm voxels resized to 256 and back lose some one-voxel bone; the overlap is best with no shift at all
    def dice(shift):
        e = np.roll(exp, shift, axis=(1, 2))
        return 2 * (got & e).sum() / (got.sum() + e.sum())
    assert dice((0, 0)) > 0.88
    assert all(dice(shift) < dice((0, 0)) - 0.2 for shift in [(1, 0), (-1, 0), (0, 1), (0, -1)])
    assert "Femur:" in stdout and "ml" in stdout and "slices in" in stdout


def test_segment_dicom_folder(real_ct, tmp_path, capsys, threshold_model_file):
    folder = real_ct / "abdomen_dicom"
    vol, geometry = read_volume(folder)
    assert vol.shape == (20, 512, 512)
    assert geometry.spacing[0] == pytest.approx(0.977, abs=1e-3) and geometry.spacing[2] == pytest.approx(2.0, abs=0.01)
    out = tmp_path / "dicom_femur.nrrd"
    code, _, err = run_cli(capsys, "segment", folder, out, "--model", threshold_model_file, "--quiet",
                           "--batch-size", "5")
    assert code == 0, err
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    labels = assert_same_grid(out, reader.Execute())
    assert labels.any()                     # spine and ribs are above 300 HU


def test_seg_nrrd_reads_back_in_slicer_with_name_colour_terminology_geometry(tmp_path, capsys, threshold_model_file):
    import slicer  # slicer-core (test extra): the real MRML scene without the app
    hu = np.full((6, 64, 80), 40, np.int16)
    hu[2:5, 20:40, 30:60] = 1200
    g = Geometry((0.7, 0.9, 2.0), (12.0, -30.0, 55.0), np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1.0]]))
    img = sitk.GetImageFromArray(hu)
    g.apply_to_sitk(img)
    sitk.WriteImage(img, str(tmp_path / "ct.nrrd"))
    out = tmp_path / "femur.seg.nrrd"
    code, _, err = run_cli(capsys, "segment", tmp_path / "ct.nrrd", out, "--model", threshold_model_file, "--quiet")
    assert code == 0, err

    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(out))
    assert storage.ReadData(seg)
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment = segmentation.GetNthSegment(0)
    assert segment.GetName() == "Femur"
    assert np.allclose(segment.GetColor(), (0.945, 0.839, 0.569), atol=1e-3)
    assert segment.GetTerminology() == terminology_string() and "SCT^71341001^Femur" in segment.GetTerminology()

    reference = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    reference.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(g.ijk_to_ras()))
    slicer.util.updateVolumeFromArray(reference, hu)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    import vtk
    id_list = vtk.vtkStringArray()
    segmentation.GetSegmentIDs(id_list)
    assert logic.ExportSegmentsToLabelmapNode(seg, id_list, labelmap, reference)
    back = slicer.util.arrayFromVolume(labelmap)
    assert np.array_equal(back > 0, hu > 300)
    assert np.allclose(slicer.util.arrayFromVTKMatrix(_ijk_to_ras(labelmap)), g.ijk_to_ras())


def _ijk_to_ras(node):
    import vtk
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return m


@pytest.mark.parametrize("case", ["missing", "garbage", "bad_suffix", "bad_model"])
def test_bad_input_gives_one_line_exit_2_and_no_output(tmp_path, capsys, case, threshold_model_file):
    good = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 16, 16), np.int16)), str(good))
    args = {"missing": [tmp_path / "nope.nii.gz", tmp_path / "out.nii.gz"],
            "garbage": [tmp_path / "junk.nii.gz", tmp_path / "out.nii.gz"],
            "bad_suffix": [good, tmp_path / "out.png"],
            "bad_model": [good, tmp_path / "out.nii.gz", "--model", tmp_path / "nomodel.pt"]}[case]
    if case == "garbage":
        (tmp_path / "junk.nii.gz").write_text("this is not an image")
    expect = {"missing": "nope.nii.gz: no such file", "garbage": "junk.nii.gz: cannot read as an image",
              "bad_suffix": "out.png: unsupported output type", "bad_model": "nomodel.pt: model file not found"}[case]
    before = set(tmp_path.iterdir())
    code, out, err = run_cli(capsys, "segment", *args, "--quiet",
                             *([] if case == "bad_model" else ["--model", threshold_model_file]))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0] and lines[0].startswith("femurunet segment: error:")
    assert set(tmp_path.iterdir()) == before


@pytest.mark.slow
def test_readme_main_command_demo_scores_the_phantom(tmp_path, capsys):
    """README's first command: `femurunet demo` — phantom CT, shipped demo model, Dice vs truth."""
    code, out, err = run_cli(capsys, "demo", "--out", tmp_path / "demo", "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [
        "phantom9000_ct.nii.gz", "phantom9000_femur.nii.gz", "phantom9000_femur_pred.seg.nrrd"]
    dice_line = [line for line in out.splitlines() if line.startswith("Dice vs truth:")]
    assert len(dice_line) == 1 and float(dice_line[0].split()[3]) > 0.92      # 0.9353: the case has a hip replacement
    assert [w for w in err.splitlines() if w.startswith("warning: ")] == [       # ... and says so, as `segment` does
        w for w in err.splitlines() if w.startswith("warning: left femur: ") and "are metal (above 2500 HU)" in w]
    assert "are metal (above 2500 HU)" in err
    pred = sitk.ReadImage(str(tmp_path / "demo" / "phantom9000_femur_pred.seg.nrrd"))
    assert pred.GetMetaData("Segment0_Name") == "Femur"
    assert_same_grid(tmp_path / "demo" / "phantom9000_femur_pred.seg.nrrd",
                     sitk.ReadImage(str(tmp_path / "demo" / "phantom9000_ct.nii.gz")))


def test_segment_mirror_flag_averages_with_the_mirrored_slices(tmp_path, capsys, tiny_model_file):
    from FemurUNetLib import segment_volume
    from FemurUNetLib.modelfile import load_model
    hu = np.random.default_rng(3).integers(-1000, 1500, (3, 48, 48)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(tmp_path / "ct.nii.gz"))
    probs = {}
    for flags in ((), ("--mirror",)):
        out = tmp_path / f"p{len(flags)}.nii.gz"
        code, _, err = run_cli(capsys, "segment", tmp_path / "ct.nii.gz", tmp_path / "l.nii.gz", "--model",
                               tiny_model_file, "--probabilities", out, "--no-autocast", "--quiet", *flags)
        assert code == 0, err
        probs[flags] = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    expected = segment_volume(hu, None, load_model(tiny_model_file), autocast=False, mirror=True,
                              return_probabilities=True).probabilities
    assert np.allclose(probs[("--mirror",)], expected, atol=1e-6)
    assert np.abs(probs[()] - expected).max() > 1e-4


def test_segment_min_field_pads_small_fields_as_the_engine_does(tmp_path, capsys, tiny_model_file):
    from FemurUNetLib import segment_volume
    from FemurUNetLib.modelfile import load_model
    hu = np.random.default_rng(4).integers(-1000, 1500, (3, 40, 48)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(tmp_path / "ct.nii.gz"))          # 1 mm pixels: 48 mm
    out = tmp_path / "p.nii.gz"
    code, stdout, err = run_cli(capsys, "segment", tmp_path / "ct.nii.gz", tmp_path / "l.nii.gz", "--model",
                                tiny_model_file, "--probabilities", out, "--no-autocast", "--quiet", "--min-field", "96")
    assert code == 0, err
    assert "precision off, small field padded to 96 mm) ->" in stdout
    net = load_model(tiny_model_file)
    padded = segment_volume(hu, None, net, autocast=False, min_field_mm=96, return_probabilities=True)
    plain = segment_volume(hu, None, net, autocast=False, min_field_mm=0, return_probabilities=True)
    assert padded.stats["min_side"] == 96 and plain.stats["min_side"] == 0
    assert np.allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), padded.probabilities, atol=1e-6)
    assert np.abs(padded.probabilities - plain.probabilities).max() > 1e-4


def test_version_names_the_installed_package(capsys):
    from importlib.metadata import version
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"femurunet {version('femurunet')}"


@pytest.mark.parametrize("flag, value, problem", [("--threshold", "2", "not between 0 and 1"),
                                                  ("--threshold", "0", "not between 0 and 1"),
                                                  ("--threshold", "nan", "not a finite number"),
                                                  ("--batch-size", "0", "at least 1"),
                                                  ("--batch-size", "2.5", "not a whole number"),
                                                  ("--min-field", "-5", "not a field of view of 0..2000 mm"),
                                                  ("--min-field", "inf", "not a finite number"),
                                                  ("--second-opinion-fraction", "1.5", "not a share between 0 and 1")])
def test_out_of_range_options_are_one_line_errors_before_any_work(tmp_path, capsys, flag, value, problem):
    out = tmp_path / "out.nii.gz"
    with pytest.raises(SystemExit) as done:
        main(["segment", str(tmp_path / "missing.nii.gz"), str(out), flag, value])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and problem in err and flag in err
    assert not any(tmp_path.iterdir())


def test_an_interrupt_starts_its_own_line_after_a_progress_bar(monkeypatch, capsys):
    from FemurUNetTrainLib.cli import segment as segment_command

    def interrupted(*args, **kwargs):
        kwargs["progress"](3, 10)             # the bar has drawn a line without a newline
        raise KeyboardInterrupt

    monkeypatch.setattr(segment_command, "segment_volume", interrupted)
    monkeypatch.setattr(segment_command, "read_volume", lambda path, series_uid=None: (np.zeros((10, 8, 8), np.int16), Geometry()))
    assert main(["segment", "ct.nii.gz", "out.nii.gz"]) == 130
    err = capsys.readouterr().err
    assert "3/10 slices" in err and err.endswith("\nfemurunet segment: interrupted\n")



def test_segment_names_the_second_opinion_it_asked_and_refuses_a_missing_one(tmp_path, capsys, tiny_model_file):
    hu = np.random.default_rng(5).integers(-1000, 1500, (2, 40, 40)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(tmp_path / "ct.nii.gz"))
    ask = lambda *flags: run_cli(capsys, "segment", tmp_path / "ct.nii.gz", tmp_path / "l.nii.gz", "--quiet",
                                 "--device", "cpu", "--model", tiny_model_file, *flags)
    code, stdout, err = ask("--second-opinion", tiny_model_file)
    assert code == 0 and f", second opinion {Path(tiny_model_file).name} at 0.9) ->" in stdout, err
    code, stdout, err = ask("--second-opinion", tiny_model_file, "--second-opinion-fraction", "0.25")
    assert code == 0 and f", second opinion {Path(tiny_model_file).name} at 0.25) ->" in stdout, err
    code, stdout, err = ask()                                      # by default none
    assert code == 0 and "second opinion" not in stdout, err
    (tmp_path / "l.nii.gz").unlink()
    code, stdout, err = ask("--second-opinion", tmp_path / "absent.pt")
    assert code == 2 and err.strip().endswith("absent.pt: model file not found") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "l.nii.gz").exists()
    code, stdout, err = ask("--second-opinion-fraction", "0.5")                # no second model to apply it to
    assert code == 2 and err.strip().endswith("a second-opinion fraction needs a second model (--second-opinion / "
                                              "confirm)") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "l.nii.gz").exists()


def test_segment_names_the_gate_it_asked_and_refuses_a_missing_one(tmp_path, capsys, tiny_model_file):
    import torch
    from FemurUNetLib.gate import LevelGate, save_gate
    hu = np.random.default_rng(5).integers(-1000, 1500, (2, 40, 40)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(tmp_path / "ct.nii.gz"))
    ask = lambda *flags: run_cli(capsys, "segment", tmp_path / "ct.nii.gz", tmp_path / "l.nii.gz", "--quiet",
                                 "--device", "cpu", "--model", tiny_model_file, *flags)
    torch.manual_seed(0)
    save_gate(LevelGate(), tmp_path / "gate.pt", {})
    code, stdout, err = ask("--gate", tmp_path / "gate.pt", "--gate-threshold", "0.25")
    assert code == 0 and ", gate gate.pt at 0.25) ->" in stdout, err
    (tmp_path / "l.nii.gz").unlink()
    for flags, message in ((("--gate", tmp_path / "absent.pt"), "absent.pt: gate file not found"),
                           (("--gate-threshold", "0.5"), "a gate threshold needs a gate (--gate; the demo model's "
                                                         "by default)")):
        code, stdout, err = ask(*flags)
        assert code == 2 and err.strip().endswith(message) and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "l.nii.gz").exists()
    with pytest.raises(SystemExit):
        ask("--gate", tmp_path / "gate.pt", "--no-gate")
    assert "argument --no-gate: not allowed with argument --gate" in capsys.readouterr().err


def test_the_demo_model_brings_its_gate_unless_told_not_to(tmp_path, capsys):
    hu = np.random.default_rng(5).integers(-1000, 1500, (2, 40, 40)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(tmp_path / "ct.nii.gz"))
    for flags, named in (((), ", gate femurunet_level_gate.pt at 0.3) ->"),
                         (("--gate-threshold", "0.4"), " at 0.4) ->"), (("--no-gate",), ") ->")):
        code, stdout, err = run_cli(capsys, "segment", tmp_path / "ct.nii.gz", tmp_path / "l.nii.gz", "--quiet",
                                    "--device", "cpu", *flags)
        assert code == 0 and named in stdout and ("gate" in stdout) == (flags != ("--no-gate",)), err
        (tmp_path / "l.nii.gz").unlink()
    code, _, err = run_cli(capsys, "segment", tmp_path / "ct.nii.gz", tmp_path / "l.nii.gz", "--no-gate",
                           "--gate-threshold", "0.3")
    assert code == 2 and err.strip().endswith("a gate threshold needs a gate (--gate; the demo model's by default)")


@pytest.mark.parametrize("argv", [[], ["--model", "m.pt", "--device", "cpu", "--mirror", "--fast"],
                                  ["--batch-size", "3", "--threshold", "0.35", "--precision", "bf16"],
                                  ["--no-autocast", "--keep-all-pieces", "--min-field", "0"],
                                  ["--second-opinion", "judge.pt", "--second-opinion-fraction", "0.1234567891",
                                   "--min-field", "287.5", "--precision", "int8"],
                                  ["--gate", "gate.pt", "--gate-threshold", "0.05"], ["--no-gate"],
                                  ["--smooth-z", "0"], ["--smooth-z", "2.25", "--fast"]])
def test_segment_flags_parse_back_to_the_same_options(argv):
    from FemurUNetTrainLib.cli import build_parser
    from FemurUNetLib.segment_options import segment_flags, segment_keywords

    def parse(flags):
        return build_parser().parse_args(["segment", "ct.nii.gz", "out.nii.gz", *flags])
    args = parse(argv)
    again = parse(segment_flags(args))
    assert segment_keywords(again) == segment_keywords(args) and again.model == args.model
    assert segment_flags(again) == segment_flags(args)


def test_a_segmentation_file_names_what_made_it_and_a_nifti_cannot(tmp_path, capsys, tiny_model_file):
    import hashlib
    from FemurUNetLib import __version__
    from FemurUNetLib.volume_io import read_provenance
    hu = np.random.default_rng(5).integers(-1000, 1500, (3, 40, 48)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(tmp_path / "ct.nii.gz"))
    for output, flags in (("l.seg.nrrd", ("--mirror", "--threshold", "0.4", "--smooth-z", "2")),
                          ("l.nrrd", ("--fast",)), ("l.nii.gz", ())):
        code, _, err = run_cli(capsys, "segment", tmp_path / "ct.nii.gz", tmp_path / output, "--model",
                               tiny_model_file, "--no-autocast", "--quiet", "--min-field", "96", *flags)
        assert code == 0, err
    digest = hashlib.sha256(Path(tiny_model_file).read_bytes()).hexdigest()[:16]
    assert read_provenance(tmp_path / "l.seg.nrrd") == {
        "femurunet": __version__, "model": Path(tiny_model_file).name, "model_sha256": digest, "device": "cpu",
        "threshold": 0.4, "autocast": "off", "mirror": True, "fast": False, "padded_field_mm": 96.0,
        "keep_all_pieces": False, "second_opinion": None, "second_opinion_fraction": None, "gate": None,
        "gate_threshold": None, "smooth_z_mm": 2.0}
    fast = read_provenance(tmp_path / "l.nrrd")
    assert (fast["fast"], fast["mirror"], fast["threshold"], fast["smooth_z_mm"]) == (True, False, 0.5, 0.0)
    assert read_provenance(tmp_path / "l.nii.gz") is None and read_provenance(tmp_path / "ct.nii.gz") is None
    with pytest.raises(FemurUNetError, match=r"missing.nrrd: not a readable image file$"):
        read_provenance(tmp_path / "missing.nrrd")
