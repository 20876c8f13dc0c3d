"""FemurUNet/Scripts/segment_folder.py: the headless batch script (run here under slicer-core)."""
import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from FemurUNetTrainLib.cli import main as femurunet
from FemurUNetLib.geometry import Geometry
from FemurUNetLib.modelfile import save_model
from conftest import expected_threshold_labels, size_limit, threshold_unet

SCRIPT = Path(__file__).resolve().parents[1] / "FemurUNet" / "Scripts" / "segment_folder.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("segment_folder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return save_model(threshold_unet(input_size=64), tmp_path_factory.mktemp("model") / "threshold.pt")


def write_ct(path, seed, direction=None):
    rng = np.random.default_rng(seed)
    hu = rng.integers(-200, 200, size=(6, 64, 64)).astype(np.int16)
    hu[1:5, 10 + seed:30 + seed, 20:44] = 1200
    g = Geometry((0.8, 0.7, 2.5), (10.0 * seed, -20.0, 33.0), np.eye(3) if direction is None else direction)
    image = sitk.GetImageFromArray(hu)
    g.apply_to_sitk(image)
    sitk.WriteImage(image, str(path))
    return hu, g


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cts")
    flipped = np.array([[0, -1, 0], [1, 0, 0], [0, 0, -1.0]])
    truth = {"alpha": write_ct(folder / "alpha.nii.gz", 1), "beta": write_ct(folder / "beta.nrrd", 2, flipped)}
    (folder / "broken.nii.gz").write_bytes(b"not a volume at all")
    (folder / "notes.txt").write_text("ignored")
    (folder / "old.seg.nrrd").write_bytes(b"ignored: a segmentation, not a CT")
    hu, g = truth["alpha"]
    label = sitk.GetImageFromArray(expected_threshold_labels(hu) * np.uint8(2))   # as femurunet sample writes them
    g.apply_to_sitk(label)
    sitk.WriteImage(label, str(folder / "alpha_femur.nii.gz"), True)
    (folder / ".beta.seg.nrrd.x1y2.partial.seg.nrrd").write_bytes(b"left by a killed write")
    return folder, truth


def on_grid(image, hu, geometry):
    """``image`` resampled (nearest) onto the grid of ``hu``/``geometry``: Slicer's volume reader turns
    left-handed files right-handed (k reversed), so its .seg.nrrd can hold the same voxels in another order."""
    reference = sitk.GetImageFromArray(hu)
    geometry.apply_to_sitk(reference)
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0))


def read_rows(path):
    with open(path, newline="") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def test_arguments(script, capsys):
    args = script.parse_args(["--input", "a.nii.gz", "b", "--output", "out", "--model", "m.pt", "--device", "cpu",
                              "--batch-size", "4", "--threshold", "0.3", "--no-surface", "--mirror",
                              "--keep-all-pieces", "--min-field", "250", "--second-opinion", "m2.pt",
                              "--second-opinion-fraction", "0.7", "--gate", "g.pt", "--gate-threshold", "0.2",
                              "--smooth-z", "1.5"])
    assert (args.input, args.output, args.model, args.device, args.batch_size, args.threshold, args.no_surface,
            args.mirror) == (["a.nii.gz", "b"], "out", "m.pt", "cpu", 4, 0.3, True, True)
    assert script.segment_keywords(args) == {"device": "cpu", "batch_size": 4, "threshold": 0.3, "autocast": True,
                                             "mirror": True, "keep_all_pieces": True, "min_field_mm": 250.0,
                                             "confirm": "m2.pt", "confirm_fraction": 0.7, "gate": "g.pt",
                                             "gate_threshold": 0.2, "smooth_z_mm": 1.5}
    defaults = script.parse_args(["--input", "a", "--output", "o"])
    assert not defaults.mirror and not defaults.keep_all_pieces and defaults.min_field is None
    assert defaults.smooth_z is None                                     # the model's
    assert script.segment_keywords(defaults)["confirm"] is None
    assert script.segment_keywords(defaults)["confirm_fraction"] is None             # the engine's default
    assert script.main(["--input", "a.nii.gz"]) == 2                      # --output missing
    assert "--output" in capsys.readouterr().err
    assert script.main(["--help"]) == 0


def test_find_inputs(script, cases, real_ct, tmp_path):
    folder, _ = cases
    found = script.find_inputs([folder, real_ct / "abdomen_dicom"])
    assert [p.name for p in found] == ["alpha.nii.gz", "beta.nrrd", "broken.nii.gz", "abdomen_dicom"]
    inputs, skipped = script.select_inputs([folder])
    assert [p.name for p in inputs] == ["alpha.nii.gz", "beta.nrrd", "broken.nii.gz"]
    reasons = {p.name: why for p, why in skipped}
    assert sorted(reasons) == [".beta.seg.nrrd.x1y2.partial.seg.nrrd", "alpha_femur.nii.gz", "old.seg.nrrd"]
    assert reasons["alpha_femur.nii.gz"].startswith("a label volume (8-bit unsigned integer, 2 distinct values: 0, 2)")
    assert "Slicer segmentation" in reasons["old.seg.nrrd"] and "hidden" in reasons[".beta.seg.nrrd.x1y2.partial.seg.nrrd"]
    inputs, skipped = script.select_inputs([folder], include=["*.nii.gz", "*.nrrd"], exclude=["b*"])
    assert [p.name for p in inputs] == ["alpha.nii.gz"]
    reasons = {p.name: why for p, why in skipped}
    assert reasons["beta.nrrd"] == reasons["broken.nii.gz"] == "matched by --exclude b*"
    inputs, skipped = script.select_inputs([folder], include=["a*"])
    assert [p.name for p in inputs] == ["alpha.nii.gz"] and "not matched by --include a*" in dict(
        (p.name, w) for p, w in skipped)["beta.nrrd"]
    assert script.case_name(Path("x/old.seg.nrrd")) == "old"
    assert script.case_name(Path("x/alpha.nii.gz")) == "alpha" and script.case_name(Path("d/abdomen_dicom")) == "abdomen_dicom"
    with pytest.raises(FileNotFoundError):
        script.find_inputs([tmp_path / "missing"])
    assert script.main(["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert script.main(["--input", str(empty), "--output", str(tmp_path / "o")]) == 2


@pytest.mark.slow
def test_batch_writes_segmentations_csv_and_fails_naming_the_bad_case(cases, model_file, tmp_path):
    """Runs the script as a program (``python segment_folder.py``, as under ``Slicer --python-script``)."""
    folder, truth = cases
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--input", str(folder), "--output", str(out),
                           "--model", str(model_file), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "1 case(s) failed: broken" in done.stderr
    assert "2/3 cases segmented, 3 file(s) skipped (not CTs)" in done.stdout
    assert "skipped alpha_femur.nii.gz: a label volume" in done.stdout
    rows = read_rows(out / "femurunet_results.csv")
    assert set(rows) == {"alpha", "beta", "broken", "old", "alpha_femur", ".beta.seg.nrrd.x1y2.partial"}
    for case in ("old", "alpha_femur", ".beta.seg.nrrd.x1y2.partial"):
        assert rows[case]["status"] == "skipped" and rows[case]["error"] and rows[case]["output"] == ""
    assert rows["broken"]["status"] == "failed" and rows["broken"]["error"] and rows["broken"]["output"] == ""
    assert not (out / "broken.seg.nrrd").exists()
    for case, (hu, g) in truth.items():
        row = rows[case]
        expected = expected_threshold_labels(hu)
        assert row["status"] == "ok" and int(row["femur_voxels"]) == int(expected.sum()) > 0
        assert float(row["volume_ml"]) == pytest.approx(expected.sum() * np.prod(g.spacing) / 1000, abs=0.01)
        assert float(row["seconds"]) > 0
        image = sitk.ReadImage(row["output"])
        assert Path(row["output"]) == out / f"{case}.seg.nrrd"
        assert image.GetMetaData("Segment0_Name") == "Femur" and image.GetSize() == hu.shape[::-1]
        value = int(image.GetMetaData("Segment0_LabelValue"))
        assert np.array_equal(on_grid(image, hu, g) == value, expected == 1)
    assert Geometry.from_sitk(sitk.ReadImage(rows["alpha"]["output"])) == truth["alpha"][1]   # right-handed: as is
    assert sorted(p.name for p in out.iterdir()) == ["alpha.seg.nrrd", "beta.seg.nrrd", "femurunet_results.csv"]


def test_same_result_as_femurunet_segment_and_exit_zero(script, cases, model_file, tmp_path, capsys):
    folder, _ = cases
    out = tmp_path / "out"
    assert script.main(["--input", str(folder / "beta.nrrd"), "--output", str(out), "--model", str(model_file),
                        "--device", "cpu", "--no-surface"]) == 0
    assert femurunet(["segment", str(folder / "beta.nrrd"), str(tmp_path / "cli.seg.nrrd"), "--model",
                      str(model_file), "--device", "cpu", "--quiet"]) == 0
    ours, cli = sitk.ReadImage(str(out / "beta.seg.nrrd")), sitk.ReadImage(str(tmp_path / "cli.seg.nrrd"))
    hu, g = cases[1]["beta"]
    assert Geometry.from_sitk(cli) == g and ours.GetSize() == cli.GetSize()
    assert np.array_equal(on_grid(ours, hu, g) > 0, sitk.GetArrayFromImage(cli) > 0)
    assert sitk.GetArrayFromImage(cli).any()
    for key in ("Segment0_Name", "Segment0_Tags"):
        assert ours.GetMetaData(key) == cli.GetMetaData(key)
    assert "1/1 cases segmented" in capsys.readouterr().out


def test_qc_pictures_and_a_contact_sheet_of_the_folder(script, cases, model_file, tmp_path, capsys):
    from PIL import Image
    from FemurUNetLib.qc import DPI, FIGURE_SIZE
    folder, _ = cases
    out = tmp_path / "out"
    assert script.main(["--input", str(folder / "alpha.nii.gz"), str(folder / "broken.nii.gz"), "--output", str(out),
                        "--model", str(model_file), "--device", "cpu", "--no-surface", "--qc"]) == 1
    with Image.open(out / "alpha_qc.png") as im:
        assert im.size == (int(FIGURE_SIZE[0] * DPI), int(FIGURE_SIZE[1] * DPI))
    assert not (out / "broken_qc.png").exists()
    page = (out / "index.html").read_text()
    rows = read_rows(out / "femurunet_results.csv")
    assert "<img src='alpha_qc.png'" in page and f"<td>{rows['alpha']['volume_ml']}</td>" in page
    assert "<td>broken</td><td>failed</td>" in page and "contact sheet:" in capsys.readouterr().out


def test_only_label_files_left_is_an_error_that_names_them(script, cases, tmp_path, capsys):
    folder, _ = cases
    assert script.main(["--input", str(folder), "--output", str(tmp_path / "out"), "--include", "*_femur.nii.gz",
                        "*.seg.nrrd"]) == 2
    out, err = capsys.readouterr()
    assert "skipped alpha_femur.nii.gz: a label volume" in out and "skipped old.seg.nrrd: a Slicer segmentation" in out
    assert err.count("\n") == 1 and "no CT files" in err and "alpha_femur.nii.gz: a label volume" in err
    assert not (tmp_path / "out").exists()


def test_full_disk_fails_the_case_and_leaves_no_partial_file(script, cases, model_file, tmp_path, capsys, monkeypatch):
    """VTK's .seg.nrrd writer reports success on a short write: the file is checked before it gets its name."""
    folder, _ = cases
    out = tmp_path / "out"
    real_save, real_csv = script.save_segmentation, script.write_csv

    def limited(real, limit):
        def call(*args):
            with size_limit(limit):
                return real(*args)
        return call
    monkeypatch.setattr(script, "save_segmentation", limited(real_save, 300))
    argv = ["--input", str(folder / "alpha.nii.gz"), "--output", str(out), "--model", str(model_file), "--device",
            "cpu", "--no-surface"]
    assert script.main(argv) == 1
    assert "alpha.seg.nrrd: cannot write: the file came out incomplete" in capsys.readouterr().err
    assert os.listdir(out) == ["femurunet_results.csv"]
    assert "cannot write" in read_rows(out / "femurunet_results.csv")["alpha"]["error"]
    before = (out / "femurunet_results.csv").read_bytes()
    monkeypatch.setattr(script, "save_segmentation", real_save)
    monkeypatch.setattr(script, "write_csv", limited(real_csv, 0))
    assert script.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "warning:" not in line]   # the case's plausibility warnings
    assert len(errors) == 1 and errors[0].startswith("segment_folder: error: ")
    assert "femurunet_results.csv: cannot write: File too large; the existing file is unchanged" in errors[0]
    assert sorted(os.listdir(out)) == ["alpha.seg.nrrd", "femurunet_results.csv"]
    assert (out / "femurunet_results.csv").read_bytes() == before


def test_unusable_model_exits_2_before_any_work(script, cases, tmp_path, capsys):
    folder, _ = cases
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert script.main(["--input", str(folder / "alpha.nii.gz"), "--output", str(tmp_path / "out"),
                        "--model", str(bad)]) == 2
    assert "not a FemurUNet model file" in capsys.readouterr().err
    assert not (tmp_path / "out" / "femurunet_results.csv").exists()


def test_dicom_folder_case(script, real_ct, model_file, tmp_path):
    rows = script.segment_files(script.find_inputs([real_ct / "abdomen_dicom"]), tmp_path, model_file,
                                device="cpu", closed_surface=False)
    assert [r["status"] for r in rows] == ["ok"], rows
    image = sitk.ReadImage(rows[0]["output"])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(real_ct / "abdomen_dicom")))
    ct = reader.Execute()
    assert image.GetSize() == ct.GetSize() and Geometry.from_sitk(image) == Geometry.from_sitk(ct)
