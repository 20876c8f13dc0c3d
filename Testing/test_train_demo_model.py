"""Regression test of the shipped demo model v3: fresh phantom v2 cases (seeds never used in training or in
README's evaluation), the real CTs in ../shared/data, and its provenance against the reproduction script."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from FemurUNetLib import segment_volume
from FemurUNetLib.evaluate import dice, femur_rows, read_femur_reference
from FemurUNetLib.modelfile import load_model, save_model
from FemurUNetLib.paths import DEFAULT_MODEL_PATH
from FemurUNetLib.phantom2 import generate_case
from FemurUNetLib.volume_io import read_volume

TRAIN_SEEDS, VAL_SEEDS = range(20000, 20090), range(20090, 20098)
HARD_TRAIN_SEEDS, HARD_VAL_SEEDS = range(21000, 21040), range(21040, 21048)      # added in stage 3
HARD4_TRAIN_SEEDS, HARD4_VAL_SEEDS = range(22000, 22036), range(22036, 22048)    # added in stage 4
STAGE5_TRAIN_SEEDS, STAGE5_VAL_SEEDS = range(24000, 24120), range(24120, 24140)  # stage 5's own data
STAGE6_TRAIN_SEEDS, STAGE6_VAL_SEEDS = range(28000, 28080), range(28080, 28100)  # stage 6's (make_demo_data stage 12)
STAGE7_TRAIN_SEEDS, STAGE7_VAL_SEEDS = range(29000, 29080), range(29080, 29100)  # stage 7's (make_demo_data stage 13)
EVAL_SEEDS = range(90000, 90040)                   # README's held-out evaluation
FRESH = ((91000, "pelvis"), (91001, "hip_to_knee"))   # outside both; fixed moderate grid to keep the suite fast
FRESH_SPACING = (2.0, 2.0, 3.0)
MIN_DICE = 0.94                                    # measured 0.981 (91000), 0.974 (91001) (session 21's phantom)
MIN_PELVIS_DICE = 0.45                             # measured 0.47 / 0.81 (issue 13 goal 0.90: not met)
MAX_FEMUR_FREE_FRACTION = 0.0005                   # issue 13's goal (< 0.05 % of the voxels)
MAX_SHIN_ML = 40.0        # regression bound: 4.0 ml on 91002 (run 17; the same with its feet, session 27); goal 2
MAX_FEET_ML = 2.0         # issue 13's lower-leg bound; 99103 into the feet: 0.0 ml (29.4 with every piece kept)


@pytest.fixture(scope="module")
def model():
    return load_model(DEFAULT_MODEL_PATH)


def _segment(model, ct, geometry):
    return segment_volume(ct, geometry, model, device="cpu").labelmap


def test_demo_model_file_is_the_documented_one(model):
    assert DEFAULT_MODEL_PATH.stat().st_size < 35e6
    meta = model.metadata
    assert meta["base_filters"] == 16 and meta["input_size"] == 256 and meta["orientation"] == "LPS"
    assert meta["window"] == {"center": 400.0, "width": 2000.0} and meta["min_field_mm"] == 300.0
    assert meta["smooth_z_mm"] == 3.0
    stage9 = meta["training"]                        # the second phantom-stream run (GPU), from stage 8m
    assert stage9["recipe"].startswith("phantom stream") and stage9["seeds"] == "51000-59999"
    assert stage9["val_seeds"] == "49000-49011" and stage9["train_cases"] >= 150
    stage8 = stage9["init_training"]                 # the first, from the stage-7 blend
    assert stage8["recipe"].startswith("phantom stream") and stage8["seeds"] == "50000-59999"
    assert stage8["val_seeds"] == "49000-49011" and stage8["train_cases"] >= 200
    stage7 = stage8["init_training"]
    assert stage7["blend"] == {"weight": 0.5, "tuned": "femurunet_demo_b16_stage7.pt",
                               "start": "femurunet_demo_b16_stage6b.pt"}
    assert stage7["cases"] == [f"phantom{s}" for s in STAGE7_TRAIN_SEEDS]
    assert stage7["val_cases"] == [f"phantom{s}" for s in STAGE7_VAL_SEEDS]
    stage6 = stage7["init_training"]                 # the stage-6 blend: its tuned run's record and the blend's
    assert stage6["blend"] == {"weight": 0.5, "tuned": "femurunet_demo_b16_stage6.pt",
                               "start": "femurunet_demo_b16_stage5.pt"}
    assert stage6["cases"] == [f"phantom{s}" for s in STAGE6_TRAIN_SEEDS]
    assert stage6["val_cases"] == [f"phantom{s}" for s in STAGE6_VAL_SEEDS]
    stage5 = stage6["init_training"]
    assert stage5["cases"] == [f"phantom{s}" for s in STAGE5_TRAIN_SEEDS]
    assert stage5["val_cases"] == [f"phantom{s}" for s in STAGE5_VAL_SEEDS]
    stage4 = stage5["init_training"]
    stage3 = stage4["init_training"]
    stage2 = stage3["init_training"]
    stage1 = stage2["init_training"]
    for t in (stage1, stage2):
        assert t["cases"] == [f"phantom{s}" for s in TRAIN_SEEDS]
        assert t["val_cases"] == [f"phantom{s}" for s in VAL_SEEDS]
    assert stage3["cases"] == [f"phantom{s}" for s in (*TRAIN_SEEDS, *HARD_TRAIN_SEEDS)]
    assert stage3["val_cases"] == [f"phantom{s}" for s in (*VAL_SEEDS, *HARD_VAL_SEEDS)]
    assert stage4["cases"] == [f"phantom{s}" for s in (*TRAIN_SEEDS, *HARD_TRAIN_SEEDS, *HARD4_TRAIN_SEEDS)]
    assert stage4["val_cases"] == [f"phantom{s}" for s in (*VAL_SEEDS, *HARD_VAL_SEEDS, *HARD4_VAL_SEEDS)]
    assert stage1["init_training"]["cases"] == [f"phantom{s}" for s in range(1000, 1040)]   # v2, the start
    used = set(TRAIN_SEEDS) | set(VAL_SEEDS) | set(HARD_TRAIN_SEEDS) | set(HARD_VAL_SEEDS)
    used |= set(HARD4_TRAIN_SEEDS) | set(HARD4_VAL_SEEDS) | set(STAGE5_TRAIN_SEEDS) | set(STAGE5_VAL_SEEDS)
    used |= set(STAGE6_TRAIN_SEEDS) | set(STAGE6_VAL_SEEDS) | set(STAGE7_TRAIN_SEEDS) | set(STAGE7_VAL_SEEDS)
    assert not used & set(EVAL_SEEDS) and not used & {seed for seed, _ in FRESH} and 91002 not in used


def _check_run(t: dict, flags: dict) -> None:
    assert t["epochs"] == int(flags["epochs"]) and 1 <= t["epoch"] <= t["epochs"]     # the best epoch of that run
    assert t["steps_per_epoch"] == int(flags["steps-per-epoch"]) and t["batch_size"] == int(flags["batch-size"])
    assert t["lr"] == float(flags["lr"]) and t["lr_schedule"] == flags["lr-schedule"]
    assert t["warmup_epochs"] == int(flags["warmup-epochs"]) and t["seed"] == int(flags["seed"])
    assert t["loss_function"].endswith(f"{float(flags['bce-weight']):g} x mean binary cross-entropy")
    assert t["intensity"]["enabled"]


def test_demo_model_was_trained_by_the_reproduction_scripts_seven_stages_and_blends(model):
    script = (Path(__file__).resolve().parents[1] / "FemurUNetTrain" / "Scripts" / "train_demo_model.sh").read_text()
    runs = script.split("STAGE7B=")[0].split("femurunet train")[1:]
    flags = [dict(re.findall(r"--([a-z-]+) ([0-9.e-]+|[a-z0-9]+)\b", part)) for part in runs]
    assert len(flags) == 7 and all("--intensity-augment" in part for part in runs)
    assert 'blend_models.py" 0.5 "$STAGE6" "$STAGE5" "$STAGE6B"' in script
    assert 'blend_models.py" 0.5 "$STAGE7" "$STAGE6B" "$STAGE7B"' in script
    assert 'phantom_stream --init "$STAGE7B" --out "$STAGE8" --minutes 8' in script
    assert 'phantom_stream --init "$STAGE8M" --out "$STAGE9" --seeds 51000-59999 --minutes 7.5' in script
    stage8 = model.metadata["training"]["init_training"]
    assert stage8["steps"] > 10000 and model.metadata["training"]["steps"] > 8000   # the two phantom-stream runs
    t = stage8["init_training"]
    for stage in reversed(flags):                     # stage 7 (blended into stage 7b), then the run it started from
        _check_run(t, stage)
        t = t.get("init_training")
    run7 = stage8["init_training"]
    assert run7["epoch"] == 2 and run7["ema"] == 0.998
    run6 = run7["init_training"]
    assert run6["epoch"] == 2 and run6["ema"] == 0.998
    run5 = run6["init_training"]
    assert run5["epoch"] == 20                        # its best validation epoch
    run4 = run5["init_training"]                      # started from the shipped stage-4 file (git d5717da)
    assert run4["init"].endswith("femurunet_demo_b16_stage3.pt") and run4["epoch"] == 1
    assert run4["init_training"]["init_training"]["init_training"]["init"].endswith("femurunet_demo_b16_v2.pt")


@pytest.mark.slow
@pytest.mark.parametrize("seed, coverage", FRESH)
def test_demo_model_dice_on_fresh_phantoms(model, seed, coverage):
    case = generate_case(seed, coverage=coverage, spacing=FRESH_SPACING)
    pred = _segment(model, case.ct, case.geometry)
    assert set(np.unique(pred)) <= {0, 1}
    assert dice(pred > 0, case.label > 0) >= MIN_DICE


@pytest.mark.slow
def test_demo_model_labels_no_shin_bone_in_a_lower_leg_phantom(model):
    case = generate_case(91002, coverage="knee_to_ankle", spacing=FRESH_SPACING)
    pred = _segment(model, case.ct, case.geometry) > 0
    false_ml = np.count_nonzero(pred & (case.label == 0)) * np.prod(case.geometry.spacing) / 1000
    assert false_ml <= MAX_SHIN_ML


@pytest.mark.slow
def test_the_network_labels_the_foot_of_a_leg_scan_and_the_cleanup_removes_it(model):
    case = generate_case(99103, coverage="knee_to_ankle", spacing=FRESH_SPACING)
    voxel_ml = np.prod(case.geometry.spacing) / 1000
    kept = segment_volume(case.ct, case.geometry, model, device="cpu", keep_all_pieces=True).labelmap > 0
    cleaned = _segment(model, case.ct, case.geometry) > 0
    assert np.count_nonzero(kept & case.feet) * voxel_ml > 10 * MAX_FEET_ML
    assert np.count_nonzero(cleaned & case.feet) * voxel_ml <= MAX_FEET_ML
    assert dice(cleaned, case.label > 0) >= MIN_DICE


@pytest.mark.slow
def test_demo_model_on_the_real_pelvis(model, real_ct):
    pelvis = real_ct / "pelvis_3mm"
    ct, geometry = read_volume(pelvis / "ct.nii.gz")
    left, right, _ = read_femur_reference(pelvis / "femur_left.nii.gz", pelvis / "femur_right.nii.gz")
    rows = {r["label"]: r for r in femur_rows(_segment(model, ct, geometry), left, right, geometry).rows}
    assert min(rows["left"]["dice"], rows["right"]["dice"]) >= MIN_PELVIS_DICE


def test_demo_model_predicts_almost_no_femur_in_a_femur_free_real_ct(model, real_ct):
    ct, geometry = read_volume(real_ct / "abdomen_dicom")           # upper abdomen: spine, ribs, both upper arms
    pred = _segment(model, ct, geometry)
    assert np.count_nonzero(pred) / pred.size < MAX_FEMUR_FREE_FRACTION


def _run_script(tmp_path, model_file, data, source=DEFAULT_MODEL_PATH):
    """train_demo_model.sh in tmp_path/demo holding ``model_file`` and the exported ``data`` folders, with a stand-in
    femurunet that prints its first arguments and copies --init to --out; no GPU visible. ``model_file`` is a copy
    of ``source``. (WORKDIR, the training runs it printed, the script's stderr)."""
    work, bin_dir = tmp_path / "demo", tmp_path / "bin"
    work.mkdir(parents=True)
    for folder in data:
        (work / folder).mkdir(parents=True)
        (work / folder / "dataset.json").write_text("{}")
    shutil.copy(source, work / model_file)
    bin_dir.mkdir()
    fake = bin_dir / "femurunet"
    fake.write_text(f"#!{sys.executable}\nimport shutil, sys\na = sys.argv\nprint(' '.join(a[1:3]), flush=True)\n"
                    "shutil.copy(a[a.index('--init') + 1], a[a.index('--out') + 1])\n")
    fake.chmod(0o755)
    script = Path(__file__).resolve().parents[1] / "FemurUNetTrain" / "Scripts" / "train_demo_model.sh"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": ""}   # no GPU stage
    run = subprocess.run(["bash", str(script), str(work)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    return work, [line for line in run.stdout.splitlines() if line.startswith("train ")], run.stderr


def test_the_script_runs_only_the_stages_after_the_model_files_it_finds(tmp_path):
    """Stages 6-7 from a stage-5 file: two training runs and both blends; stage 7 alone from the stage-6 blend: one
    run and the last blend. No earlier stage and no data of an earlier stage is asked for."""
    data = ("train12", "val12", "train13", "val13")
    work, printed, _ = _run_script(tmp_path / "a", "femurunet_demo_b16_stage5.pt", data)
    assert printed == [f"train {work / 'train12'}", f"train {work / 'train13'}"]
    assert load_model(work / "femurunet_demo_b16_stage6b.pt").metadata["blend"]["tuned"] == "femurunet_demo_b16_stage6.pt"
    assert load_model(work / "femurunet_demo_b16_stage7b.pt").metadata["blend"] == {
        "weight": 0.5, "tuned": "femurunet_demo_b16_stage7.pt", "start": "femurunet_demo_b16_stage6b.pt"}
    assert sorted(p.name for p in work.glob("*.pt")) == [
        *(f"femurunet_demo_b16_stage{n}.pt" for n in ("5", "6", "6b", "7", "7b")),
        "femurunet_demo_b16_v2.pt"]
    work, printed, _ = _run_script(tmp_path / "b", "femurunet_demo_b16_stage6b.pt", ("train13", "val13"))
    assert printed == [f"train {work / 'train13'}"]
    assert sorted(p.name for p in work.glob("*.pt")) == [
        "femurunet_demo_b16_stage6b.pt", "femurunet_demo_b16_stage7.pt", "femurunet_demo_b16_stage7b.pt",
        "femurunet_demo_b16_v2.pt"]


def test_from_the_stage8_file_the_script_sets_the_minimum_field_and_asks_for_a_gpu(tmp_path):
    unpadded = save_model(load_model(DEFAULT_MODEL_PATH), tmp_path / "unpadded.pt", min_field_mm=0.0)
    work, printed, stderr = _run_script(tmp_path, "femurunet_demo_b16_stage8.pt", (), source=unpadded)
    assert printed == [] and sorted(p.name for p in work.glob("*.pt")) == [
        "femurunet_demo_b16_stage8.pt", "femurunet_demo_b16_stage8m.pt", "femurunet_demo_b16_v2.pt"]
    stage8, stage8m = (load_model(work / f"femurunet_demo_b16_stage8{s}.pt") for s in ("", "m"))
    assert stage8.metadata["min_field_mm"] == 0.0
    assert stage8m.metadata == {**stage8.metadata, "min_field_mm": 300.0}
    assert "stage 9 needs a CUDA GPU" in stderr
    assert all(torch.equal(v, stage8.state_dict()[k]) for k, v in stage8m.state_dict().items())


def test_from_the_stage9_file_the_script_writes_the_shipped_file_only(tmp_path):
    """The shipped file is stage 9's weights with the 3 mm smoothing along the slice axis (session 43)."""
    stage9_source = save_model(load_model(DEFAULT_MODEL_PATH), tmp_path / "stage9.pt", smooth_z_mm=0.0)
    work, printed, _ = _run_script(tmp_path, "femurunet_demo_b16_stage9.pt", (), source=stage9_source)
    assert printed == [] and sorted(p.name for p in work.glob("*.pt")) == [
        "femurunet_demo_b16.pt", "femurunet_demo_b16_stage9.pt", "femurunet_demo_b16_v2.pt"]
    stage9, shipped = (load_model(work / f"femurunet_demo_b16{s}.pt") for s in ("_stage9", ""))
    assert shipped.metadata == {**stage9.metadata, "smooth_z_mm": 3.0}
    assert all(torch.equal(v, stage9.state_dict()[k]) for k, v in shipped.state_dict().items())
    assert shipped.metadata == load_model(DEFAULT_MODEL_PATH).metadata          # the file in the package
