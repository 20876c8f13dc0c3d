"""FemurUNetTrain/Scripts/evaluate_gate.py: a gate's lowest P on femur slices and the labels it removes, per scan."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "FemurUNetTrain" / "Scripts"))
import evaluate_gate as script  # noqa: E402

from FemurUNetLib.gate import LevelGate, save_gate  # noqa: E402
from test_evaluate_demo_model import coarse_cases  # noqa: E402,F401  (seeds 1: pelvis, 2: chest, on 5 mm grids)


def constant_gate(path, logit):
    gate = LevelGate()
    with torch.no_grad():
        for p in gate.parameters():
            p.zero_()
        gate.head.bias.fill_(logit)
    save_gate(gate, path, {})
    return path


@pytest.mark.slow
def test_rows_name_the_lowest_p_on_femur_and_the_labels_each_threshold_leaves(tmp_path, coarse_cases, capsys):
    nowhere = constant_gate(tmp_path / "low.pt", -3.0)            # P = 0.047 on every level
    out = tmp_path / "g.json"
    assert script.main([str(nowhere), "--seeds", "1-2", "--segment", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    pelvis, chest = result["rows"]
    assert pelvis["coverage"] == "pelvis" and pelvis["femur_slices"] > 0 and chest["femur_slices"] == 0
    assert abs(pelvis["lowest_p_on_femur"] - 0.0474) < 1e-3 and chest["lowest_p_on_femur"] is None
    assert abs(pelvis["highest_p"] - 0.0474) < 1e-3 and abs(chest["highest_p"] - 0.0474) < 1e-3
    assert pelvis["labelled_ml"] > 50
    assert pelvis["after_gate_ml"]["0.02"] == pelvis["labelled_ml"] and pelvis["after_gate_ml"]["0.05"] == 0
    assert pelvis["femur_removed_ml"]["0.02"] == 0 and 0.8 * pelvis["labelled_ml"] < pelvis["femur_removed_ml"]["0.05"]
    assert pelvis["femur_removed_ml"]["0.05"] <= pelvis["labelled_ml"] and chest["femur_removed_ml"]["0.3"] == 0
    assert 0 <= pelvis["off_femur_ml"] < pelvis["labelled_ml"] and pelvis["off_femur_after_ml"]["0.05"] == 0
    assert chest["off_femur_ml"] == chest["labelled_ml"] == chest["off_femur_after_ml"]["0.02"]   # no truth: all off
    assert result["summary"]["lowest_p_on_femur"] == {"p": pelvis["lowest_p_on_femur"], "seed": 1}
    assert result["summary"]["after_gate_ml"]["0.3"] == 0 and result["gate"] == "low.pt"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result["summary"]


def test_several_gates_score_each_scan_made_once(tmp_path, coarse_cases, capsys):
    low, high = constant_gate(tmp_path / "low.pt", -3.0), constant_gate(tmp_path / "high.pt", 3.0)
    out = tmp_path / "g.json"
    assert script.main([str(low), str(high), "--seeds", "1-2", "--json", str(out)]) == 0
    assert coarse_cases == [1, 2]                                   # each scan made once for both gates
    result = json.loads(out.read_text())
    assert list(result["gates"]) == ["low.pt", "high.pt"] and "rows" not in result
    low_rows, high_rows = result["gates"]["low.pt"]["rows"], result["gates"]["high.pt"]["rows"]
    assert [r["seed"] for r in low_rows] == [r["seed"] for r in high_rows] == [1, 2]
    assert abs(low_rows[0]["highest_p"] - 0.0474) < 1e-3 and abs(high_rows[0]["highest_p"] - 0.9526) < 1e-3
    assert low_rows[0]["femur_slices"] == high_rows[0]["femur_slices"] > 0 and "labelled_ml" not in low_rows[0]
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(line["gate"], line["seed"]) for line in lines[:-1]] == [("low.pt", 1), ("high.pt", 1), ("low.pt", 2),
                                                                     ("high.pt", 2)]
    assert lines[-1] == {name: g["summary"] for name, g in result["gates"].items()}


def test_gates_sharing_a_file_name_are_named_by_path_and_one_named_twice_is_refused(tmp_path, coarse_cases, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = constant_gate(tmp_path / "a" / "g.pt", -3.0), constant_gate(tmp_path / "b" / "g.pt", 3.0)
    out = tmp_path / "g.json"
    assert script.main([str(first), str(second), "--seeds", "2", "--json", str(out)]) == 0
    assert list(json.loads(out.read_text())["gates"]) == [str(first), str(second)]
    assert script.main([str(first), str(first), "--seeds", "2"]) == 2
    assert capsys.readouterr().err.strip() == "evaluate_gate.py: error: a gate file is named twice"
    assert coarse_cases == [2]                                      # the refused run made nothing


def test_a_file_that_is_not_a_gate_is_one_line(tmp_path, capsys):
    torch.save({"weights": 1}, tmp_path / "model.pt")
    assert script.main([str(tmp_path / "model.pt"), "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"evaluate_gate.py: error: {tmp_path / 'model.pt'}: not a FemurUNet level gate file"
