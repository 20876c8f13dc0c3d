"""Export: PNG pairs that rebuild the label exactly, manifest rules, label files, all-or-nothing writes."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from FemurUNetTrainLib.cli import main as femurunet
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.geometry import Geometry, Reorientation
from FemurUNetLib.preprocess import window_to_uint8
from FemurUNetLib.volume_io import write_image, write_seg_nrrd
from FemurUNetTrainLib import export as export_mod
from FemurUNetTrainLib import dataset as dataset_mod
from FemurUNetTrainLib.dataset import load_dataset, paired_names, read_pairs
from FemurUNetTrainLib.export import export_arrays, export_files, read_manifest

# i toward patient Right, j toward Superior, k toward Posterior: every canonical axis permuted or flipped
ODD_DIRECTION = np.array([[-1.0, 0, 0], [0, 0, 1], [0, 1, 0]])


def synthetic_case(shape=(24, 30, 20), seed=0):
    """CT in HU with two 'femurs' (labels 1 and 2) occupying some of the canonical axial slices."""
    rng = np.random.default_rng(seed)
    ct = rng.integers(-1000, 1500, size=shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    label[3:9, 5:12, 4:10] = 1
    label[3:9, 18:25, 4:10] = 2
    label[6, 14, 14] = 1
    return ct, label


def files(folder: Path) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def rebuild_label(outdir: Path, case: str, shape_c) -> np.ndarray:
    manifest = read_manifest(outdir)
    canon = np.zeros(shape_c, bool)
    for k in manifest["cases"][case]["slices"]:
        canon[k] = np.asarray(Image.open(outdir / "label" / f"{case}_{k:04d}.png")) > 127
    return canon


@pytest.mark.parametrize("direction", [np.eye(3), ODD_DIRECTION], ids=["identity", "permuted-flipped"])
def test_png_pairs_rebuild_label_exactly_in_canonical_frame(tmp_path, direction):
    ct, label = synthetic_case()
    geometry = Geometry((0.8, 0.9, 2.5), (10.0, -20.0, 30.0), direction)
    out = tmp_path / "ds"
    summary = export_arrays(ct, label, geometry, out, "c1", empty_fraction=1.0)
    reo = Reorientation.for_geometry(geometry)
    ct_c, mask_c = reo.to_canonical(ct), reo.to_canonical(label != 0)
    n_pos = int(mask_c.any(axis=(1, 2)).sum())
    assert summary["case"] == "c1" and summary["positive"] == n_pos
    assert summary["positive"] + summary["negative"] == summary["slices"] == ct_c.shape[0]
    canon = rebuild_label(out, "c1", ct_c.shape)
    np.testing.assert_array_equal(reo.from_canonical(canon), label != 0)   # exact, on the original grid
    names = sorted(p.name for p in (out / "image").iterdir())
    assert names == sorted(p.name for p in (out / "label").iterdir())
    for name in names:
        k = int(name[-8:-4])
        img = np.asarray(Image.open(out / "image" / name))
        assert img.dtype == np.uint8 and img.shape == ct_c.shape[1:]
        np.testing.assert_array_equal(img, window_to_uint8(ct_c[k], 400.0, 2000.0))
        assert set(np.unique(np.asarray(Image.open(out / "label" / name)))) <= {0, 255}
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["window"] == {"center": 400.0, "width": 2000.0} and manifest["orientation"] == "LPS"
    case = manifest["cases"]["c1"]
    assert case["spacing"] == list(reo.canonical_spacing(geometry))
    assert case["slice_shape"] == list(ct_c.shape[1:])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]   # no staging left


def test_empty_fraction_picks_that_share_of_label_free_slices_reproducibly(tmp_path):
    ct, label = synthetic_case(shape=(40, 16, 16))
    a = export_arrays(ct, label, None, tmp_path / "a", "c", empty_fraction=0.25, seed=3)
    b = export_arrays(ct, label, None, tmp_path / "b", "c", empty_fraction=0.25, seed=3)
    assert (a["positive"], a["negative"]) == (b["positive"], b["negative"])
    assert a["positive"] == 6 and a["negative"] == round(0.25 * 34) == 8
    assert read_manifest(tmp_path / "a")["cases"]["c"]["slices"] == read_manifest(tmp_path / "b")["cases"]["c"]["slices"]
    none = export_arrays(ct, label, None, tmp_path / "n", "c", empty_fraction=0.0)
    assert none["negative"] == 0 and none["slices"] == 6


def test_append_second_case_and_window_disagreement(tmp_path):
    ct, label = synthetic_case()
    out = tmp_path / "ds"
    export_arrays(ct, label, None, out, "a", window=(300, 1800))
    export_arrays(ct, label, None, out, "b", window={"center": 300, "width": 1800})
    manifest = read_manifest(out)
    assert set(manifest["cases"]) == {"a", "b"}
    assert len(paired_names(out)) == manifest["cases"]["a"]["slices"].__len__() * 2
    before = files(out)
    with pytest.raises(FemurUNetError, match="window center 400 / width 2000 disagrees"):
        export_arrays(ct, label, None, out, "c")
    with pytest.raises(FemurUNetError, match="already in this dataset"):
        export_arrays(ct, label, None, out, "a", window=(300, 1800))
    assert files(out) == before


def test_negative_case_exports_label_free_slices_only_when_asked(tmp_path):
    ct, label = synthetic_case()
    out = tmp_path / "ds"
    with pytest.raises(FemurUNetError, match="--negative"):
        export_arrays(ct, np.zeros_like(label), None, out, "chest")
    with pytest.raises(FemurUNetError, match="must have an empty label"):
        export_arrays(ct, label, None, out, "chest", negative=True)
    assert not out.exists()
    summary = export_arrays(ct, np.zeros_like(label), None, out, "chest", empty_fraction=0.5, negative=True, seed=1)
    assert summary["positive"] == 0 and summary["negative"] == round(0.5 * ct.shape[0])
    masks = [np.asarray(Image.open(p)) for p in sorted((out / "label").glob("chest_*.png"))]
    assert len(masks) == summary["negative"] and not any(m.any() for m in masks)
    ct_path, label_path = tmp_path / "c.nii.gz", tmp_path / "l.nii.gz"
    write_image(ct_path, ct.astype(np.int16), Geometry())
    write_image(label_path, np.zeros_like(label, dtype=np.uint8), Geometry())
    assert femurunet(["export", str(ct_path), str(label_path), str(tmp_path / "cli"), "--negative",
                      "--empty-fraction", "1"]) == 0
    assert len(list((tmp_path / "cli" / "image").glob("*.png"))) == ct.shape[0]


def test_input_errors_are_clear_and_leave_nothing(tmp_path):
    ct, label = synthetic_case()
    out = tmp_path / "new"
    with pytest.raises(FemurUNetError, match="label is empty"):
        export_arrays(ct, np.zeros_like(label), None, out, "c")
    with pytest.raises(FemurUNetError, match="label shape"):
        export_arrays(ct, label[:-1], None, out, "c")
    with pytest.raises(FemurUNetError, match="case name"):
        export_arrays(ct, label, None, out, "../evil")
    with pytest.raises(FemurUNetError, match="empty fraction"):
        export_arrays(ct, label, None, out, "c", empty_fraction=1.5)
    assert not out.exists()


@pytest.mark.parametrize("fail_at", ["png", "manifest"])
def test_failure_midway_rolls_back_everything(tmp_path, monkeypatch, fail_at):
    ct, label = synthetic_case()
    out = tmp_path / "ds"
    export_arrays(ct, label, None, out, "first")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = {"n": 0}
    real_save = export_mod._save_png

    def flaky_save(path, pixels):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        real_save(path, pixels)

    def failing_manifest(path, fn, suffix=""):
        raise OSError("disk full")

    if fail_at == "png":
        monkeypatch.setattr(export_mod, "_save_png", flaky_save)
    else:
        monkeypatch.setattr(export_mod, "atomic_write", failing_manifest)
    with pytest.raises(FemurUNetError, match="disk full; nothing was added"):
        export_arrays(ct, label, None, out, "second")
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    # into a folder that did not exist: it is not left behind
    monkeypatch.setattr(export_mod, "_save_png", flaky_save if fail_at == "png" else real_save)
    calls["n"] = 0
    with pytest.raises(FemurUNetError, match="disk full; nothing was added"):
        export_arrays(ct, label, None, tmp_path / "fresh", "c")
    assert not (tmp_path / "fresh").exists()


# --- files -------------------------------------------------------------------------------------------------------

@pytest.fixture
def ct_and_label_files(tmp_path):
    ct, label = synthetic_case()
    geometry = Geometry((0.8, 0.8, 2.0), (5.0, 6.0, 7.0), np.diag([-1.0, -1.0, 1.0]))
    ct_path = write_image(tmp_path / "case7.nii.gz", ct, geometry)
    label_path = write_image(tmp_path / "case7_label.nii.gz", label, geometry)
    return ct, label, geometry, ct_path, label_path


def test_export_files_labelmap_with_label_selection(tmp_path, ct_and_label_files):
    ct, label, geometry, ct_path, label_path = ct_and_label_files
    s = export_files(ct_path, label_path, tmp_path / "ds", labels="1", empty_fraction=0.0)
    assert s["case"] == "case7"
    reo = Reorientation.for_geometry(geometry)
    canon = rebuild_label(tmp_path / "ds", "case7", reo.to_canonical(ct).shape)
    np.testing.assert_array_equal(reo.from_canonical(canon), label == 1)
    src = read_manifest(tmp_path / "ds")["cases"]["case7"]["source"]
    assert src["ct"] == str(ct_path) and src["labels"] == [1]


def test_export_files_seg_nrrd_by_segment_name(tmp_path, ct_and_label_files):
    ct, label, geometry, ct_path, _ = ct_and_label_files
    seg = write_seg_nrrd(tmp_path / "s.seg.nrrd", label, geometry,
                         [{"value": 1, "name": "Femur left"}, {"value": 2, "name": "Femur right"}])
    export_files(ct_path, seg, tmp_path / "ds", case="r", segments="femur right", empty_fraction=0.0)
    reo = Reorientation.for_geometry(geometry)
    canon = rebuild_label(tmp_path / "ds", "r", reo.to_canonical(ct).shape)
    np.testing.assert_array_equal(reo.from_canonical(canon), label == 2)
    assert read_manifest(tmp_path / "ds")["cases"]["r"]["source"]["segments"] == ["Femur right"]
    with pytest.raises(FemurUNetError, match=r"no segment named 'Tibia' \(segments: Femur left, Femur right\)"):
        export_files(ct_path, seg, tmp_path / "ds2", segments="Tibia")
    assert not (tmp_path / "ds2").exists()


def write_multilayer_seg(path: Path, layers: np.ndarray, geometry: Geometry, segments) -> Path:
    """A 4-D Slicer .seg.nrrd (kinds: list domain domain domain), one layer per overlapping segment."""
    n, nk, nj, ni = layers.shape
    d = geometry.direction @ np.diag(geometry.spacing)
    dirs = " ".join("(" + ",".join(f"{v:g}" for v in d[:, a]) + ")" for a in range(3))
    header = ["NRRD0004", "type: unsigned char", "dimension: 4", "space: left-posterior-superior",
              f"sizes: {n} {ni} {nj} {nk}", f"space directions: none {dirs}", "kinds: list domain domain domain",
              "encoding: gzip", "space origin: (" + ",".join(f"{v:g}" for v in geometry.origin) + ")"]
    for idx, (name, value, layer) in enumerate(segments):
        header += [f"Segment{idx}_Name:={name}", f"Segment{idx}_LabelValue:={value}", f"Segment{idx}_Layer:={layer}"]
    data = np.ascontiguousarray(layers.transpose(1, 2, 3, 0)).astype(np.uint8)
    path.write_bytes(("\n".join(header) + "\n\n").encode() + gzip.compress(data.tobytes()))
    return path


def test_export_files_multilayer_seg_nrrd(tmp_path, ct_and_label_files):
    ct, label, geometry, ct_path, _ = ct_and_label_files
    a = label == 1
    b = np.zeros_like(a)
    b[4:7, 8:20, 5:9] = True                    # overlaps a: needs its own layer
    seg = write_multilayer_seg(tmp_path / "m.seg.nrrd", np.stack([a, b]).astype(np.uint8), geometry,
                               [("Femur", 1, 0), ("Implant", 1, 1)])
    reo = Reorientation.for_geometry(geometry)
    export_files(ct_path, seg, tmp_path / "one", case="x", segments="Implant", empty_fraction=0.0)
    canon = rebuild_label(tmp_path / "one", "x", reo.to_canonical(ct).shape)
    np.testing.assert_array_equal(reo.from_canonical(canon), b)
    export_files(ct_path, seg, tmp_path / "both", case="x", empty_fraction=0.0)
    canon = rebuild_label(tmp_path / "both", "x", reo.to_canonical(ct).shape)
    np.testing.assert_array_equal(reo.from_canonical(canon), a | b)
    bad = write_multilayer_seg(tmp_path / "bad.seg.nrrd", np.stack([a]).astype(np.uint8), geometry,
                               [("Femur", 1, 0), ("Ghost", 1, 3)])
    with pytest.raises(FemurUNetError, match="segment 'Ghost' is on layer 3 but the file holds 1 layer"):
        export_files(ct_path, bad, tmp_path / "bad")


def test_label_on_other_grid_errors_or_resamples(tmp_path, ct_and_label_files):
    ct, label, geometry, ct_path, _ = ct_and_label_files
    # the same label at half the in-plane resolution: a genuinely different grid
    coarse = Geometry((1.6, 1.6, 2.0), geometry.origin, geometry.direction)
    lab_img = sitk.GetImageFromArray(label)
    geometry.apply_to_sitk(lab_img)
    ref = sitk.Image([10, 15, 24], sitk.sitkUInt8)
    coarse.apply_to_sitk(ref)
    coarse_label = sitk.GetArrayFromImage(sitk.Resample(lab_img, ref, sitk.Transform(), sitk.sitkNearestNeighbor))
    coarse_path = write_image(tmp_path / "coarse.nii.gz", coarse_label, coarse)
    with pytest.raises(FemurUNetError, match="differs from the CT grid.*--resample-label"):
        export_files(ct_path, coarse_path, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    export_files(ct_path, coarse_path, tmp_path / "ds", case="r", resample_label=True, empty_fraction=0.0)
    back = sitk.GetArrayFromImage(sitk.Resample(_with_geometry(coarse_label, coarse), _with_geometry(label, geometry),
                                                sitk.Transform(), sitk.sitkNearestNeighbor)) != 0
    reo = Reorientation.for_geometry(geometry)
    canon = rebuild_label(tmp_path / "ds", "r", reo.to_canonical(ct).shape)
    np.testing.assert_array_equal(reo.from_canonical(canon), back)
    assert read_manifest(tmp_path / "ds")["cases"]["r"]["source"]["label_placement"] == "resampled"


def _with_geometry(array, geometry):
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    geometry.apply_to_sitk(image)
    return image


def test_cropped_label_on_the_same_lattice_is_pasted_exactly(tmp_path, ct_and_label_files):
    ct, label, geometry, ct_path, _ = ct_and_label_files
    crop = label[2:10, 4:27, 3:16]
    origin = np.asarray(geometry.origin) + geometry.direction @ (np.diag(geometry.spacing) @ np.array([3, 4, 2]))
    crop_path = write_image(tmp_path / "crop.nii.gz", crop, Geometry(geometry.spacing, origin, geometry.direction))
    export_files(ct_path, crop_path, tmp_path / "ds", case="p", empty_fraction=0.0)
    reo = Reorientation.for_geometry(geometry)
    canon = rebuild_label(tmp_path / "ds", "p", reo.to_canonical(ct).shape)
    np.testing.assert_array_equal(reo.from_canonical(canon), label != 0)
    assert read_manifest(tmp_path / "ds")["cases"]["p"]["source"]["label_placement"] == "pasted"


def test_cli_export_and_one_line_errors(tmp_path, ct_and_label_files, capsys):
    _, label, geometry, ct_path, label_path = ct_and_label_files
    assert femurunet(["export", str(ct_path), str(label_path), str(tmp_path / "ds"), "--case", "a",
                      "--labels", "1,2", "--empty-fraction", "0.5", "--window", "400,2000"]) == 0
    assert "a: " in capsys.readouterr().out
    assert femurunet(["export", str(ct_path), str(label_path), str(tmp_path / "ds"), "--case", "b",
                      "--window", "300,1500"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dataset.json" in err and "disagrees" in err
    empty = write_image(tmp_path / "empty.nii.gz", np.zeros_like(label), geometry)
    assert femurunet(["export", str(ct_path), str(empty), str(tmp_path / "ds"), "--case", "e"]) == 2
    err = capsys.readouterr().err
    assert "empty.nii.gz" in err and "label is empty" in err


# --- reading pairs back (the trainer's side) -----------------------------------------------------------------------

def test_pairs_are_checked_and_errors_list_offending_files(tmp_path):
    ct, label = synthetic_case()
    out = tmp_path / "ds"
    export_arrays(ct, label, None, out, "c", empty_fraction=0.0)
    names = paired_names(out)
    (out / "label" / names[0]).unlink()
    (out / "image" / names[1]).unlink()
    with pytest.raises(FemurUNetError) as e:
        paired_names(out)
    assert f"image/{names[0]}" in str(e.value) and f"label/{names[1]}" in str(e.value)

    out2 = tmp_path / "ds2"
    export_arrays(ct, label, None, out2, "c", empty_fraction=0.0)
    names = paired_names(out2)
    (out2 / "image" / names[0]).write_bytes(b"not a png")
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(out2 / "label" / names[1])
    with pytest.raises(FemurUNetError) as e:
        read_pairs(out2, names)
    msg = str(e.value)
    assert f"image/{names[0]}" in msg and "unreadable" in msg and f"{names[1]} (image" in msg and "label 7x5" in msg


def test_loaded_pairs_follow_adjust_data(tmp_path, monkeypatch):
    ct, label = synthetic_case(shape=(12, 32, 32))
    out = tmp_path / "ds"
    export_arrays(ct, label, None, out, "c", empty_fraction=0.0)
    data = load_dataset(out, input_size=32)             # native size: no resizing, exact values
    names = paired_names(out)
    assert data.names == names and data.images.shape == (len(names), 1, 32, 32)
    for i, name in enumerate(names):
        img = np.asarray(Image.open(out / "image" / name)).astype(np.float32) / 255.0
        np.testing.assert_array_equal(data.images[i, 0].numpy(), img)
        lab = np.asarray(Image.open(out / "label" / name)) / 255.0 > 0.5
        np.testing.assert_array_equal(data.masks[i, 0].numpy(), lab)
    big = load_dataset(out, input_size=64)              # resized with the engine's to_model_input
    assert big.images.shape[-1] == 64 and big.masks.dtype == torch.bool
    monkeypatch.setattr(dataset_mod, "READ_CHUNK", 5)  # read in chunks (5, 5, 2 slices): the same tensors
    chunked = load_dataset(out, input_size=64)
    assert torch.equal(chunked.images, big.images) and torch.equal(chunked.masks, big.masks)
    manifest = json.loads((out / "dataset.json").read_text())
    (out / "dataset.json").write_text(json.dumps({**manifest, "cases": {}}))    # slices the manifest does not list
    with pytest.raises(FemurUNetError, match=r"1 case\(s\) with slice files but no entry in dataset.json: c "):
        load_dataset(out, input_size=32)
    (out / "dataset.json").unlink()
    with pytest.raises(FemurUNetError, match="no dataset.json"):
        load_dataset(out, input_size=32)


def test_replace_swaps_a_corrected_case_all_or_nothing(tmp_path, monkeypatch):
    ct, label = synthetic_case()
    out = tmp_path / "ds"
    export_arrays(ct, label, None, out, "other", empty_fraction=0.0)
    export_arrays(ct, label, None, out, "c1", empty_fraction=0.0)
    with pytest.raises(FemurUNetError, match="already in this dataset.*--replace"):
        export_arrays(ct, label, None, out, "c1", empty_fraction=0.0)
    corrected = np.zeros_like(label)
    corrected[5:9] = label[5:9]                      # the correction kept only some slices
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    for step in ("_save_png", "atomic_write"):      # before the old slices are set aside / after the new are in place
        with monkeypatch.context() as patch:
            patch.setattr(export_mod, step, full_disk)
            with pytest.raises(FemurUNetError, match="nothing was added"):
                export_arrays(ct, corrected, None, out, "c1", empty_fraction=0.0, replace=True)
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before, step   # the old case intact

    summary = export_arrays(ct, corrected, None, out, "c1", empty_fraction=0.0, replace=True)
    manifest = read_manifest(out)
    kept = manifest["cases"]["c1"]["slices"]
    assert summary["slices"] == len(kept) and set(manifest["cases"]) == {"other", "c1"}
    names = {p.name for p in (out / "image").iterdir() if p.name.startswith("c1_")}
    assert names == {f"c1_{k:04d}.png" for k in kept} == {p.name for p in (out / "label").iterdir()
                                                           if p.name.startswith("c1_")}
    assert {p: p.read_bytes() for p in out.rglob("other_*")} == {p: b for p, b in before.items() if "other_" in p.name}
