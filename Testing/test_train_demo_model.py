"""Regression test of the shipped demo model: its Dice on fresh phantoms (seeds never used in training)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from FemurUNetLib import segment_volume
from FemurUNetLib.evaluate import dice
from FemurUNetLib.modelfile import DEFAULT_MODEL_PATH, load_model
from FemurUNetLib.phantom import generate_case
from FemurUNetLib.volume_io import read_volume

TRAINING_SEEDS = range(1000, 1044)          # train 1000-1039, validation 1040-1043
FRESH_SEEDS = (9100, 9102, 9109)            # outside training and README's 9000-9009; 9109 has arms beside the trunk
MIN_DICE = 0.975                            # bce-3 model: 0.983, 0.985, 0.980 (README: 0.986 on 9000-9009)
MAX_FEMUR_FREE_FRACTION = 0.0005            # issue #3's goal (< 0.05 % of the voxels); measured 0.0045 %


def test_demo_model_file_is_the_documented_one():
    assert DEFAULT_MODEL_PATH.is_file(), f"{DEFAULT_MODEL_PATH} is missing (see FemurUNetTrain/Scripts/train_demo_model.sh)"
    assert DEFAULT_MODEL_PATH.stat().st_size < 35e6
    meta = load_model(DEFAULT_MODEL_PATH).metadata
    assert meta["base_filters"] == 16 and meta["input_size"] == 256 and meta["orientation"] == "LPS"
    assert meta["window"] == {"center": 400.0, "width": 2000.0}
    t = meta["training"]
    assert t["cases"] == [f"phantom{s}" for s in range(1000, 1040)]
    assert t["val_cases"] == [f"phantom{s}" for s in range(1040, 1044)]
    assert t["init_training"]["cases"] == t["cases"] and t["init_training"]["val_cases"] == t["val_cases"]
    assert not set(FRESH_SEEDS) & set(TRAINING_SEEDS)


def _check_run(t: dict, flags: dict) -> None:
    assert t["epochs"] == int(flags["epochs"]) and 1 <= t["epoch"] <= t["epochs"]   # the best epoch of that run
    assert t["steps_per_epoch"] == int(flags["steps-per-epoch"]) and t["batch_size"] == int(flags["batch-size"])
    assert t["lr"] == float(flags["lr"]) and t["lr_schedule"] == flags["lr-schedule"]
    assert t.get("warmup_epochs", 0) == int(flags.get("warmup-epochs", 0))
    assert t["seed"] == int(flags["seed"]) and t["amp"] == {"bf16": "bfloat16"}[flags["amp"]]
    bce = f" + {float(flags['bce-weight']):g} x mean binary cross-entropy" if "bce-weight" in flags else ""
    assert t["loss_function"] == "1 - Dice (smooth 1, flattened batch)" + bce


def test_demo_model_was_trained_with_the_reproduction_scripts_two_stages():
    script = (Path(__file__).resolve().parents[1] / "FemurUNetTrain" / "Scripts" / "train_demo_model.sh").read_text()
    stage1, stage2 = (dict(re.findall(r"--([a-z-]+) ([0-9.e-]+|[a-z0-9]+)\b", part))
                      for part in script.split("femurunet train")[1:])
    meta = load_model(DEFAULT_MODEL_PATH).metadata
    t = meta["training"]
    _check_run(t, stage2)                                   # the shipped file: stage 2, fine-tuned from stage 1
    assert t["init"].endswith("femurunet_demo_b16_stage1.pt")
    _check_run(t["init_training"], stage1)
    assert meta["base_filters"] == int(stage1["base-filters"])


@pytest.mark.parametrize("seed", FRESH_SEEDS)
def test_demo_model_dice_on_fresh_phantoms(seed):
    case = generate_case(seed)
    pred = segment_volume(case.ct, case.geometry, None, device="cpu").labelmap
    assert set(np.unique(pred)) <= {0, 1}
    assert dice(pred > 0, case.label > 0) >= MIN_DICE


def test_demo_model_predicts_almost_no_femur_in_a_femur_free_real_ct(real_ct):
    ct, geometry = read_volume(real_ct / "abdomen_dicom")           # upper abdomen: spine, ribs, both upper arms
    pred = segment_volume(ct, geometry, None, device="cpu").labelmap
    assert np.count_nonzero(pred) / pred.size < MAX_FEMUR_FREE_FRACTION
