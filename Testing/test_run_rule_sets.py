"""FemurUNetTrain/Scripts/run_rule_sets.py: a candidate on stored rule sets by their commands, then compared with
the stored rows; picked by words, each set made once, rows of another model refused."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "FemurUNetTrain" / "Scripts"))
import evaluate_demo_model  # noqa: E402
import run_rule_sets as script  # noqa: E402

from FemurUNetLib.paths import DEFAULT_MODEL_PATH  # noqa: E402
from test_evaluate_demo_model import coarse_cases  # noqa: E402,F401  (seeds 1 and 2 on 5 mm grids)

@pytest.fixture
def stored(tmp_path, coarse_cases):
    """A rule-sets file with the shipped model's rows of two sets, as docs/benchmarks keeps them."""
    sets = {}
    for name, command in (("pelvis set (session 1)", "--seeds 1"), ("chest set (session 2)", "--seeds 2")):
        rows = tmp_path / "rows.json"
        evaluate_demo_model.main([str(DEFAULT_MODEL_PATH), "--no-real", *command.split(), "--json", str(rows)])
        sets[name] = {"command": command, "rows": json.loads(rows.read_text())["phantoms"]}
    path = tmp_path / "stored.json"
    path.write_text(json.dumps({"model": "the shipped model", "sets": sets}))
    coarse_cases.clear()
    return path


def test_picked_sets_run_once_and_compare_with_the_stored_rows(tmp_path, stored, coarse_cases, capsys):
    out = tmp_path / "out"
    candidate = tmp_path / "candidate.pt"
    shutil.copy(DEFAULT_MODEL_PATH, candidate)
    assert script.main([str(stored), str(candidate), "--sets", "chest", "pelvis", "--out", str(out)]) == 0
    assert coarse_cases == [2, 1]
    assert sorted(p.name for p in out.iterdir()) == ["chest_set_session_2.json", "pelvis_set_session_1.json"]
    lines = capsys.readouterr().out.splitlines()
    at = lines.index(f"{candidate} against the shipped model")
    assert lines[at + 1].startswith("  chest set (session 2): 1 femur-free cases, false positives")
    assert lines[at + 2].startswith("  pelvis set (session 1): 1 cases, Dice") and "(+0.0000)" in lines[at + 2]
    assert len(lines) == at + 3
    assert script.main([str(stored), str(candidate), "--out", str(out)]) == 0    # both there: none made again
    assert coarse_cases == [2, 1] and "pelvis set (session 1): 1 cases" in capsys.readouterr().out


def test_bad_picks_and_rows_of_another_model_are_refused_before_any_work(tmp_path, stored, coarse_cases):
    with pytest.raises(SystemExit, match=r"--sets 'set' matches 2 sets; the stored ones: pelvis set \(session 1\); "):
        script.main([str(stored), str(DEFAULT_MODEL_PATH), "--sets", "set", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match=r"--sets 'knee' matches 0 sets"):
        script.main([str(stored), str(DEFAULT_MODEL_PATH), "--sets", "knee", "--out", str(tmp_path / "a")])
    assert coarse_cases == []
    out = tmp_path / "out"
    out.mkdir()
    (out / "pelvis_set_session_1.json").write_text(json.dumps({"model": "other.pt", "phantoms": []}))
    with pytest.raises(SystemExit, match=r"pelvis_set_session_1.json: rows of model other.pt, not "):
        script.main([str(stored), str(DEFAULT_MODEL_PATH), "--sets", "pelvis", "--out", str(out)])
    assert coarse_cases == []
    (out / "pelvis_set_session_1.json").write_text("{cut")
    with pytest.raises(SystemExit, match=r"pelvis_set_session_1.json: not JSON"):
        script.main([str(stored), str(DEFAULT_MODEL_PATH), "--sets", "pelvis", "--out", str(out)])
    (tmp_path / "plain.json").write_text(json.dumps({"sets": {"x": {"rows": []}}}))
    with pytest.raises(SystemExit, match=r"plain.json: no sets with their commands"):
        script.main([str(tmp_path / "plain.json"), str(DEFAULT_MODEL_PATH)])


def test_segment_options_are_passed_on_to_each_set(tmp_path, stored, coarse_cases, monkeypatch):
    asked = []
    monkeypatch.setattr(evaluate_demo_model, "main", lambda argv: asked.append(argv) or
                        Path(argv[argv.index("--json") + 1]).write_text(json.dumps({"model": argv[0], "phantoms": []})))
    script.main([str(stored), "m.pt", "--sets", "pelvis", "--mirror", "--device", "cuda", "--out", str(tmp_path / "o")])
    assert asked == [["m.pt", "--no-real", "--seeds", "1", "--mirror", "--device", "cuda", "--json",
                      str(tmp_path / "o" / "pelvis_set_session_1.json")]]
