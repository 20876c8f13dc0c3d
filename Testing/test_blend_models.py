"""FemurUNetTrain/Scripts/blend_models.py: weights w x tuned + (1 - w) x start, the blend recorded, bad input refused."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "FemurUNetTrain" / "Scripts"))
import blend_models as script  # noqa: E402

from FemurUNetLib.model import UNet2D  # noqa: E402
from FemurUNetLib.modelfile import load_model, save_model  # noqa: E402


def _saved(path, base, seed, **meta):
    torch.manual_seed(seed)
    return save_model(UNet2D(1, 1, base), path, **meta)


def test_every_weight_is_the_weighted_mean_and_the_blend_is_recorded(tmp_path):
    tuned = _saved(tmp_path / "tuned.pt", 4, 1, training={"epoch": 3})
    start = _saved(tmp_path / "start.pt", 4, 2)
    assert script.main(["blend_models.py", "0.25", str(tuned), str(start), str(tmp_path / "out.pt")]) == 0
    a, b, out = (load_model(p) for p in (tuned, start, tmp_path / "out.pt"))
    for key, value in out.state_dict().items():
        if value.is_floating_point():
            expected = 0.25 * a.state_dict()[key].double() + 0.75 * b.state_dict()[key].double()
            torch.testing.assert_close(value, expected.float(), rtol=0, atol=1e-7)
    first = next(k for k, v in out.state_dict().items() if v.is_floating_point())
    assert not torch.equal(out.state_dict()[first], a.state_dict()[first])
    assert out.metadata["blend"] == {"weight": 0.25, "tuned": "tuned.pt", "start": "start.pt"}
    assert out.metadata["training"] == {"epoch": 3}


def test_other_widths_and_bad_weights_are_one_line_errors(tmp_path, capsys):
    tuned, other = _saved(tmp_path / "a.pt", 4, 1), _saved(tmp_path / "b.pt", 8, 1)
    assert script.main(["blend_models.py", "0.5", str(tuned), str(other), str(tmp_path / "out.pt")]) == 1
    assert script.main(["blend_models.py", "1.5", str(tuned), str(tuned), str(tmp_path / "out.pt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "b.pt: not the same network as" in err[0] and "must lie in 0..1" in err[1]
    assert not (tmp_path / "out.pt").exists()
    assert script.main(["blend_models.py"]) == 2                          # usage
