"""FemurUNetTrainLib.gate_train: phantom scans in the gate's 4 mm view, crops that keep levels and targets
together, and a short training run that writes a gate file the engine reads."""
import json

import numpy as np
import pytest
import torch

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.gate import AIR_HU, BODY_HU, GATE_SIZE, LevelGate, load_gate
from FemurUNetTrainLib import gate_train
import argparse

from FemurUNetTrainLib.gate_train import (CIRCLE_CUT_CHANCE, FIELD_CUT, FIELD_CUT_CHANCE, MIN_LEVELS, augment,
                                          cut_circle, cut_field, level_loss, load_cases, make_cases, mix_option,
                                          train_gate)


def labelled_levels(levels=40):
    """A gate volume whose level i holds a 'bone' of 200 + 100 i HU in a body of 40 HU; femur on every third level."""
    volume = np.full((levels, GATE_SIZE, GATE_SIZE), -1000, np.int16)
    volume[:, 40:80, 40:80] = 40
    volume[:, 50:70, 50:70] = (200 + 100 * np.arange(levels))[:, None, None]
    return volume, (np.arange(levels) % 3 == 0).astype(np.float32)


def test_augment_crops_runs_of_levels_with_their_targets_and_keeps_air_as_air():
    volume, targets = labelled_levels()
    rng = np.random.default_rng(0)
    lengths = []
    for _ in range(200):
        v, t = augment(volume, targets, rng)
        bone = np.percentile(v.reshape(len(v), -1), 99, axis=1)         # inside the bone block
        scale = (bone[-1] - bone[0]) / (100 * (len(v) - 1))              # HU x 0.9-1.1, the same on every level
        first = int(round((bone[0] / scale - 200) / 100))                # the offset (<= 40 HU) rounds away
        lengths.append(len(t))
        assert MIN_LEVELS <= len(t) <= 40 and len(v) == len(t)
        assert np.array_equal(t, targets[first:first + len(t)])          # the crop's targets are its levels'
        assert np.all(v[:, 0, 0] <= -900 + 80)                           # air: noise only, no HU scaling
    lengths = np.array(lengths)
    assert 0.3 < np.mean(lengths == 40) < 0.55 and lengths.min() < 15   # ~40 % whole (0.4 + crops of all 40)


def test_a_field_edge_takes_up_to_30_percent_of_the_body_off_one_side_the_same_on_every_level(monkeypatch):
    volume, targets = labelled_levels()
    body = volume > BODY_HU
    rng = np.random.default_rng(1)
    shares = []
    for _ in range(300):
        cut = cut_field(volume.astype(np.float32), rng)
        gone = body & (cut == AIR_HU)
        assert np.array_equal(gone, np.broadcast_to(gone[:1], gone.shape))          # one field for the whole scan
        assert np.array_equal(cut[~gone], volume[~gone])                            # the rest as it was
        shares.append(gone[0].sum() / body[0].sum())
    shares = np.array(shares)
    assert shares.max() <= FIELD_CUT + 0.03 and np.mean(shares > 0.2) > 0.05     # corners: area < extent cut
    assert 0.05 < shares.mean() < FIELD_CUT / 2                 # an extent share of 0-0.3: at most 0.15 of the area
    monkeypatch.setattr(gate_train, "CIRCLE_CUT_CHANCE", 0.0)
    cut_scans = [(augment(volume, targets, rng)[0][0] > -500).sum() < body[0].sum() for _ in range(400)]
    assert abs(np.mean(cut_scans) - FIELD_CUT_CHANCE) < 0.07


def test_a_field_circle_cuts_both_sides_but_never_the_middle_the_same_on_every_level(monkeypatch):
    volume, targets = labelled_levels()
    body = volume > BODY_HU
    rng = np.random.default_rng(2)
    both_sides = 0
    for _ in range(300):
        cut = cut_circle(volume.astype(np.float32), rng)
        gone = body & (cut == AIR_HU)
        assert np.array_equal(gone, np.broadcast_to(gone[:1], gone.shape))          # one field for the whole scan
        assert np.array_equal(cut[~gone], volume[~gone]) and gone.any()             # the body always reaches out
        assert not gone[:, 50:70, 50:70].any()                                      # the middle always stays
        both_sides += bool(gone[0, 60, 40] and gone[0, 60, 79])
    assert 30 < both_sides < 270                                                # small circles cut left and right
    monkeypatch.setattr(gate_train, "FIELD_CUT_CHANCE", 0.0)
    cut_scans = [(augment(volume, targets, rng)[0][0] > -500).sum() < body[0].sum() for _ in range(600)]
    assert abs(np.mean(cut_scans) - CIRCLE_CUT_CHANCE) < 0.05


def test_a_coverage_mix_is_read_from_name_weight_pairs_and_bad_ones_are_named():
    assert mix_option("lower_leg=4, knee_to_ankle=3") == {"lower_leg": 4.0, "knee_to_ankle": 3.0}
    for text, why in (("lower_leg", "name=weight pairs"), ("shin=2", "unknown: shin"), ("pelvis=0", "not all 0"),
                      ("pelvis=-1", "weights >= 0")):
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            mix_option(text)


def test_a_missed_femur_level_costs_the_positive_weight_times_a_false_one():
    logits, miss = torch.tensor([-2.0, 2.0]), torch.tensor([1.0, 0.0])
    plain = float(torch.nn.functional.softplus(torch.tensor(2.0)))        # -log(sigmoid(-2))
    assert float(level_loss(logits, miss, 3.0)) == pytest.approx((3 * plain + plain) / 2)
    assert float(level_loss(logits, miss, 1.0)) == pytest.approx(plain)


@pytest.mark.slow
def test_a_phantom_scan_made_resumably_and_read_back(tmp_path):
    assert make_cases(tmp_path / "d", [600002], jobs=1) == 1              # a lower leg: no femur level
    (volume, targets, coverage), = load_cases(tmp_path / "d")
    assert coverage == "lower_leg" and volume.shape[1:] == (GATE_SIZE, GATE_SIZE) and not targets.any()
    stamp = (tmp_path / "d" / "600002.npz").stat().st_mtime_ns
    assert make_cases(tmp_path / "d", [600002], jobs=1) == 1
    assert (tmp_path / "d" / "600002.npz").stat().st_mtime_ns == stamp and not list((tmp_path / "d").glob("*part*"))
    assert make_cases(tmp_path / "m", [600003], jobs=1, mix={"chest": 1.0}) == 1   # the mix draws every coverage
    assert str(np.load(tmp_path / "m" / "600003.npz")["coverage"]) == "chest"
    with pytest.raises(FemurUNetError, match=r"empty: no gate scans"):
        load_cases(tmp_path / "empty")


def test_a_short_training_run_writes_a_gate_the_engine_loads(tmp_path):
    for folder, levels in (("train", 30), ("val", 20)):
        (tmp_path / folder).mkdir()
        volume, targets = labelled_levels(levels)
        np.savez_compressed(tmp_path / folder / "1.npz", vol=volume, target=targets > 0, coverage="pelvis")
    log = train_gate(tmp_path / "train", tmp_path / "val", tmp_path / "g.pt", minutes=10, max_steps=4,
                     validate_every=2, threads=1)
    assert [r["step"] for r in log] == [2, 4] and all(np.isfinite(r["loss"]) for r in log)
    gate = load_gate(tmp_path / "g.pt")
    assert isinstance(gate, LevelGate) and gate.training_record["step"] in (2, 4)
    assert gate.training_record["positive_weight"] == 3.0 and all(r["bce"] < r["loss"] for r in log)
    assert json.loads((tmp_path / "g.pt.log.json").read_text()) == log and gate.training_record["init"] is None
    again = train_gate(tmp_path / "train", tmp_path / "val", tmp_path / "g2.pt", minutes=10, max_steps=2,
                       validate_every=2, threads=1, init=tmp_path / "g.pt")
    assert load_gate(tmp_path / "g2.pt").training_record["init"] == "g.pt" and len(again) == 1


def test_the_command_line_names_a_missing_folder(capsys, tmp_path):
    assert gate_train.main(["train", str(tmp_path / "none"), str(tmp_path), "--out", str(tmp_path / "g.pt")]) == 2
    assert capsys.readouterr().err.strip().endswith("none: no gate scans (make them with 'gate_train make')")
