"""Keras import: parity with real Keras 2 / Keras 3 outputs (fixtures from keras/make_keras_fixtures.py), no TensorFlow."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import FemurUNetLib
from FemurUNetLib import UNet2D, count_parameters
from FemurUNetTrainLib.cli import main as cli_main
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.keras_import import convert_keras_file, import_keras, read_keras_weights
from FemurUNetLib.modelfile import load_model
from FemurUNetLib.defaults import DEFAULT_WINDOW

FIXTURES = Path(__file__).resolve().parent / "keras" / "fixtures"
TOLERANCE = 1e-5

# (model file, reference npz, base_filters, in_channels, layout)
REAL_KERAS_FILES = [
    ("keras2_b4_full.hdf5", "keras2_b4", 4, 1, "keras2-full-model"),
    ("keras2_b4_weights.h5", "keras2_b4", 4, 1, "keras2-weights-only"),
    ("keras2_b2_in3_weights.h5", "keras2_b2_in3", 2, 3, "keras2-weights-only"),
    ("keras3_b4_full.h5", "keras3_b4", 4, 1, "keras3-full-model"),
    ("keras3_b4.keras", "keras3_b4", 4, 1, "keras3-archive"),
]


def run_nhwc(model: UNet2D, inputs_nhwc: np.ndarray) -> tuple:
    """(probabilities, penultimate features), both NHWC like Keras."""
    captured = {}
    hook = model.dec[3].register_forward_hook(lambda module, args, out: captured.update(features=out.clone()))
    try:
        with torch.no_grad():
            probs = model(torch.from_numpy(inputs_nhwc).permute(0, 3, 1, 2))
    finally:
        hook.remove()
    return probs.permute(0, 2, 3, 1).numpy(), captured["features"].permute(0, 2, 3, 1).numpy()


def assert_matches_keras(model: UNet2D, reference: str) -> None:
    ref = np.load(FIXTURES / f"{reference}.npz")
    probs, features = run_nhwc(model, ref["inputs"])
    assert np.abs(features - ref["features"]).max() <= TOLERANCE
    assert np.abs(probs - ref["outputs"]).max() <= TOLERANCE


@pytest.mark.parametrize("filename, reference, base_filters, in_channels, layout", REAL_KERAS_FILES)
def test_real_keras_parity(filename, reference, base_filters, in_channels, layout):
    model = import_keras(FIXTURES / filename)
    assert (model.base_filters, model.in_channels, model.out_channels) == (base_filters, in_channels, 1)
    assert not model.training
    assert model.metadata["training"]["layout"] == layout
    assert model.metadata["base_filters"] == base_filters and model.metadata["in_channels"] == in_channels
    assert_matches_keras(model, reference)


def test_package_level_import_keras_and_metadata():
    model = FemurUNetLib.import_keras(FIXTURES / "keras2_b4_full.hdf5")
    meta = model.metadata
    assert meta["format_version"] == 1 and meta["architecture"] == "unet2d-seed"
    assert meta["window"] == {"center": DEFAULT_WINDOW[0], "width": DEFAULT_WINDOW[1]}
    assert meta["threshold"] == 0.5 and meta["orientation"] == "LPS"
    assert meta["labels"] == [{"value": 1, "name": "Femur", "color": [0.945, 0.839, 0.569]}]
    assert meta["training"]["source"] == "keras-import" and meta["training"]["file"] == "keras2_b4_full.hdf5"
    assert meta["input_size"] == 32                   # the fixture's InputLayer; the seed's says 256
    weights_only = import_keras(FIXTURES / "keras2_b4_weights.h5", window=(40, 400), threshold=0.3)
    assert weights_only.metadata["input_size"] == 256   # no model config: the seed's input
    assert weights_only.metadata["window"] == {"center": 40.0, "width": 400.0}
    assert weights_only.metadata["threshold"] == 0.3


def test_full_checkpoint_with_adam_slots_imports_model_weights_only():
    with h5py.File(FIXTURES / "keras2_b4_full.hdf5", "r") as f:
        assert "optimizer_weights" in f and "model_weights" in f
    full = import_keras(FIXTURES / "keras2_b4_full.hdf5")
    weights = import_keras(FIXTURES / "keras2_b4_weights.h5")
    for (name, a), (_, b) in zip(full.state_dict().items(), weights.state_dict().items()):
        assert torch.equal(a, b), name


def test_layer_order_comes_from_layer_names_not_from_names():
    with h5py.File(FIXTURES / "keras2_b2_in3_weights.h5", "r") as f:
        layer_names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        conv_groups = [n for n in f if n.startswith("conv_")]
    conv_names = [n for n in layer_names if n.startswith("conv_")]
    assert conv_groups == sorted(conv_names) == conv_names[::-1]   # h5py order is alphabetical
    convs = read_keras_weights(FIXTURES / "keras2_b2_in3_weights.h5").convs
    assert [c.layer for c in convs] == conv_names
    with h5py.File(FIXTURES / "keras2_b4_weights.h5", "r") as f:
        assert list(f).index("conv2d_10") < list(f).index("conv2d_2")


# ---------------------------------------------------------------- Keras-layout files written from PyTorch

def seed_layer_names() -> list:
    """The model-order layer names of a seed U-Net (the real Keras 2 fixture's layer_names)."""
    with h5py.File(FIXTURES / "keras2_b4_weights.h5", "r") as f:
        return [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["layer_names"]]


def keras_convs_in_order(model: UNet2D) -> list:
    """(kernel HWIO, bias) of the 23 convs in Keras model order: the inverse of the importer's mapping."""
    convs = []
    for block in model.enc:
        convs += [block[0], block[2]]
    for up, dec in zip(model.up, model.dec):
        convs += [up.conv, dec[0], dec[2]]
    convs.append(model.head)
    return [(c.weight.detach().numpy().transpose(2, 3, 1, 0), c.bias.detach().numpy()) for c in convs]


def write_keras_h5(model: UNet2D, path: Path, full_model: bool = True, keras3_names: bool = False,
                   adam_slots: bool = False) -> Path:
    """A Keras-2 (or Keras-3 legacy) HDF5 file of ``model`` written with h5py, byte-string attributes."""
    names = seed_layer_names()
    conv_names = [n for n in names if n.startswith("conv2d")]
    weights = dict(zip(conv_names, keras_convs_in_order(model)))
    suffix = "" if keras3_names else ":0"
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if full_model else f
        root.attrs["layer_names"] = np.array([n.encode() for n in names])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"3.1.0" if keras3_names else b"2.4.0"
        for name in names:
            group = root.create_group(name)
            if name not in weights:
                group.attrs["weight_names"] = np.zeros((0,), dtype="float64")
                continue
            kernel, bias = weights[name]
            group.attrs["weight_names"] = np.array([f"{name}/kernel{suffix}".encode(), f"{name}/bias{suffix}".encode()])
            group.create_dataset(f"{name}/kernel{suffix}", data=kernel)
            group.create_dataset(f"{name}/bias{suffix}", data=bias)
            if adam_slots:
                for slot in ("m", "v"):
                    f.create_dataset(f"optimizer_weights/Adam/{name}/kernel/{slot}:0", data=np.zeros_like(kernel))
                    f.create_dataset(f"optimizer_weights/Adam/{name}/bias/{slot}:0", data=np.zeros_like(bias))
    return path


def assert_same_network(a: UNet2D, b: UNet2D, size: int = 32) -> None:
    x = torch.rand(2, a.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a.logits(x), b.logits(x))


@pytest.mark.parametrize("in_channels, base_filters, full_model, keras3_names", [
    (1, 4, True, False), (4, 4, False, False), (8, 4, True, True), (3, 2, False, False), (2, 3, True, True)])
def test_round_trip_infers_base_filters_and_in_channels(tmp_path, in_channels, base_filters, full_model, keras3_names):
    torch.manual_seed(in_channels * 10 + base_filters)
    source = UNet2D(in_channels, 1, base_filters).eval()
    path = write_keras_h5(source, tmp_path / "m.hdf5", full_model=full_model, keras3_names=keras3_names)
    imported = import_keras(path)
    assert (imported.in_channels, imported.base_filters) == (in_channels, base_filters)
    assert_same_network(source, imported)


# ---------------------------------------------------------------- errors

def copy_fixture(tmp_path, name: str = "keras2_b4_full.hdf5") -> Path:
    return Path(shutil.copy(FIXTURES / name, tmp_path / name))


def replace_dataset(path: Path, dataset: str, shape) -> None:
    with h5py.File(path, "r+") as f:
        del f[dataset]
        f.create_dataset(dataset, data=np.zeros(shape, dtype="float32"))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FemurUNetError, match=r"nope\.hdf5: no such file"):
        import_keras(tmp_path / "nope.hdf5")


def test_text_file_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.hdf5"
    path.write_text("not a model\n")
    with pytest.raises(FemurUNetError, match=r"notes\.hdf5: not an HDF5 file"):
        import_keras(path)


def test_femurunet_model_file_is_not_mistaken_for_a_keras_archive(tiny_model_file):
    with pytest.raises(FemurUNetError, match="zip archive without config.json: not a Keras .keras model"):
        import_keras(tiny_model_file)


def test_hdf5_without_keras_weights_is_a_clear_error(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(FemurUNetError, match="no Keras weights"):
        import_keras(tmp_path / "other.h5")


def test_keras3_weights_only_file_is_refused_with_advice(tmp_path):
    with h5py.File(tmp_path / "m.weights.h5", "w") as f:
        f.create_dataset("layers/conv2d/vars/0", data=np.zeros((3, 3, 1, 4), "float32"))
        f.create_group("vars")
    with pytest.raises(FemurUNetError, match=r"\.weights\.h5' file stores no layer order"):
        import_keras(tmp_path / "m.weights.h5")


def test_wrong_kernel_shape_names_layer_and_shapes(tmp_path):
    path = copy_fixture(tmp_path)
    replace_dataset(path, "model_weights/conv2d_11/conv2d_11/kernel:0", (3, 3, 64, 31))
    with pytest.raises(FemurUNetError) as err:
        import_keras(path)
    message = str(err.value)
    assert str(path) in message and "'conv2d_11'" in message and "dec.0.0" in message
    assert "3x3x64x31" in message and "expected 3x3x64x32" in message
    assert "\n" not in message


def test_wrong_first_kernel_is_blamed_not_its_neighbours(tmp_path):
    path = copy_fixture(tmp_path, "keras2_b4_weights.h5")
    replace_dataset(path, "conv2d/conv2d/kernel:0", (3, 3, 1, 5))
    with pytest.raises(FemurUNetError, match=r"'conv2d' .*enc\.0\.0.* 3x3x1x5, expected 3x3x1x4"):
        import_keras(path)


def test_wrong_bias_shape_is_reported(tmp_path):
    path = copy_fixture(tmp_path, "keras2_b4_weights.h5")
    replace_dataset(path, "conv2d_22/conv2d_22/bias:0", (2,))
    with pytest.raises(FemurUNetError, match=r"'conv2d_22' \(head\) has bias 2, expected 1"):
        import_keras(path)


def test_wrong_layer_count_and_foreign_layers_are_reported(tmp_path):
    path = copy_fixture(tmp_path, "keras2_b4_weights.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["layer_names"] = np.array([n for n in f.attrs["layer_names"] if n != "conv2d_22"], dtype=object)
    with pytest.raises(FemurUNetError, match="22 Conv2D layers with weights, the seed U-Net has 23"):
        import_keras(path)
    with h5py.File(path, "r+") as f:
        f.attrs["layer_names"] = np.array(list(f.attrs["layer_names"]) + ["dense"], dtype=object)
        f.create_dataset("dense/dense/kernel:0", data=np.zeros((4, 2), "float32"))
        f.create_dataset("dense/dense/bias:0", data=np.zeros((2,), "float32"))
        f["dense"].attrs["weight_names"] = np.array(["dense/kernel:0", "dense/bias:0"], dtype=object)
    with pytest.raises(FemurUNetError, match=r"layer 'dense' holds .*not a Conv2D kernel and bias"):
        import_keras(path)


def test_bad_window_and_threshold_are_refused():
    with pytest.raises(FemurUNetError, match="window width must be positive"):
        import_keras(FIXTURES / "keras2_b4_weights.h5", window=(40, 0))
    with pytest.raises(FemurUNetError, match="threshold must lie strictly between 0 and 1"):
        import_keras(FIXTURES / "keras2_b4_weights.h5", threshold=1.5)


# ---------------------------------------------------------------- CLI and cached conversion

@pytest.mark.parametrize("window", [["40,400"], ["40", "400"]])     # C,W as export spells it; C W still read
def test_cli_writes_a_model_file_that_load_model_reads(tmp_path, capsys, window):
    out = tmp_path / "imported.pt"
    rc = cli_main(["import-keras", str(FIXTURES / "keras2_b4_full.hdf5"), str(out),
                   "--window", *window, "--threshold", "0.4"])
    captured = capsys.readouterr()
    assert rc == 0 and "base_filters=4" in captured.out
    assert ("deprecated" in captured.err) == (len(window) == 2)
    model = load_model(out)
    assert model.metadata["window"] == {"center": 40.0, "width": 400.0}
    assert model.metadata["threshold"] == 0.4
    assert model.metadata["training"]["source"] == "keras-import"
    assert_matches_keras(model, "keras2_b4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imported.pt"]


def test_cli_rejects_a_bad_window(tmp_path, capsys):
    rc = cli_main(["import-keras", str(FIXTURES / "keras2_b4_full.hdf5"), str(tmp_path / "m.pt"), "--window", "40"])
    assert rc == 2 and "expected CENTER,WIDTH" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_cli_default_output_is_beside_the_source(tmp_path, capsys):
    source = copy_fixture(tmp_path, "keras3_b4_full.h5")
    assert cli_main(["import-keras", str(source)]) == 0
    assert load_model(tmp_path / "keras3_b4_full.pt").metadata["training"]["layout"] == "keras3-full-model"


def test_cli_error_leaves_no_output(tmp_path, capsys):
    bad = copy_fixture(tmp_path)
    replace_dataset(bad, "model_weights/conv2d_5/conv2d_5/kernel:0", (3, 3, 16, 15))
    out = tmp_path / "out.pt"
    assert cli_main(["import-keras", str(bad), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "conv2d_5" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [bad.name]


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(FemurUNetError, match="out.pt: cannot write: disk full; nothing was written"):
        convert_keras_file(FIXTURES / "keras2_b4_weights.h5", tmp_path / "out.pt")
    assert list(tmp_path.iterdir()) == []


def test_convert_keras_file_defaults_beside_source_and_reuses_cache(tmp_path):
    source = copy_fixture(tmp_path, "keras2_b4_weights.h5")
    out = convert_keras_file(source)
    assert out == tmp_path / "keras2_b4_weights.pt"
    first = out.stat().st_mtime_ns
    assert convert_keras_file(source) == out and out.stat().st_mtime_ns == first      # cache reused
    assert convert_keras_file(source, window=DEFAULT_WINDOW) == out and out.stat().st_mtime_ns == first
    convert_keras_file(source, window=(40, 400))                                       # other window: redo
    assert load_model(out).metadata["window"] == {"center": 40.0, "width": 400.0}
    second = out.stat().st_mtime_ns
    os.utime(source, ns=(second + 10**9, second + 10**9))                             # source is newer: redo
    convert_keras_file(source)
    assert out.stat().st_mtime_ns > second
    assert_matches_keras(load_model(out), "keras2_b4")


# ---------------------------------------------------------------- full width

@pytest.mark.slow
def test_full_width_round_trip_with_adam_slots(tmp_path):
    torch.manual_seed(64)
    source = UNet2D(1, 1, 64).eval()
    assert count_parameters(source) == 31_030_593
    path = write_keras_h5(source, tmp_path / "seed_b64.hdf5", full_model=True, adam_slots=True)
    assert path.stat().st_size > 350e6                 # like a trained seed checkpoint
    imported = import_keras(path)
    assert imported.base_filters == 64 and count_parameters(imported) == 31_030_593
    for (name, a), (_, b) in zip(source.state_dict().items(), imported.state_dict().items()):
        assert torch.equal(a, b), name
    assert_same_network(source, imported, size=64)

