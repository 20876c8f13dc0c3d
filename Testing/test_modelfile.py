import json
import os

import pytest
import torch

from FemurUNetLib import FemurUNetError, UNet2D, load_model, save_model
from FemurUNetLib.modelfile import FORMAT_NAME
from FemurUNetLib.resolve import resolve_model


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    torch.manual_seed(3)
    net = UNet2D(base_filters=4)
    path = save_model(net, tmp_path / "m.pt", window={"center": 300.0, "width": 1500.0},
                      training={"epochs": 2, "dice": 0.9})
    back = load_model(path)
    assert not back.training
    for (k, a), (k2, b) in zip(net.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    meta = back.metadata
    assert meta["base_filters"] == 4 and meta["input_size"] == 256 and meta["orientation"] == "LPS"
    assert meta["window"] == {"center": 300.0, "width": 1500.0} and meta["threshold"] == 0.5
    assert meta["labels"][0]["name"] == "Femur" and meta["training"] == {"epochs": 2, "dice": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]          # no temporary left behind


def test_two_label_model_names_the_sides(tmp_path):
    back = load_model(save_model(UNet2D(out_channels=2, base_filters=4), tmp_path / "lr.pt"))
    assert [(l["value"], l["side"]) for l in back.metadata["labels"]] == [(1, "left"), (2, "right")]


def write_record(path, **changes):
    net = UNet2D(base_filters=4)
    meta = json.loads(torch.load(save_model(net, path), weights_only=True)["metadata"])
    record = {"format": FORMAT_NAME, "format_version": 1, "metadata": json.dumps(meta), "state_dict": net.state_dict()}
    for key, value in changes.items():
        if key.startswith("meta_"):
            meta[key[5:]] = value
            record["metadata"] = json.dumps(meta)
        else:
            record[key] = value
    torch.save(record, path)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "model file not found"),
    (lambda p: p.write_text("not a model") and p, "not a FemurUNet model file"),
    (lambda p: torch.save({"weights": torch.zeros(2)}, p) or p, "no 'femurunet-model' record"),
    (lambda p: write_record(p, format_version=99), "format version 99 is not supported"),
    (lambda p: write_record(p, meta_base_filters=8), "weights do not match a unet2d-seed with base_filters=8"),
    (lambda p: write_record(p, meta_architecture="resnet"), "unknown architecture 'resnet'"),
    (lambda p: write_record(p, meta_input_size=250), "not a multiple of 16"),
])
def test_bad_model_files_give_one_clear_line(tmp_path, make, message):
    path = make(tmp_path / "bad.pt")
    with pytest.raises(FemurUNetError) as err:
        load_model(path)
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_file(tmp_path):
    good = save_model(UNet2D(base_filters=4), tmp_path / "good.pt").read_bytes()
    bad = tmp_path / "cut.pt"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(FemurUNetError, match="truncated or corrupt"):
        load_model(bad)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickled_code_is_refused_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": FORMAT_NAME, "payload": RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(FemurUNetError, match="refused"):
        load_model(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_invalid_metadata_writes_nothing(tmp_path):
    with pytest.raises(FemurUNetError, match="output channels"):
        save_model(UNet2D(base_filters=4), tmp_path / "m.pt", labels=[])
    assert list(tmp_path.iterdir()) == []


def test_minimum_field_is_kept_and_checked(tmp_path):
    net = UNet2D(base_filters=4)
    assert load_model(save_model(net, tmp_path / "m.pt", min_field_mm=300.0)).metadata["min_field_mm"] == 300.0
    for bad in (-5, "300", 1e9):
        with pytest.raises(FemurUNetError, match=f"min_field_mm {bad!r} must be a number of mm, 0..2000"):
            save_model(net, tmp_path / "bad.pt", min_field_mm=bad)
    assert not (tmp_path / "bad.pt").exists()


def test_resolve_model_accepts_modules_and_paths(tmp_path):
    net = UNet2D(base_filters=4)
    assert resolve_model(net) is net and net.metadata["base_filters"] == 4
    assert resolve_model(save_model(net, tmp_path / "m.pt")).base_filters == 4
