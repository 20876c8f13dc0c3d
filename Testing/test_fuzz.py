"""Fuzz ``femurunet segment`` with damaged inputs and model files (issue 15 item 2).

Valid small files of every format (NIfTI .nii/.nii.gz, NRRD gzip/raw/detached, MetaImage .mha/.mhd, a 3-slice
DICOM series, model .pt, Keras .hdf5/.h5/.keras) are truncated, byte-flipped and given corrupt headers; model
metadata is tampered with. Every run must end in either

- exit 0 with a correct result: the labelmap on the grid of the volume as read, equal to the threshold
  model's exact answer (HU > 300) when the grid is unchanged; or
- exit 2 with exactly one line ``femurunet segment: error: <file>: ...`` on stderr and no output file,

never an uncaught exception (a traceback) and never a file left behind. Truncating a file that holds voxel
data must always be refused. Runs are derandomized (the same inputs each time); set
FEMURUNET_FUZZ_EXAMPLES=500 for a longer, random campaign.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from FemurUNetLib.modelfile import save_model
from FemurUNetLib.volume_io import read_volume
from FemurUNetTrainLib.cli import main

from conftest import expected_threshold_labels, threshold_unet
from test_damaged_input import ct_image, write_dicom_series

EXAMPLES = int(os.environ.get("FEMURUNET_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES or 8, deadline=None, derandomize=not EXAMPLES, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
KERAS = Path(__file__).resolve().parent / "keras" / "fixtures"
TRIED = Counter()

# name -> (files written by SimpleITK from one volume, compress); the first file is the one given to segment
VOLUME_FORMATS = {"nii": ("v.nii", False), "nii.gz": ("v.nii.gz", True), "nrrd-gzip": ("v.nrrd", True),
                  "nrrd-raw": ("v.nrrd", False), "nhdr+raw.gz": ("v.nhdr", True), "mha": ("v.mha", False),
                  "mha-zlib": ("v.mha", True), "mhd+raw": ("v.mhd", False)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    model = save_model(threshold_unet(base_filters=2, input_size=32), root / "threshold32.pt")
    for name, (filename, compress) in VOLUME_FORMATS.items():
        (root / name).mkdir()
        sitk.WriteImage(ct_image(), str(root / name / filename), compress)
    write_dicom_series(root / "dicom", [30.0, 32.5, 35.0])
    yield root, model
    print("\nfuzzed inputs per format:", dict(sorted(TRIED.items())), "total", sum(TRIED.values()))


def run_segment(source, model, workdir: Path, capfd, *extra):
    """One in-process run; returns (exit code, stderr, output path). An exception here is a traceback."""
    out_dir = workdir / "out"
    out_dir.mkdir()
    out = out_dir / "seg.nii.gz"
    capfd.readouterr()          # what earlier checks outside the CLI printed is not this run's
    code = main(["segment", str(source), str(out), "--model", str(model), "--quiet", "--keep-all-pieces", *extra])
    _, err = capfd.readouterr()
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("femurunet segment: error: "), err
        assert list(out_dir.iterdir()) == [], "an output was left behind by a failed run"
    else:
        assert code == 0, err
        assert out.is_file() and [p.name for p in out_dir.iterdir()] == ["seg.nii.gz"]
    return code, err, out


def assert_correct(source, out: Path, exact: bool = True):
    """A result is correct: on the grid of the volume as read, exact where the grid is the original one."""
    volume, geometry = read_volume(source)
    labels = sitk.ReadImage(str(out))
    assert labels.GetSize() == tuple(reversed(volume.shape))
    assert np.allclose(labels.GetSpacing(), geometry.spacing, rtol=1e-5)
    assert np.allclose(labels.GetOrigin(), geometry.origin, rtol=1e-5, atol=1e-4)
    same_grid = (volume.shape == (3, 32, 32) and np.allclose(geometry.direction, np.eye(3), atol=1e-6))
    if same_grid and exact:
        assert np.array_equal(sitk.GetArrayFromImage(labels), expected_threshold_labels(volume))


BINARY = (".nii", ".nii.gz", ".dcm", ".pt", ".hdf5", ".h5", ".keras")


def header_length(data: bytes, name: str) -> int:
    if name.endswith((".pt", ".hdf5", ".h5", ".keras")):
        return min(len(data), 2048)
    if name.endswith(".dcm"):
        return min(len(data), 1200)
    if name.endswith((".nii", ".nii.gz")):
        return 352
    end = data.find(b"ElementDataFile") if name.endswith((".mha", ".mhd")) else data.find(b"\n\n")
    return len(data) if end < 0 else end + 1


class Blob(bytes):
    """Damaged file content; shown by its length when hypothesis reports a failing example."""

    def __repr__(self):
        return f"<{len(self)} bytes>"


@st.composite
def damage(draw, data: bytes, name: str):
    """(kind, damaged bytes): a cut, a few flipped bytes anywhere, or a corrupt header (text or binary)."""
    kind = draw(st.sampled_from(["truncate", "flip", "header"]))
    if kind == "truncate" or len(data) < 2:
        return kind, Blob(data[:draw(st.integers(0, len(data) - 1))])
    buffer = bytearray(data)
    span = header_length(data, name) if kind == "header" else len(data)
    text = kind == "header" and not name.endswith(BINARY)
    if text and draw(st.booleans()):
        numbers = [m for m in re.finditer(rb"-?\d+(\.\d+)?", bytes(buffer[:span]))]
        if numbers:
            m = draw(st.sampled_from(numbers))
            new = str(draw(st.sampled_from([0, -1, 1, 7, 2 ** 31, 10 ** 12, "nan", "1e308"]))).encode()
            return kind, Blob(buffer[:m.start()] + new + buffer[m.end():])
    for _ in range(draw(st.integers(1, 6))):
        buffer[draw(st.integers(0, span - 1))] ^= draw(st.integers(1, 255))
    return kind, Blob(buffer)


def damaged_copy(data_draw, folder: Path, workdir: Path, pick_file) -> tuple:
    """Copy ``folder`` to ``workdir`` and damage one of its files; (kind, damaged file, copy)."""
    copy = workdir / folder.name
    shutil.copytree(folder, copy)
    files = sorted(copy.iterdir())
    target = files[pick_file(len(files))]
    data = target.read_bytes()
    raw = target.name.endswith((".nii.gz", ".gz")) and data_draw.draw(st.booleans())
    if raw:   # damage the NIfTI/NRRD inside the gzip, then re-compress: a well-formed gzip of a bad file
        kind, bad = data_draw.draw(damage(gzip.decompress(data), target.name.replace(".gz", "")))
        bad = gzip.compress(bad)
    else:
        kind, bad = data_draw.draw(damage(data, target.name))
    target.write_bytes(bad)
    return kind, target, copy


def fuzz_volume(corpus, capfd, data_draw, fmt: str):
    root, model = corpus
    folder = root / fmt
    with tempfile.TemporaryDirectory(dir=root) as work:
        work = Path(work)
        kind, target, copy = damaged_copy(data_draw, folder, work,
                                          lambda n: data_draw.draw(st.integers(0, n - 1)))
        source = copy if fmt == "dicom" else copy / VOLUME_FORMATS[fmt][0]
        TRIED[fmt] += 1
        code, err, out = run_segment(source, model, work, capfd)
        if code == 2:
            assert str(copy) in err, err
        else:
            assert_correct(source, out)
        holds_voxels = fmt == "dicom" or not target.name.endswith((".mhd", ".nhdr"))
        if kind == "truncate" and holds_voxels:
            assert code == 2, f"a cut {target.name} was accepted"


@pytest.mark.parametrize("fmt", list(VOLUME_FORMATS) + ["dicom"])
@FUZZ
@given(data_draw=st.data())
def test_damaged_volumes(corpus, capfd, fmt, data_draw):
    fuzz_volume(corpus, capfd, data_draw, fmt)


# ---------------------------------------------------------------- model files

def model_copy(data_draw, source: Path, work: Path) -> tuple:
    data = source.read_bytes()
    kind, bad = data_draw.draw(damage(data, source.name))
    target = work / source.name
    target.write_bytes(bad)
    return kind, target


@FUZZ
@given(data_draw=st.data())
def test_damaged_pt_model(corpus, capfd, data_draw):
    root, model = corpus
    with tempfile.TemporaryDirectory(dir=root) as work:
        kind, bad = model_copy(data_draw, model, Path(work))
        TRIED["model .pt"] += 1
        code, err, out = run_segment(root / "nii" / "v.nii", bad, Path(work), capfd)
        if code == 2:
            assert str(bad) in err, err
        else:   # the weights are CRC-checked: a result is exactly the intact model's
            assert_correct(root / "nii" / "v.nii", out)
        if kind == "truncate":
            assert code == 2


@pytest.mark.parametrize("fixture", ["keras2_b4_full.hdf5", "keras3_b4_full.h5", "keras3_b4.keras"])
@settings(FUZZ, max_examples=EXAMPLES or 3)
@given(data_draw=st.data())
def test_damaged_keras_model(corpus, capfd, fixture, data_draw):
    """HDF5 holds no checksums: flipped weight bytes may still run (exit 0 with a well-formed result)."""
    assert (KERAS / fixture).is_file(), f"{fixture}: a Keras test fixture is missing from {KERAS}"
    root, _ = corpus
    with tempfile.TemporaryDirectory(dir=root) as work:
        kind, bad = model_copy(data_draw, KERAS / fixture, Path(work))
        TRIED[f"keras {Path(fixture).suffix}"] += 1
        code, err, out = run_segment(root / "nii" / "v.nii", bad, Path(work), capfd)
        if code == 2:
            assert str(bad) in err, err
        else:
            assert sitk.ReadImage(str(out)).GetSize() == (32, 32, 3)
        if kind == "truncate":
            assert code == 2


# ---------------------------------------------------------------- model metadata

def tampered_model(model: Path, target: Path, changes: dict) -> Path:
    record = torch.load(model, weights_only=True)
    meta = json.loads(record["metadata"])
    for key, value in changes.items():
        if key == "format_version":
            record[key] = value
        elif key.startswith("window."):
            meta["window"][key.split(".")[1]] = value
        else:
            meta[key] = value
    record["metadata"] = json.dumps(meta)
    torch.save(record, target)
    return target


@pytest.mark.parametrize("changes, message", [
    ({"window.width": 0}, "window"), ({"window.width": float("nan")}, "window"),
    ({"window.center": "400"}, "window"), ({"threshold": float("nan")}, "threshold"),
    ({"threshold": 1.0}, "threshold"), ({"input_size": 0}, "input_size"), ({"input_size": -32}, "input_size"),
    ({"input_size": 32.0}, "input_size"), ({"format_version": 2}, "format version 2"),
    ({"format_version": None}, "format version"), ({"labels": []}, "labels"),
    ({"labels": [{"value": 0, "name": "x"}]}, "label values"), ({"base_filters": 0}, "base_filters"),
    ({"out_channels": 3}, "out_channels"), ({"orientation": "RAS"}, "orientation"), ({"window": None}, "window"),
])
def test_tampered_metadata_is_one_clear_line(corpus, capfd, tmp_path, changes, message):
    root, model = corpus
    bad = tampered_model(model, tmp_path / "tampered.pt", changes)
    code, err, _ = run_segment(root / "nii" / "v.nii", bad, tmp_path, capfd)
    assert code == 2 and str(bad) in err and message in err, err


ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 40, 2 ** 40), st.floats(), st.text(max_size=5),
                      st.lists(st.integers(0, 3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers()))


@FUZZ
@given(key=st.sampled_from(["architecture", "base_filters", "in_channels", "out_channels", "input_size",
                            "window", "window.center", "window.width", "orientation", "threshold", "labels",
                            "format_version"]),
       value=ANY_VALUE)
def test_any_tampered_metadata_value(corpus, capfd, key, value):
    root, model = corpus
    with tempfile.TemporaryDirectory(dir=root) as work:
        bad = tampered_model(model, Path(work) / "tampered.pt", {key: value})
        TRIED["model metadata"] += 1
        code, err, out = run_segment(root / "nii" / "v.nii", bad, Path(work), capfd)
        if code == 0:    # a valid but different setting (another window, say): a well-formed result
            assert_correct(root / "nii" / "v.nii", out, exact=False)
        else:
            assert str(bad) in err, err
