"""The script behind README's accuracy figures (FemurUNetTrain/Scripts/evaluate_demo_model.py): rows against the
exact truth, several models on the same cases, seed lists."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "FemurUNetTrain" / "Scripts"))
import evaluate_demo_model as script  # noqa: E402

from FemurUNetLib.paths import DEFAULT_MODEL_PATH  # noqa: E402
from FemurUNetLib.phantom2 import generate_case, make_scene  # noqa: E402
from FemurUNetTrainLib.options import seed_list  # noqa: E402

COVERAGE = {1: "pelvis", 2: "chest"}


@pytest.fixture
def coarse_cases(monkeypatch):
    """Seeds 1 (a pelvis) and 2 (a femur-free chest) on 5 mm grids; counts how often each case is made."""
    made = []

    def make(seed, phantom, tissue=None, coarse=False, hips=None, coverage=None, oa=False, tha=False):
        made.append((seed, tissue) if tissue else (seed, "coarse") if coarse else (seed, hips) if hips else
                    (seed, coverage) if coverage else (seed, "oa") if oa else (seed, "tha") if tha else seed)
        return generate_case(seed, spacing=(5.0, 5.0, 5.0), coverage=coverage or COVERAGE[seed], tissue=tissue,
                             hips=hips, oa=oa, tha=tha)
    monkeypatch.setattr(script, "make_phantom", make)
    return made


def test_one_model_gives_rows_against_the_truth_and_a_summary(tmp_path, coarse_cases):
    out = tmp_path / "eval.json"
    assert script.main(["--seeds", "1-2", "--no-real", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "default" and [r["seed"] for r in result["phantoms"]] == [1, 2]
    pelvis, chest = result["phantoms"]
    assert pelvis["coverage"] == "pelvis" and 0.7 < pelvis["dice"] <= 1 and pelvis["truth_ml"] > 50
    assert chest["coverage"] == "chest" and "dice" not in chest and chest["false_positive_ml"] >= 0
    summary = result["phantom_summary"]
    assert summary["cases"] == 2 and summary["cases_with_femur"] == 1 and summary["dice_mean"] == pelvis["dice"]
    assert summary["femur_free_false_positive_ml_max"] == chest["false_positive_ml"]
    assert 0 <= pelvis["off_femur_ml"] <= pelvis["false_positive_ml"]
    assert summary["off_femur_ml_max"] == pelvis["off_femur_ml"]
    assert pelvis["femurs"] == "atlas" and summary["dice_mean_atlas_femurs"] == pelvis["dice"]


def test_the_summary_splits_dice_by_whose_femurs_the_case_has():
    rows = [{"coverage": "pelvis", "femurs": f, "dice": d, "hd95_mm": 2.0, "off_femur_ml": 0.0, "false_positive_ml": 1.0}
            for f, d in (("atlas", 0.9), ("m3", 0.8), ("m7", 0.7), ("atlas", 0.95))]
    summary = script.phantom_summary(rows + [{"coverage": "chest", "femurs": "m4", "false_positive_ml": 0.5}])
    assert summary["dice_mean_atlas_femurs"] == pytest.approx(0.925)
    assert summary["dice_mean_libhip_femurs"] == pytest.approx(0.75)
    assert summary["femur_free_false_positive_ml_max"] == 0.5


def test_a_summary_of_femur_free_cases_only_has_their_false_positives():
    free = [{"coverage": "lower_leg", "femurs": "m4", "false_positive_ml": v} for v in (0.5, 3.5)]
    summary = script.phantom_summary(free)
    assert summary["cases_with_femur"] == 0 and summary["femur_free_cases"] == 2 and "dice_mean" not in summary
    assert summary["femur_free_false_positive_ml_max"] == 3.5 and summary["femur_free_false_positive_ml_mean"] == 2.0
    assert "femur_free_labelled_warned" not in summary                    # rows stored without warnings
    warned = [{**row, "warnings": w} for row, w in zip(free + [{**free[0], "false_positive_ml": 0.0}],
                                                       (["a shin"], [], []))]
    summary = script.phantom_summary(warned)
    assert (summary["femur_free_labelled"], summary["femur_free_labelled_warned"]) == (2, 1)


def test_several_models_are_measured_on_cases_made_once(tmp_path, coarse_cases):
    copy = tmp_path / "same_model.pt"
    shutil.copy(DEFAULT_MODEL_PATH, copy)
    out = tmp_path / "eval.json"
    assert script.main([str(DEFAULT_MODEL_PATH), str(copy), "--seeds", "2,1", "--no-real", "--json", str(out)]) == 0
    assert coarse_cases == [2, 1]
    first, second = json.loads(out.read_text())["runs"]
    assert (first["model"], second["model"]) == (str(DEFAULT_MODEL_PATH), str(copy))
    assert [r["seed"] for r in first["phantoms"]] == [2, 1]
    assert first["phantoms"] == [{**r, "seconds": f["seconds"]} for r, f in zip(second["phantoms"], first["phantoms"])]


def test_seed_lists_and_bad_seeds(capsys):
    assert seed_list("25096-25098,26066") == [25096, 25097, 25098, 26066]
    assert seed_list("90000-90000") == [90000]
    for bad in ("90000-abc", "", "1,,2", "5-3", "-4", "3-5,4"):
        with pytest.raises(SystemExit):
            script.main(["--seeds", bad, "--no-real"])
        assert f"argument --seeds: {bad!r}: expected" in capsys.readouterr().err


def test_fixed_tissue_values_reach_the_phantoms_and_the_record(tmp_path, coarse_cases, capsys):
    out = tmp_path / "eval.json"
    assert script.main(["--seeds", "1", "--no-real", "--tissue", "cortex=650, trabecular=60", "--json", str(out)]) == 0
    assert coarse_cases == [(1, {"cortex": 650.0, "trabecular": 60.0})]
    assert json.loads(out.read_text())["tissue"] == {"cortex": 650.0, "trabecular": 60.0}
    for bad in ("cortex", "cortex=abc", "cortex=1=2"):
        with pytest.raises(SystemExit, match="--tissue: expected KEY=VALUE"):
            script.parse_tissue(bad)
    with pytest.raises(SystemExit):
        script.main(["--seeds", "1", "--no-real", "--phantom", "1", "--tissue", "cortex=900"])
    assert "--tissue: only phantom v2 draws tissue values" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--seeds", "1", "--no-real", "--tissue", "bone=900"])
    assert "--tissue: unknown tissue setting(s) bone; known: " in capsys.readouterr().err
    assert len(coarse_cases) == 1


def test_coarse_grids_reach_the_phantoms_and_the_record(tmp_path, coarse_cases):
    out = tmp_path / "eval.json"
    assert script.main(["--seeds", "1", "--no-real", "--coarse", "--json", str(out)]) == 0
    assert coarse_cases == [(1, "coarse")] and json.loads(out.read_text())["coarse"] is True


def test_a_forced_hip_shape_reaches_the_phantoms_the_rows_and_the_record(tmp_path, coarse_cases):
    out = tmp_path / "eval.json"
    assert script.main(["--seeds", "1", "--no-real", "--hips", "mri2psm", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert coarse_cases == [(1, "mri2psm")] and result["hips"] == "mri2psm"
    assert result["phantoms"][0]["hips"] == "mri2psm"
    assert result["phantom_summary"]["dice_mean_mri2psm_hips"] == result["phantoms"][0]["dice"]
    assert "dice_mean_atlas_hips" not in result["phantom_summary"]
    with pytest.raises(SystemExit):
        script.main(["--seeds", "1", "--no-real", "--hips", "mri2psm", "--phantom", "1"])


@pytest.mark.parametrize("key, refusal", [("oa", "--oa: only phantom v2 draws osteoarthritic hips"),
                                          ("tha", "--tha: only phantom v2 draws hip arthroplasties")])
def test_an_on_request_hip_reaches_the_phantoms_the_rows_and_the_record(tmp_path, coarse_cases, capsys, key, refusal):
    out = tmp_path / "eval.json"
    assert script.main(["--seeds", "1", "--no-real", f"--{key}", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert coarse_cases == [(1, key)] and result[key] is True and result["phantoms"][0][key] is True
    with pytest.raises(SystemExit):
        script.main(["--seeds", "1", "--no-real", f"--{key}", "--phantom", "1"])
    assert refusal in capsys.readouterr().err


def test_a_forced_coverage_reaches_the_phantoms_and_the_record(tmp_path, coarse_cases, capsys):
    out = tmp_path / "eval.json"
    assert script.main(["--seeds", "2", "--no-real", "--coverage", "pelvis", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert coarse_cases == [(2, "pelvis")] and result["coverage"] == "pelvis"
    assert result["phantoms"][0]["coverage"] == "pelvis" and "dice" in result["phantoms"][0]
    with pytest.raises(SystemExit):
        script.main(["--seeds", "1", "--no-real", "--coverage", "foot"])
    assert "--coverage: invalid choice: 'foot'" in capsys.readouterr().err


def test_labels_in_the_feet_are_counted_and_summed():
    seed = next(s for s in range(90000, 90100) if make_scene(s).body["feet"]["below"] > 80)
    case = generate_case(seed, spacing=(4.0, 4.0, 4.0), coverage="knee_to_ankle")
    voxel_ml = float(np.prod(case.geometry.spacing)) / 1000
    everything = script.case_row(seed, case, lambda ct, g: np.ones(ct.shape, bool))
    assert everything["foot_ml"] == pytest.approx(case.feet.sum() * voxel_ml) and everything["foot_ml"] > 50
    truth = script.case_row(seed, case, lambda ct, g: case.label > 0)
    assert truth["foot_ml"] == 0 and truth["dice"] == 1.0                 # the femur never reaches the feet
    assert truth["warnings"] == [] and any("ml; a whole adult femur is 300-800 ml" in w for w in everything["warnings"])
    summary = script.phantom_summary([everything, truth])
    assert (summary["cases_into_the_feet"], summary["cases_over_2ml_in_the_feet"]) == (2, 1)
    assert summary["cases_with_femur_warned"] == 1
    assert summary["foot_ml_max"] == everything["foot_ml"]
    pelvis = script.case_row(1, generate_case(1, spacing=(5.0, 5.0, 5.0), coverage="pelvis"), lambda ct, g: ct > 0)
    assert "foot_ml" not in pelvis and "cases_into_the_feet" not in script.phantom_summary([pelvis])


def test_coarse_grids_are_isotropic_2_to_3_mm_drawn_per_seed(monkeypatch, capsys):
    asked = []
    monkeypatch.setattr(script, "generate_case_v2", lambda seed, **kw: asked.append((seed, kw)))
    script.make_phantom(7, 2, coarse=True)
    script.make_phantom(7, 2)
    assert asked == [(7, {"tissue": None, "spacing": script.coarse_spacing(7), "hips": None, "coverage": None,
                          "oa": False, "tha": False}),
                     (7, {"tissue": None, "spacing": None, "hips": None, "coverage": None, "oa": False, "tha": False})]
    spacings = [script.coarse_spacing(seed) for seed in range(200)]
    assert all(s[0] == s[1] == s[2] and 2.0 <= s[0] <= 3.0 for s in spacings)
    assert len(set(spacings)) == 200 and spacings == [script.coarse_spacing(seed) for seed in range(200)]
    with pytest.raises(SystemExit):
        script.main(["--seeds", "1", "--no-real", "--phantom", "1", "--coarse"])
    assert "--coarse: only phantom v2 renders resampled grids" in capsys.readouterr().err


def test_a_second_model_that_confirms_no_piece_empties_the_rows_and_is_named_in_the_record(tmp_path, coarse_cases):
    from conftest import threshold_unet
    from FemurUNetLib.modelfile import save_model
    blind = save_model(threshold_unet(3000.0), tmp_path / "blind.pt")  # labels nothing: no piece is confirmed
    out = tmp_path / "eval.json"
    assert script.main(["--seeds", "1", "--no-real", "--second-opinion", str(blind), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["second_opinion"] == str(blind)
    assert result["phantoms"][0]["dice"] == 0.0 and result["phantoms"][0]["false_positive_ml"] == 0.0
    kept = tmp_path / "kept.json"                                     # a share of 0: every piece stays
    assert script.main(["--seeds", "1", "--no-real", "--second-opinion", str(blind), "--second-opinion-fraction",
                        "0", "--json", str(kept)]) == 0
    result = json.loads(kept.read_text())
    assert result["second_opinion_fraction"] == 0.0 and result["phantoms"][0]["dice"] > 0.5


def test_a_fraction_without_a_second_model_is_refused(capsys):
    with pytest.raises(SystemExit):
        script.main(["--seeds", "1", "--no-real", "--second-opinion-fraction", "0.5"])
    assert "--second-opinion-fraction needs --second-opinion" in capsys.readouterr().err


def test_segment_options_reach_the_engine_and_the_printed_femurunet_line(monkeypatch, tmp_path, coarse_cases):
    from FemurUNetTrainLib.cli import build_parser
    from FemurUNetLib.segment_options import segment_keywords
    asked, lines = [], []
    real = script.segment_volume
    monkeypatch.setattr(script, "segment_volume", lambda *a, **kw: asked.append(kw) or real(*a, **kw))
    monkeypatch.setattr(script, "real_ct", lambda args, segment, command: lines.append(command("ct.nii.gz", "p.nii.gz"))
                        or {})
    options = ["--mirror", "--fast", "--precision", "fp32", "--batch-size", "3", "--min-field", "250"]
    assert script.main(["--seeds", "1", *options]) == 0
    assert asked and all(kw == {**asked[0], "confirm": None} for kw in asked)
    assert (asked[0]["mirror"], asked[0]["fast"], asked[0]["autocast"], asked[0]["batch_size"],
            asked[0]["min_field_mm"], asked[0]["device"]) == (True, True, False, 3, 250.0, "cpu")
    [line] = lines
    assert line[:4] == ["femurunet", "segment", "ct.nii.gz", "p.nii.gz"]
    again = build_parser().parse_args(line[1:])
    assert {**segment_keywords(again), "confirm": None} == asked[0]
