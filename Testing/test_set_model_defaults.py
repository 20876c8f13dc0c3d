"""set_model_defaults.py: the defaults set, the weights and other metadata kept, bad input refused."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "FemurUNetTrain" / "Scripts"))
import set_model_defaults as script  # noqa: E402

from FemurUNetLib.model import UNet2D  # noqa: E402
from FemurUNetLib.modelfile import load_model, save_model  # noqa: E402


def test_the_defaults_are_set_and_everything_else_kept(tmp_path, capsys):
    torch.manual_seed(1)
    model = save_model(UNet2D(1, 1, 4), tmp_path / "m.pt", training={"epoch": 3})
    out = tmp_path / "out.pt"
    assert script.main(["set_model_defaults.py", str(model), str(out), "--min-field", "300", "--smooth-z", "3"]) == 0
    assert capsys.readouterr().out == (f"{out}: minimum field of view 300 mm\n"
                                       f"{out}: smoothing along the slice axis 3 mm\n")
    before, after = load_model(model), load_model(out)
    assert after.metadata == {**before.metadata, "min_field_mm": 300.0, "smooth_z_mm": 3.0}
    assert all(torch.equal(v, before.state_dict()[k]) for k, v in after.state_dict().items())
    assert script.main(["set_model_defaults.py", str(out), str(tmp_path / "again.pt"), "--smooth-z", "0"]) == 0
    assert load_model(tmp_path / "again.pt").metadata == {**after.metadata, "smooth_z_mm": 0.0}


@pytest.mark.parametrize("flags, error", [
    (["--min-field", "-3"], "argument --min-field: -3 is not a field of view of 0..2000 mm"),
    (["--smooth-z", "60"], "argument --smooth-z: 60 is not a sigma of 0..50 mm"),
    (["--smooth-z", "wide"], "argument --smooth-z: 'wide' is not a number"),
    ([], "name at least one of --min-field, --smooth-z")])
def test_bad_settings_are_one_line_usage_errors_and_write_nothing(tmp_path, capsys, flags, error):
    model = save_model(UNet2D(1, 1, 4), tmp_path / "m.pt")
    with pytest.raises(SystemExit) as exit_info:
        script.main(["set_model_defaults.py", str(model), str(tmp_path / "out.pt"), *flags])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"set_model_defaults.py: error: {error}"
    assert not (tmp_path / "out.pt").exists()


def test_a_missing_model_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    assert script.main(["set_model_defaults.py", str(tmp_path / "none.pt"), str(tmp_path / "out.pt"),
                        "--smooth-z", "3"]) == 1
    assert capsys.readouterr().err == f"set_model_defaults: {tmp_path / 'none.pt'}: model file not found\n"
    assert not (tmp_path / "out.pt").exists()
