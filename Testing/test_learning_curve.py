"""The learning-curve script in its reduced form, and the phantom generator's fixed-scanner option it uses."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.model import UNet2D
from FemurUNetLib.modelfile import load_model, save_model
from FemurUNetLib.phantom2 import _streams, draw_scanner, generate_case, scanner_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "FemurUNetTrain" / "Scripts"))
import learning_curve  # noqa: E402

COARSE = dict(coverage="pelvis", spacing=(10.0, 10.0, 10.0))


def test_fixed_scanner_settings_change_the_ct_only():
    drawn = draw_scanner(_streams(3)[3])
    plain = generate_case(3, **COARSE)
    same = generate_case(3, **COARSE, scanner=drawn)          # the drawn values given back: the same bits
    noisy = generate_case(3, **COARSE, scanner={"noise": 300.0, "sharpen": 1.0})
    assert np.array_equal(plain.ct, same.ct) and np.array_equal(plain.label, same.label)
    assert np.array_equal(plain.label, noisy.label) and plain.geometry.spacing == noisy.geometry.spacing
    inside = plain.ct > -900
    assert np.std((noisy.ct.astype(float) - plain.ct)[inside]) > 100    # 300 HU noise vs 4..60 HU drawn


def test_scanner_settings_keep_the_draw_and_refuse_bad_keys():
    assert scanner_settings(_streams(5)[3], {"noise": 7}) == {**draw_scanner(_streams(5)[3]), "noise": 7.0}
    with pytest.raises(FemurUNetError, match="unknown scanner setting"):
        generate_case(1, **COARSE, scanner={"dose": 1})
    with pytest.raises(FemurUNetError, match=">= 0"):
        scanner_settings(_streams(1)[3], {"noise": -5})


@pytest.mark.slow     # a real export, three training arms and their evaluation
def test_reduced_learning_curve_end_to_end(tmp_path):
    torch.manual_seed(0)
    init = save_model(UNet2D(base_filters=2), tmp_path / "tiny.pt", input_size=32)   # small stand-in for the demo
    out = tmp_path / "lc"
    assert learning_curve.main([str(out), "--quick", "--init", str(init)]) == 0
    result = json.loads((out / "learning_curve.json").read_text())
    runs = {(r["arm"], r["cases"]): r for r in result["runs"]}
    assert set(runs) == {(arm, n) for arm in ("finetune", "scratch", "scratch_finetune_recipe") for n in (1, 2)}
    assert result["held_out"] == 2 and result["counts"] == [1, 2] and result["quick"]
    for r in [*runs.values(), result["init"]]:
        assert len(r["dice"]) == 2 and all(0.0 <= d <= 1.0 for d in r["dice"])
        assert r["dice_mean"] == pytest.approx(np.mean(r["dice"]), abs=1e-4)
    for n in (1, 2):
        exported = json.loads((out / "work" / f"train{n}" / "dataset.json").read_text())
        assert len(exported["cases"]) == n
        assert {runs[arm, n]["steps"] for arm in result["arms"]} == {2}
        for arm in ("scratch", "scratch_finetune_recipe"):
            meta = load_model(out / "work" / f"{arm}_{n}.pt").metadata
            assert meta["base_filters"] == 2 and meta["input_size"] == 32       # the same size as the start
            assert not meta["training"].get("init")
        tuned = load_model(out / "work" / f"scratch_finetune_recipe_{n}.pt").metadata["training"]
        assert tuned["lr"] == 1e-4 and "10 x mean binary" in tuned["loss_function"] and tuned["intensity"]["enabled"]
        assert load_model(out / "work" / f"finetune_{n}.pt").metadata["training"]["init"]
    png = (out / "learning_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
