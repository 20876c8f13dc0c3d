"""FemurUNetTrain/Scripts/set_min_field.py: the minimum field set, weights and other metadata kept, bad input refused."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "FemurUNetTrain" / "Scripts"))
import set_min_field as script  # noqa: E402

from FemurUNetLib.model import UNet2D  # noqa: E402
from FemurUNetLib.modelfile import load_model, save_model  # noqa: E402


def test_the_field_is_set_and_everything_else_kept(tmp_path, capsys):
    torch.manual_seed(1)
    model = save_model(UNet2D(1, 1, 4), tmp_path / "m.pt", training={"epoch": 3})
    assert script.main(["set_min_field.py", str(model), "300", str(tmp_path / "out.pt")]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'out.pt'}: minimum field of view 300 mm\n"
    before, after = load_model(model), load_model(tmp_path / "out.pt")
    assert after.metadata == {**before.metadata, "min_field_mm": 300.0}
    assert all(torch.equal(v, before.state_dict()[k]) for k, v in after.state_dict().items())


def test_bad_fields_and_files_are_one_line_errors_and_write_nothing(tmp_path, capsys):
    model = save_model(UNet2D(1, 1, 4), tmp_path / "m.pt")
    assert script.main(["set_min_field.py", str(model), "-3", str(tmp_path / "out.pt")]) == 1
    assert script.main(["set_min_field.py", str(model), "wide", str(tmp_path / "out.pt")]) == 1
    assert script.main(["set_min_field.py", str(tmp_path / "none.pt"), "300", str(tmp_path / "out.pt")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"set_min_field: {tmp_path / 'out.pt'}: min_field_mm -3.0 must be a number of mm, 0..2000",
                   "set_min_field: could not convert string to float: 'wide'",
                   f"set_min_field: {tmp_path / 'none.pt'}: model file not found"]
    assert not (tmp_path / "out.pt").exists()
