"""``femurunet segment-folder``: the Slicer batch script's selection and CSV in plain Python, resumable, and split
over processes by torchrun (a real 2-process run here) with the same labels as one process."""
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from FemurUNetLib.batch import case_cost, read_csv, shard
from FemurUNetLib.geometry import Geometry
from FemurUNetLib.modelfile import save_model
from FemurUNetTrainLib.cli import main as femurunet
from conftest import REPO, expected_threshold_labels, threshold_unet

CASES = ("alpha", "beta", "gamma")


def write_ct(path, seed, direction=None):
    rng = np.random.default_rng(seed)
    hu = rng.integers(-200, 200, size=(5 + seed, 48, 40)).astype(np.int16)
    hu[1:4, 8 + seed:24 + seed, 12:30] = 1200
    g = Geometry((0.8, 0.7, 2.5), (10.0 * seed, -20.0, 33.0), np.eye(3) if direction is None else direction)
    image = sitk.GetImageFromArray(hu)
    g.apply_to_sitk(image)
    sitk.WriteImage(image, str(path), True)
    return hu, g


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three CTs (one left-handed), a CT that is not an image, a label volume, a segmentation, a hidden file."""
    root = tmp_path_factory.mktemp("cts")
    flipped = np.array([[0, -1, 0], [1, 0, 0], [0, 0, -1.0]])
    truth = {"alpha": write_ct(root / "alpha.nii.gz", 1), "beta": write_ct(root / "beta.nrrd", 2, flipped),
             "gamma": write_ct(root / "gamma.mha", 3)}
    (root / "broken.nii.gz").write_bytes(b"not a volume at all")
    hu, g = truth["alpha"]
    label = sitk.GetImageFromArray(expected_threshold_labels(hu))
    g.apply_to_sitk(label)
    sitk.WriteImage(label, str(root / "alpha_femur.nii.gz"), True)
    (root / "old.seg.nrrd").write_bytes(b"a segmentation, not a CT")
    (root / ".gamma.nii.gz.x1.partial.nii.gz").write_bytes(b"left by a killed write")
    model = save_model(threshold_unet(input_size=48), tmp_path_factory.mktemp("model") / "threshold.pt")
    return root, truth, model


def run(folder, out, *extra):
    root, _, model = folder
    return femurunet(["segment-folder", str(root), str(out), "--model", str(model), "--device", "cpu", *extra])


def rows_of(out):
    return {row["case"]: row for row in read_csv(out / "femurunet_results.csv")}


def check_labels(folder, out):
    from FemurUNetLib.volume_io import read_provenance
    _, truth, model = folder
    for case, (hu, g) in truth.items():
        image = sitk.ReadImage(str(out / f"{case}.seg.nrrd"))
        assert Geometry.from_sitk(image) == g and image.GetMetaData("Segment0_Name") == "Femur"
        assert np.array_equal(sitk.GetArrayFromImage(image), expected_threshold_labels(hu))
        made = read_provenance(out / f"{case}.seg.nrrd")          # the model loaded once, named by its file
        assert (made["model"], made["device"], made["mirror"]) == (Path(model).name, "cpu", False)


def test_folder_segmented_exactly_with_the_batch_scripts_csv_and_a_bad_case_failing_alone(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(folder, out) == 1
    stdout, stderr = capsys.readouterr()
    check_labels(folder, out)
    rows = rows_of(out)
    assert list(rows) == ["alpha", "beta", "broken", "gamma", ".gamma.nii.gz.x1.partial", "alpha_femur", "old"]
    for case in CASES:
        hu, g = folder[1][case]
        voxels = int(expected_threshold_labels(hu).sum())
        assert rows[case]["status"] == "ok" and int(rows[case]["femur_voxels"]) == voxels > 0
        assert float(rows[case]["volume_ml"]) == pytest.approx(voxels * np.prod(g.spacing) / 1000, abs=0.01)
        assert rows[case]["output"] == str(out / f"{case}.seg.nrrd") and float(rows[case]["seconds"]) >= 0
    assert rows["alpha_femur"]["status"] == "skipped" and rows["alpha_femur"]["error"].startswith("a label volume")
    assert rows["old"]["status"] == "skipped" and "hidden" in rows[".gamma.nii.gz.x1.partial"]["error"]
    broken = rows["broken"]
    assert broken["status"] == "failed" and broken["output"] == "" and "broken.nii.gz: cannot read" in broken["error"]
    assert "\n" not in broken["error"]
    assert stderr.strip().splitlines()[-1] == "femurunet segment-folder: 1 case(s) failed: broken"
    assert "3/4 cases segmented, 3 file(s) skipped (not CTs)" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["alpha.seg.nrrd", "beta.seg.nrrd", "femurunet_results.csv",
                                                     "gamma.seg.nrrd"]   # no part files, nothing of broken


def test_a_rerun_keeps_finished_cases_and_redoes_missing_or_damaged_ones(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(folder, out, "--exclude", "broken*") == 0
    first = rows_of(out)
    (out / "beta.seg.nrrd").unlink()
    data = (out / "gamma.seg.nrrd").read_bytes()
    (out / "gamma.seg.nrrd").write_bytes(data[:-20])              # damaged behind our back
    alpha_written = (out / "alpha.seg.nrrd").stat().st_mtime_ns
    assert run(folder, out, "--exclude", "broken*") == 0
    assert "3/3 cases segmented (1 done earlier)" in capsys.readouterr().out
    rows = rows_of(out)
    assert rows["alpha"] == dict(first["alpha"], status="done earlier")   # the earlier row, kept
    assert (out / "alpha.seg.nrrd").stat().st_mtime_ns == alpha_written
    assert rows["beta"]["status"] == rows["gamma"]["status"] == "ok"
    check_labels(folder, out)
    # a killed run leaves its part file (no merged CSV): what it finished counts as done
    (out / "femurunet_results.csv").rename(out / "femurunet_results.part1.csv")
    assert run(folder, out, "--exclude", "broken*") == 0
    assert {r["status"] for r in rows_of(out).values() if r["status"] != "skipped"} == {"done earlier"}
    assert not list(out.glob("*.part*.csv"))
    assert run(folder, out, "--exclude", "broken*", "--redo") == 0
    assert {r["status"] for r in rows_of(out).values() if r["status"] != "skipped"} == {"ok"}


def test_bad_runs_are_one_line_errors_before_any_work(folder, tmp_path, capsys):
    root, _, model = folder
    out = tmp_path / "out"
    assert run(folder, out, "--include", "*_femur.nii.gz") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CT files" in err and "alpha_femur.nii.gz: a label volume" in err
    assert not out.exists()
    assert femurunet(["segment-folder", str(tmp_path / "missing"), str(out)]) == 2
    assert "missing: no such file or folder" in capsys.readouterr().err
    twins = tmp_path / "twins"
    twins.mkdir()
    shutil.copy(root / "alpha.nii.gz", twins / "alpha.nii.gz")
    shutil.copy(root / "beta.nrrd", twins / "alpha.nrrd")
    assert femurunet(["segment-folder", str(twins), str(out), "--model", str(model)]) == 2
    assert "several inputs would write the same output: alpha" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert femurunet(["segment-folder", str(root), str(out), "--model", str(bad)]) == 2
    assert "not a FemurUNet model file" in capsys.readouterr().err and not out.exists()


def test_shards_are_balanced_by_size_and_cover_every_case_once(folder):
    assert shard([5, 1, 1, 1, 4], 2) == [[0, 2], [1, 3, 4]]   # 6 and 6
    assert shard([9, 1, 1, 1], 2) == [[0], [1, 2, 3]]
    assert shard([3, 3, 3], 2) == [[0, 2], [1]] and shard([1, 2], 4) == [[1], [0], [], []]
    parts = shard(list(range(20, 0, -1)), 3)
    assert sorted(i for part in parts for i in part) == list(range(20))
    root = folder[0]
    assert case_cost(root / "alpha.nii.gz") == 6 * 48 * 40 and case_cost(root / "broken.nii.gz") == 9


@pytest.mark.slow
def test_two_torchrun_processes_give_the_labels_and_csv_of_one(folder, tmp_path):
    root, _, model = folder
    one, two = tmp_path / "one", tmp_path / "two"
    assert run(folder, one) == 1
    paths = [str(REPO / "FemurUNet"), str(REPO / "FemurUNetTrain"), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "FemurUNetTrainLib.cli", "segment-folder", str(root), str(two), "--model",
                           str(model), "--device", "cpu"], capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "rank 0: [1/2]" in done.stdout + done.stderr and "rank 1: [1/2]" in done.stdout + done.stderr
    assert "femurunet segment-folder: 1 case(s) failed: broken" in done.stderr
    check_labels(folder, two)
    for case in CASES:
        a, b = (sitk.ReadImage(str(o / f"{case}.seg.nrrd")) for o in (one, two))
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    with open(one / "femurunet_results.csv", newline="") as f1, open(two / "femurunet_results.csv", newline="") as f2:
        first, second = list(csv.DictReader(f1)), list(csv.DictReader(f2))
    strip = [lambda r: {k: v.replace(str(one), "OUT") for k, v in r.items() if k != "seconds"},
             lambda r: {k: v.replace(str(two), "OUT") for k, v in r.items() if k != "seconds"}]
    assert [strip[0](r) for r in first] == [strip[1](r) for r in second]    # one merged CSV, same rows, same order
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
