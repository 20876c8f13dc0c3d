"""FemurUNetTrain/Scripts/compare_to_rows.py: a candidate's phantom rows against stored rows of the same seeds."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "FemurUNetTrain" / "Scripts"))
import compare_to_rows as script  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STORED_SETS = REPO / "docs" / "benchmarks" / "2026-12-06_run17_smooth_rule_sets_s46.json"  # the shipped pipeline
SHIPPED_EVAL = REPO / "FemurUNet" / "FemurUNetLib" / "models" / "femurunet_demo_b16.eval.json"


def row(seed, dice, fp=1.0, off=0.0, shape=(10, 20, 20), hips="atlas"):
    return {"seed": seed, "dice": dice, "false_positive_ml": fp, "off_femur_ml": off, "shape": list(shape),
            "hips": hips}


def write(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def test_each_stored_set_is_compared_only_on_the_same_cases(tmp_path, capsys):
    stored = write(tmp_path / "sets.json", {"model": "old", "sets": {
        "a": {"rows": [row(1, 0.90, fp=5.0), row(2, 0.96), {"seed": 3, "false_positive_ml": 0.5}]},
        "b": {"rows": [row(1, 0.90), row(4, 0.95)]},
        "c": {"rows": [row(2, 0.96, shape=(5, 20, 20))]},
        "d": {"rows": [row(1, 0.90, hips="mri2psm")]},
        "e": {"rows": [{**row(2, 0.97), "foot_ml": 4.0}, row(1, 0.90)]},
        "f": {"rows": [{"seed": 3, "false_positive_ml": 0.5, "foot_ml": 0.25}]}}})
    new = write(tmp_path / "new.json", {"model": "cand.pt", "phantoms": [
        row(1, 0.94, fp=2.0, off=1.5), {**row(2, 0.95), "foot_ml": 0.5}, {"seed": 3, "false_positive_ml": 0.2}]})
    assert script.main([stored, new]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "cand.pt against old"
    assert lines[1] == ("  a: 3 cases, Dice 0.9300 -> 0.9450 (+0.0150), min 0.900 -> 0.940, largest false positives "
                        "5.0 -> 2.0 ml, off the femur 0.0 -> 1.5 ml, in the feet n/a -> 0.5 ml; lowest changes: 2 -0.010, "
                        "1 +0.040")
    assert lines[2] == "  b: not covered (1 of 2 seeds missing, e.g. 4)"
    assert lines[3] == ("  c: different cases (seed 2: shape [5, 20, 20] stored, [10, 20, 20] new; another grid, "
                        "--hips, --oa or --tha option, or phantom code?)")
    assert lines[4] == ("  d: different cases (seed 1: hips mri2psm stored, atlas new; another grid, --hips, --oa "
                        "or --tha option, or phantom code?)")
    assert lines[5] == ("  e: 2 cases, Dice 0.9350 -> 0.9450 (+0.0100), min 0.900 -> 0.940, largest false positives "
                        "1.0 -> 2.0 ml, off the femur 0.0 -> 1.5 ml, in the feet 4.0 -> 0.5 ml; lowest changes: 2 -0.020, "
                        "1 +0.040")
    assert lines[6] == ("  f: 1 femur-free cases, false positives 0.5 -> 0.2 ml (largest 0.5 -> 0.2), in the feet "
                        "0.2 -> n/a ml")


def test_sets_of_the_same_seeds_with_other_hips_are_each_compared_with_their_own_rows(tmp_path, capsys):
    stored = write(tmp_path / "sets.json", {"model": "old", "sets": {
        "mri": {"rows": [row(1, 0.90, hips="mri2psm"), row(2, 0.92, hips="mri2psm")]},
        "atlas": {"rows": [row(1, 0.95), row(2, 0.97)]}}})
    mri = write(tmp_path / "mri.json", {"model": "cand.pt", "phantoms": [row(1, 0.91, hips="mri2psm"),
                                                                          row(2, 0.94, hips="mri2psm")]})
    atlas = write(tmp_path / "atlas.json", {"model": "cand.pt", "phantoms": [row(1, 0.96), row(2, 0.96)]})
    assert script.main([stored, mri, atlas]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("  mri: 2 cases, Dice 0.9100 -> 0.9250 (+0.0150)")
    assert lines[2].startswith("  atlas: 2 cases, Dice 0.9600 -> 0.9600 (+0.0000)")
    again = write(tmp_path / "again.json", {"model": "cand.pt", "phantoms": [row(1, 0.99), row(2, 0.99)]})
    assert script.main([stored, atlas, again]) == 0            # the same case twice: the later file's row
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("  mri: different cases (seed 1: hips mri2psm stored, atlas new")
    assert lines[2].startswith("  atlas: 2 cases, Dice 0.9600 -> 0.9900 (+0.0300)")


def test_osteoarthritic_hips_are_another_case_and_rows_before_the_key_had_none(tmp_path, capsys):
    stored = write(tmp_path / "sets.json", {"model": "old", "sets": {
        "plain": {"rows": [row(1, 0.95), row(2, 0.97)]},                            # written before "oa" existed
        "oa": {"rows": [{**row(1, 0.90), "oa": True}, {**row(2, 0.92), "oa": True}]}}})
    plain = write(tmp_path / "plain.json", {"model": "cand.pt", "phantoms": [{**row(1, 0.96), "oa": False},
                                                                              {**row(2, 0.96), "oa": False}]})
    assert script.main([stored, plain]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("  plain: 2 cases, Dice 0.9600 -> 0.9600 (+0.0000)")
    assert lines[2].startswith("  oa: different cases (seed 1: oa True stored, False new; another grid, --hips,")
    oa = write(tmp_path / "oa.json", {"model": "cand.pt", "phantoms": [{**row(1, 0.93), "oa": True},
                                                                        {**row(2, 0.93), "oa": True}]})
    assert script.main([stored, plain, oa]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("  plain: 2 cases, Dice 0.9600 -> 0.9600") and lines[2].startswith(
        "  oa: 2 cases, Dice 0.9100 -> 0.9300 (+0.0200)")


def test_a_hip_arthroplasty_is_another_case(tmp_path, capsys):
    stored = write(tmp_path / "sets.json", {"model": "old", "sets": {
        "plain": {"rows": [row(1, 0.95)]}, "tha": {"rows": [{**row(1, 0.90), "tha": True}]}}})
    new = write(tmp_path / "new.json", {"model": "cand.pt", "phantoms": [{**row(1, 0.96), "tha": False}]})
    assert script.main([stored, new]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("  plain: 1 cases, Dice 0.9500 -> 0.9600") and lines[2].startswith(
        "  tha: different cases (seed 1: tha True stored, False new;")


def test_the_stored_model_against_its_own_rows_moves_nothing(tmp_path, capsys):
    sets = json.loads(STORED_SETS.read_text())
    rows = sets["sets"]["hip stress"]["rows"]
    new = write(tmp_path / "same.json", {"runs": [{"model": "again", "phantoms": rows}]})
    assert script.main([str(STORED_SETS), new]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("  hip stress:"))
    assert f"Dice {sets['sets']['hip stress']['dice_mean']:.4f} -> " in line and "(+0.0000)" in line


def test_the_stored_held_out_rows_are_the_shipped_models_evaluation():
    stored = json.loads(STORED_SETS.read_text())["sets"]["held-out 90000-90039"]["rows"]
    shipped = json.loads(SHIPPED_EVAL.read_text())["phantoms"]
    assert [r["seed"] for r in stored] == [r["seed"] for r in shipped] == list(range(90000, 90040))
    for a, b in zip(stored, shipped):
        assert (a.get("dice"), a["false_positive_ml"], a["shape"], a["hips"]) == \
               (b.get("dice"), b["false_positive_ml"], b["shape"], b["hips"])


@pytest.mark.parametrize("content, problem", [(None, "file not found"), ("{", "not JSON"),
                                              ('{"model": "m"}', "no phantom rows")])
def test_bad_files_are_one_line_errors(tmp_path, content, problem):
    new = tmp_path / "new.json"
    if content is not None:
        new.write_text(content)
    with pytest.raises(SystemExit) as done:
        script.main([str(STORED_SETS), str(new)])
    assert str(done.value).startswith(f"compare_to_rows.py: error: {new}: {problem}")
    assert "\n" not in str(done.value)


def test_a_stored_file_without_sets_is_a_one_line_error(tmp_path):
    stored = write(tmp_path / "eval.json", {"model": "m", "phantoms": []})
    with pytest.raises(SystemExit) as done:
        script.main([stored, stored])
    assert str(done.value) == f'compare_to_rows.py: error: {stored}: no "sets" (a stored rule-sets file?)'


def test_a_figure_the_stored_rows_lack_is_not_made_up(tmp_path, capsys):
    stored = write(tmp_path / "sets.json", {"model": "old", "sets": {"a": {"rows": [
        {"seed": 1, "dice": 0.9, "false_positive_ml": 2.0}]}}})
    new = write(tmp_path / "new.json", {"model": "cand.pt", "phantoms": [row(1, 0.92, off=3.0)]})
    assert script.main([stored, new]) == 0
    assert "off the femur n/a -> 3.0 ml" in capsys.readouterr().out
