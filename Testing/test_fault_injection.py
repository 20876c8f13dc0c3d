"""Fault injection for ``femurunet segment`` and ``femurunet export`` (issue 15 item 3).

Faults: file size limit (RLIMIT_FSIZE: the writers see EFBIG exactly as on a full disk) in every output format,
in-process and in a real process (SIGXFSZ must not kill it), a read-only output folder, SIGKILL while the
output is half written, two processes writing the same output at once, and an input that disappears while it
is read. Each must end in one line on stderr and a non-zero exit with nothing half-written under a result's
name and a previous output unchanged; what SIGKILL leaves is a hidden ``.NAME.*.partial*`` file, removed by the
next write of that output.
"""
import contextlib
import fcntl
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from FemurUNetTrainLib.cli import main as femurunet
from FemurUNetLib.fileio import WriteFailed, atomic_write
from FemurUNetLib.modelfile import save_model
from FemurUNetLib.outputcheck import check_image_file
from conftest import expected_threshold_labels, size_limit, threshold_unet

RUNNER = Path(__file__).with_name("fault_runner.py")
FORMATS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha")


def write_ct(path, seed=0):
    hu = np.full((6, 48, 48), 40, np.int16)
    hu[1:5, 8 + seed:24 + seed, 10:30] = 1200
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(path))
    return hu


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny threshold model and two CTs with different (known) results."""
    folder = tmp_path_factory.mktemp("faults")
    model = save_model(threshold_unet(input_size=48, base_filters=2), folder / "threshold.pt")
    hu = {name: write_ct(folder / f"{name}.nii.gz", seed) for name, seed in (("a", 0), ("b", 7))}
    return folder, model, hu


def segment_args(work, ct, output, *extra):
    folder, model, _ = work
    return ["segment", str(folder / f"{ct}.nii.gz"), str(output), "--model", str(model), "--quiet", *map(str, extra)]


def labels(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def one_error_line(err, command="segment"):
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith(f"femurunet {command}: error: "), err
    return lines[0]


@contextlib.contextmanager
def file_size_limit(limit, monkeypatch, module=sitk, name="WriteImage"):
    """RLIMIT_FSIZE while the output is written (not around the whole command: pytest's own capture files)."""
    real = getattr(module, name)

    def limited(*args, **kwargs):
        with size_limit(limit):
            return real(*args, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(module, name, limited)
        yield


@pytest.mark.parametrize("suffix", FORMATS)
def test_file_size_limit_writes_nothing_and_keeps_the_previous_output(work, tmp_path, capfd, monkeypatch, suffix):
    """ITK reports success on a short write: the written file's own header is checked against its bytes."""
    full = tmp_path / f"full{suffix}"
    assert femurunet(segment_args(work, "a", full)) == 0
    size = full.stat().st_size
    out = tmp_path / "out"
    out.mkdir()
    previous = out / f"femur{suffix}"
    assert femurunet(segment_args(work, "b", previous)) == 0
    before = previous.read_bytes()
    capfd.readouterr()
    for limit, target in ((size // 2, previous), (size - 1, previous), (0, out / f"new{suffix}")):
        with file_size_limit(limit, monkeypatch):
            code = femurunet(segment_args(work, "a", target))
        line = one_error_line(capfd.readouterr().err)
        assert code == 2 and str(target) in line
        assert ("existing file is unchanged" if target == previous else "nothing was written") in line
        assert sorted(os.listdir(out)) == [previous.name] and previous.read_bytes() == before


@pytest.mark.slow
def test_file_size_limit_in_a_real_process_with_a_probability_map(work, tmp_path):
    """SIGXFSZ does not kill the process; the labelmap and probability map appear together or not at all."""
    free = subprocess.run(["femurunet", *segment_args(work, "a", tmp_path / "l.nii.gz", "--probabilities",
                                                      tmp_path / "p.nii.gz")], capture_output=True, text=True)
    assert free.returncode == 0, free.stderr
    label_size, prob_size = (tmp_path / "l.nii.gz").stat().st_size, (tmp_path / "p.nii.gz").stat().st_size
    assert label_size < prob_size
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(tmp_path / "l.nii.gz", out / "femur.nii.gz")
    limit = (label_size + prob_size) // 2 if prob_size > 2 * label_size else label_size
    done = subprocess.run(["femurunet", *segment_args(work, "b", out / "femur.nii.gz", "--probabilities",
                                                      out / "prob.nii.gz")], capture_output=True, text=True,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert done.returncode == 2, done.stderr
    assert "prob.nii.gz: cannot write" in one_error_line(done.stderr)
    assert sorted(os.listdir(out)) == ["femur.nii.gz"]
    assert (out / "femur.nii.gz").read_bytes() == (tmp_path / "l.nii.gz").read_bytes()


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_check_image_file_refuses_every_cut(tmp_path, suffix, dtype):
    """A file cut anywhere (a disk that filled up at that byte) is refused; the whole file passes."""
    array = (np.arange(5 * 20 * 30).reshape(5, 20, 30) % 7).astype(dtype)
    whole = tmp_path / f"whole{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(whole), True)
    check_image_file(whole)
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    for size in sorted({0, 10, len(data) // 3, len(data) // 2, len(data) - 8, len(data) - 4, len(data) - 1}):
        cut.write_bytes(data[:size])
        with pytest.raises(WriteFailed, match="incomplete"):
            check_image_file(cut)


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody may write into: chmod for a normal user; for root (who ignores modes) chattr +i."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    (folder / "femur.nii.gz").write_bytes(b"previous result")
    folder.chmod(0o555)
    made_immutable = False
    if os.access(folder, os.W_OK):   # root
        made_immutable = shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)]).returncode == 0
        if not made_immutable:
            folder.chmod(0o755)
            pytest.skip("running as root without chattr: cannot make a read-only folder")
    yield folder
    if made_immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def test_read_only_output_folder(work, read_only_folder, capfd):
    for name in ("femur.nii.gz", "new.seg.nrrd", "sub/new.nii.gz"):
        assert femurunet(segment_args(work, "a", read_only_folder / name)) == 2
        line = one_error_line(capfd.readouterr().err)
        assert str(read_only_folder / name) in line and ("Permission denied" in line or "not permitted" in line)
    assert os.listdir(read_only_folder) == ["femur.nii.gz"]
    assert (read_only_folder / "femur.nii.gz").read_bytes() == b"previous result"


def export_case(work, tmp_path):
    folder, _, hu = work
    label = tmp_path / "label.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(expected_threshold_labels(hu["a"])), str(label))
    return folder / "a.nii.gz", label


def dataset_files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_export_faults_leave_the_dataset_as_it_was(work, tmp_path, read_only_folder, capfd, monkeypatch):
    import FemurUNetTrainLib.export as export_mod
    ct, label = export_case(work, tmp_path)
    dataset = tmp_path / "dataset"
    assert femurunet(["export", str(ct), str(label), str(dataset), "--case", "first"]) == 0
    before = dataset_files(dataset)
    capfd.readouterr()
    for limit in (0, 60):   # nothing at all / the first PNG cut short
        with file_size_limit(limit, monkeypatch, export_mod, "_save_png"):
            assert femurunet(["export", str(ct), str(label), str(dataset), "--case", "second"]) == 2
        assert "cannot write: File too large; nothing was added" in one_error_line(capfd.readouterr().err, "export")
        assert dataset_files(dataset) == before
        assert not [p for p in dataset.rglob("*") if "export-" in p.name]
    assert femurunet(["export", str(ct), str(label), str(read_only_folder / "ds"), "--case", "c"]) == 2
    one_error_line(capfd.readouterr().err, "export")
    assert os.listdir(read_only_folder) == ["femur.nii.gz"]


def start_paused(work, ct, output):
    process = subprocess.Popen([sys.executable, str(RUNNER), *segment_args(work, ct, output)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    assert line.startswith("WRITING "), line + process.stderr.read()
    return process, Path(line.split(" ", 1)[1].strip())


def finish(process):
    out, err = process.communicate("finish\n", timeout=120)
    return process.returncode, out, err


@pytest.mark.slow
def test_sigkill_during_the_write_leaves_the_previous_output_and_a_hidden_partial(work, tmp_path):
    output = tmp_path / "femur.nii.gz"
    assert femurunet(segment_args(work, "b", output)) == 0
    before = output.read_bytes()
    process, partial = start_paused(work, "a", output)
    assert partial.is_file() and 0 < partial.stat().st_size
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert output.read_bytes() == before                        # the previous result, whole
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p != output)
    assert leftovers == [partial.name]
    assert partial.name.startswith(".femur.nii.gz.") and ".partial" in partial.name   # hidden, and says so
    # the next write of the same output finishes and removes the dead writer's leftover
    assert femurunet(segment_args(work, "a", output)) == 0
    assert sorted(os.listdir(tmp_path)) == ["femur.nii.gz"]
    assert np.array_equal(labels(output), expected_threshold_labels(work[2]["a"]))


@pytest.mark.slow
def test_two_processes_writing_one_output(work, tmp_path):
    """Both write at once (each into its own temporary file); each rename is whole; a live writer's file is kept."""
    output = tmp_path / "femur.seg.nrrd"
    first, first_tmp = start_paused(work, "a", output)
    second, second_tmp = start_paused(work, "b", output)
    assert first_tmp != second_tmp and first_tmp.is_file() and second_tmp.is_file()
    code, out, err = finish(first)
    assert code == 0, err
    assert np.array_equal(labels(output) > 0, expected_threshold_labels(work[2]["a"]) == 1)
    assert second_tmp.is_file()                   # locked by its live writer: not taken for a leftover
    code, out, err = finish(second)
    assert code == 0, err
    assert np.array_equal(labels(output) > 0, expected_threshold_labels(work[2]["b"]) == 1)
    assert sorted(os.listdir(tmp_path)) == ["femur.seg.nrrd"]


def test_input_disappears_while_it_is_read(work, tmp_path, monkeypatch, capfd):
    """The CT (a file, or a DICOM series' slices) is deleted after it was found, before its voxels are read."""
    victim = tmp_path / "ct.nii.gz"
    shutil.copy(work[0] / "a.nii.gz", victim)
    real_reader, real_series = sitk.ImageFileReader.Execute, sitk.ImageSeriesReader.Execute

    def vanish_then(real):
        def execute(self, *args):
            victim.unlink(missing_ok=True)
            for f in (tmp_path / "dicom").glob("*.dcm"):
                f.unlink()
            return real(self, *args)
        return execute
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", vanish_then(real_reader))
    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", vanish_then(real_series))
    folder, model, _ = work
    assert femurunet(["segment", str(victim), str(tmp_path / "out.nii.gz"), "--model", str(model), "--quiet"]) == 2
    assert str(victim) in one_error_line(capfd.readouterr().err)
    (tmp_path / "dicom").mkdir()
    image = sitk.Cast(sitk.ReadImage(str(folder / "a.nii.gz")), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    for k in range(image.GetDepth()):
        writer.SetFileName(str(tmp_path / "dicom" / f"{k:03d}.dcm"))
        writer.Execute(image[:, :, k])
    assert femurunet(["segment", str(tmp_path / "dicom"), str(tmp_path / "out.nii.gz"), "--model", str(model),
                      "--quiet"]) == 2
    one_error_line(capfd.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == ["dicom"]


def test_export_label_disappears_after_the_ct_was_read(work, tmp_path, monkeypatch, capfd):
    import FemurUNetTrainLib.export as export_mod
    ct, label = export_case(work, tmp_path)
    real = export_mod.read_volume

    def read_then_lose_the_label(*args, **kwargs):
        result = real(*args, **kwargs)
        label.unlink()
        return result
    monkeypatch.setattr(export_mod, "read_volume", read_then_lose_the_label)
    assert femurunet(["export", str(ct), str(label), str(tmp_path / "ds"), "--case", "c"]) == 2
    assert str(label) in one_error_line(capfd.readouterr().err, "export")
    assert not (tmp_path / "ds").exists()


def test_output_may_not_be_the_input(work, capfd):
    folder = work[0]
    before = (folder / "a.nii.gz").read_bytes()
    assert femurunet(segment_args(work, "a", folder / "a.nii.gz")) == 2
    assert "this is the input" in one_error_line(capfd.readouterr().err)
    assert femurunet(segment_args(work, "a", folder / "x.nii.gz", "--probabilities", folder / "x.nii.gz")) == 2
    assert "must differ" in one_error_line(capfd.readouterr().err)
    assert (folder / "a.nii.gz").read_bytes() == before and not (folder / "x.nii.gz").exists()


def test_leftovers_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead = tmp_path / ".out.txt.abc123.partial"
    live = tmp_path / ".out.txt.def456.partial"
    other = tmp_path / ".other.txt.abc123.partial"
    for p in (dead, live, other):
        p.write_text("half")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        atomic_write(tmp_path / "out.txt", lambda tmp: Path(tmp).write_text("whole"))
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "out.txt"])
    assert (tmp_path / "out.txt").read_text() == "whole"
