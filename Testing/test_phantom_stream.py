"""Training on phantoms made while training (FemurUNetTrainLib.phantom_stream): the slices are those of the export
route, the pool is a ring, the validation set, the rate schedule, one-line errors, and a short run (through
``femurunet train-phantoms``) writes a loadable model and its log."""
import argparse
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from FemurUNetLib.modelfile import load_model, save_model
from FemurUNetLib.paths import DEFAULT_MODEL_PATH
from FemurUNetLib.phantom2 import generate_case
from FemurUNetLib.geometry import Reorientation
from FemurUNetLib.preprocess import window_to_uint8
from FemurUNetTrainLib.dataset import load_dataset, to_model_tensors
from FemurUNetTrainLib.export import export_arrays
from FemurUNetTrainLib import cli, phantom_stream
from FemurUNetTrainLib.widen import add_input_slices
from FemurUNetTrainLib.phantom_stream import (SlicePool, _Run, add_arguments, case_slices, coarse_seed,
                                              parse_coverage_mix, scheduled_rate, stream_coverage,
                                              stream_hips, stream_oa, stream_tha)

WINDOW = {"center": 400.0, "width": 2000.0}
SHAPE = (18, 40, 36)


def test_case_slices_are_the_exported_slices_at_model_size(tmp_path):
    seed, images, masks = case_slices(7, WINDOW, 64, shape=SHAPE)
    case = generate_case(7, shape=SHAPE, jobs=1)
    assert case.label.any(), "the test needs a case with femur"
    export_arrays(case.ct, case.label, case.geometry, tmp_path, "c7", window=WINDOW, empty_fraction=1.0)
    exported = load_dataset(tmp_path, 64)
    assert seed == 7 and images.dtype == np.uint8 and masks.dtype == bool
    assert images.shape == (SHAPE[0], 1, 64, 64) and masks.shape == (SHAPE[0], 64, 64) == (len(exported), 64, 64)
    difference = np.abs(images[:, 0] / 255.0 - exported.images[:, 0].numpy())
    assert difference.max() <= 0.5 / 255 + 1e-6          # 8-bit storage of the resized slice, nothing else
    assert np.array_equal(masks, exported.masks[:, 0].numpy())


def test_case_slices_are_padded_with_air_to_the_minimum_field():
    """The same model-size slices as the case's windowed slices padded with air (0) to the field's square."""
    case = generate_case(7, shape=SHAPE, jobs=1)
    axial = Reorientation.for_geometry(case.geometry)
    ct, label = axial.to_canonical(case.ct), axial.to_canonical(case.label != 0)
    sx, sy, _ = axial.canonical_spacing(case.geometry)
    side = 2 * max(ct.shape[1:])
    _, images, masks = case_slices(7, WINDOW, 64, side * min(sx, sy), shape=SHAPE)
    top, left = (side - ct.shape[1]) // 2, (side - ct.shape[2]) // 2
    padded = np.zeros((len(ct), side, side), np.uint8)
    padded_masks = np.zeros(padded.shape, np.uint8)
    padded[:, top:top + ct.shape[1], left:left + ct.shape[2]] = [window_to_uint8(s, **WINDOW) for s in ct]
    padded_masks[:, top:top + ct.shape[1], left:left + ct.shape[2]] = label * 255
    x, y = to_model_tensors(list(padded), list(padded_masks), 64)
    assert masks.any() and np.array_equal(masks, y[:, 0].numpy())
    assert np.abs(images[:, 0] / 255.0 - x[:, 0].numpy()).max() <= 0.5 / 255 + 1e-6


def test_a_coverage_given_is_the_case_made():
    _, _, masks = case_slices(7, WINDOW, 32, coverage="chest", shape=SHAPE)
    _, _, leg = case_slices(7, WINDOW, 32, coverage="hip_to_knee", shape=SHAPE)
    _, shin_slices, shin = case_slices(7, WINDOW, 32, coverage="lower_leg", shape=SHAPE)   # on request only
    assert not masks.any() and leg.any() and not shin.any() and shin_slices.max() > 120     # > 340 HU: bone, no label
    assert parse_coverage_mix("lower_leg=1,knee_to_ankle=3") == {"lower_leg": 0.25, "knee_to_ankle": 0.75}


def test_the_coverage_mix_draws_by_its_weights_the_same_on_every_run():
    mix = parse_coverage_mix("knee_to_ankle=3, pelvis=1,chest=0")
    assert mix == {"knee_to_ankle": 0.75, "pelvis": 0.25, "chest": 0.0}
    drawn = [stream_coverage(seed, mix) for seed in range(70000, 72000)]
    assert drawn == [stream_coverage(seed, mix) for seed in range(70000, 72000)]
    assert set(drawn) == {"knee_to_ankle", "pelvis"} and abs(drawn.count("pelvis") / 2000 - 0.25) < 0.03
    assert stream_coverage(70000, None) is None


def test_a_hip_shape_given_is_the_case_made(monkeypatch):
    made = []
    real = phantom_stream.generate_case
    monkeypatch.setattr(phantom_stream, "generate_case", lambda seed, **kw: made.append(kw["hips"]) or real(seed, **kw))
    case_slices(7, WINDOW, 32, coverage="pelvis", hips="mri2psm", shape=SHAPE)
    case_slices(7, WINDOW, 32, coverage="pelvis", shape=SHAPE)
    assert made == ["mri2psm", None]


def test_the_mri2psm_hip_share_draws_per_seed_the_same_on_every_run():
    drawn = [stream_hips(seed, 0.5) for seed in range(60000, 62000)]
    assert drawn == [stream_hips(seed, 0.5) for seed in range(60000, 62000)]
    assert set(drawn) == {"atlas", "mri2psm"} and abs(drawn.count("mri2psm") / 2000 - 0.5) < 0.035
    assert {stream_hips(s, 0.0) for s in range(100)} == {"atlas"} and {stream_hips(s, 1.0) for s in range(100)} == {"mri2psm"}
    assert stream_hips(60000, None) is None


@pytest.mark.parametrize("key, stream, other", [("oa", stream_oa, lambda s, p: stream_hips(s, p) == "mri2psm"),
                                                 ("tha", stream_tha, stream_oa)])
def test_an_on_request_hip_share_draws_per_seed_from_its_own_stream(monkeypatch, key, stream, other):
    drawn = [stream(seed, 0.3) for seed in range(60000, 62000)]
    assert drawn == [stream(seed, 0.3) for seed in range(60000, 62000)]
    assert abs(sum(drawn) / 2000 - 0.3) < 0.035
    assert drawn != [other(seed, 0.3) for seed in range(60000, 62000)]          # not another option's draw
    assert not any(stream(s, None) or stream(s, 0.0) for s in range(100)) and all(stream(s, 1.0) for s in range(100))
    made = []
    real = phantom_stream.generate_case
    monkeypatch.setattr(phantom_stream, "generate_case", lambda seed, **kw: made.append(kw[key]) or real(seed, **kw))
    case_slices(7, WINDOW, 32, coverage="pelvis", shape=SHAPE, **{key: True})
    case_slices(7, WINDOW, 32, coverage="pelvis", shape=SHAPE)
    assert made == [True, False]


def test_a_third_of_the_seeds_are_coarse():
    assert sum(coarse_seed(s) for s in range(300)) == 100


def test_pool_is_a_ring_that_drops_the_oldest_slices():
    pool = SlicePool(5, 4, torch.device("cpu"))
    for seed, n in ((1, 3), (2, 3)):
        pool.add(seed, np.full((n, 1, 4, 4), seed * 10, np.uint8), np.full((n, 4, 4), seed == 2))
    assert len(pool) == 5 and pool.cases == [1, 2]
    x, y = pool.batch(torch.arange(5))
    assert x[:, 0, 0, 0].mul(255).round().tolist() == [20, 10, 10, 20, 20]   # slot 0 overwritten by case 2
    assert y[:, 0, 0, 0].tolist() == [True, False, False, True, True]
    data = pool.dataset()
    assert len(data) == 5 and data.images.dtype == torch.float32 and float(data.images.max()) == pytest.approx(20 / 255)


def test_rate_warms_up_then_follows_a_cosine_over_the_budget():
    assert scheduled_rate(1e-4, 1e-6, 100, 0, 0.0) == pytest.approx(1e-6)
    assert scheduled_rate(1e-4, 1e-6, 100, 99, 0.0) == pytest.approx(1e-4)
    assert scheduled_rate(1e-4, 1e-6, 100, 500, 0.5) == pytest.approx((1e-4 + 1e-6) / 2)
    assert scheduled_rate(1e-4, 1e-6, 100, 500, 1.5) == pytest.approx(1e-6)


def _args(*extra):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--init", str(DEFAULT_MODEL_PATH), "--out", "unused.pt", "--device", "cpu", *extra])


def test_validation_cases_go_to_the_device_once_all_have_arrived_in_seed_order():
    run = _Run(_args("--val-seeds", "7-9", "--seeds", "20-30", "--capacity", "4"), torch.device("cpu"))
    size = run.size
    def result(seed, n):
        return seed, np.full((n, 1, size, size), seed, np.uint8), np.zeros((n, size, size), bool)
    for seed, n in ((9, 2), (20, 3), (7, 1)):
        run.add(result(seed, n))
        assert run.val is None
    run.add(result(8, 4))
    assert run.train.cases == [20] and run.val.cases == [7, 8, 9] and len(run.val) == 7 > run.train.capacity
    assert run.val.batch(torch.arange(7))[0][:, 0, 0, 0].mul(255).round().tolist() == [7, 8, 8, 8, 8, 9, 9]


def test_a_wider_run_starts_from_the_same_outputs():
    run = _Run(_args("--base-filters", "32"), torch.device("cpu"))
    start = load_model(DEFAULT_MODEL_PATH).eval()
    x = torch.rand(2, 1, run.size, run.size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        wide, narrow = run.net.eval()(x), start(x)
    assert run.net.base_filters == run.config.base_filters == 32 and start.base_filters == 16
    assert torch.allclose(wide, narrow, atol=1e-4) and run.init_base == 16


def test_a_run_given_neighbouring_slices_starts_from_the_one_slice_outputs():
    run = _Run(_args("--slice-offsets-mm=-24,-8,0,8,24", "--capacity", "10"), torch.device("cpu"))
    start = load_model(DEFAULT_MODEL_PATH).eval()
    x = torch.rand(2, 5, run.size, run.size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        stacked, plain = run.net.eval()(x), start(x[:, 2:3])
    assert run.offsets == (-24.0, -8.0, 0.0, 8.0, 24.0) and run.train.images.shape[1:] == (5, run.size, run.size)
    assert torch.allclose(stacked, plain, atol=1e-5)


def test_the_first_convolution_may_learn_faster_than_the_rest():
    run = _Run(_args("--slice-offsets-mm=0,8", "--capacity", "10", "--input-lr-scale", "20", "--batch-size", "2"),
               torch.device("cpu"))
    run.add((20, np.full((3, 2, run.size, run.size), 90, np.uint8), np.zeros((3, run.size, run.size), bool)))
    first = run.net.enc[0][0].weight.detach().clone()
    run.step(1e-4)
    groups = run.optimizer.param_groups
    assert [g["lr"] for g in groups] == [pytest.approx(1e-4), pytest.approx(2e-3)]
    assert groups[1]["params"] == list(run.net.enc[0][0].parameters())
    assert sum(len(g["params"]) for g in groups) == len(list(run.net.parameters()))
    moved = (run.net.enc[0][0].weight.detach() - first)[:, 1].abs().max()      # the new channel, from zero
    assert 1e-3 < moved <= 2e-3 * 1.01                                        # Adam's first step: the rate
    plain = _Run(_args("--capacity", "10"), torch.device("cpu"))
    assert len(plain.optimizer.param_groups) == 1


def test_a_stacked_start_keeps_its_own_offsets(tmp_path, capsys):
    stacked = add_input_slices(load_model(DEFAULT_MODEL_PATH), (-8.0, 0.0, 8.0))
    save_model(stacked, tmp_path / "s.pt")
    run = _Run(_args("--init", str(tmp_path / "s.pt"), "--capacity", "10"), torch.device("cpu"))
    assert run.offsets == (-8.0, 0.0, 8.0) and run.net.in_channels == 3
    argv = ["train-phantoms", "--init", str(tmp_path / "s.pt"), "--out", str(tmp_path / "o.pt"), "--device", "cpu",
            "--slice-offsets-mm=0,8"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (f"femurunet train-phantoms: error: {tmp_path / 's.pt'}: the model reads "
                                       f"slices at [-8.0, 0.0, 8.0] mm, not at --slice-offsets-mm [0.0, 8.0]\n")


@pytest.mark.parametrize("extra, message", [
    (("--seeds", "1-5", "--val-seeds", "5-6"), "--seeds 1-5 and --val-seeds 5-6 overlap"),
    (("--seeds", "1-x"), "--seeds '1-x': expected ranges like 90000-90039 or seeds like 25096"),
    (("--init", "missing.pt"), "missing.pt: model file not found"),
    (("--base-filters", "24"), f"{DEFAULT_MODEL_PATH}: --base-filters 24: a model of base 16 widens only to a "
                               "multiple of 16"),
    (("--capacity", "100000000"), "--capacity 100000000: a pool of 100000000 slices of 2 x 256 x 256 bytes "
                                  "(13107.2 GB) does not fit on cpu; lower --capacity")])
def test_bad_runs_are_one_line_errors_before_anything_is_written(tmp_path, capsys, extra, message):
    out = tmp_path / "run" / "s.pt"
    argv = ["train-phantoms", "--init", str(DEFAULT_MODEL_PATH), "--out", str(out), "--device", "cpu", *extra]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == f"femurunet train-phantoms: error: {message}\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, value, problem", [
    ("--minutes", "inf", "inf is not a finite number"),
    ("--lr", "0", "0 is not a positive number"),
    ("--shape", "4,5", "'4,5': expected three voxel counts K,J,I"),
    ("--coverage-mix", "knee=1", "'knee' is not a coverage (pelvis, hip_to_knee"),
    ("--coverage-mix", "pelvis=x", "pelvis's weight must be a number >= 0, got 'x'"),
    ("--coverage-mix", "pelvis=-1", "pelvis's weight must be a number >= 0, got '-1'"),
    ("--coverage-mix", "pelvis=inf", "pelvis's weight must be a number >= 0, got 'inf'"),
    ("--coverage-mix", "pelvis=1,pelvis=2", "pelvis is given twice"),
    ("--coverage-mix", "pelvis=0", "the weights sum to 0"),
    ("--mri-hips", "1.5", "1.5 is not a share between 0 and 1"),
    ("--mri-hips", "-0.1", "-0.1 is not a share between 0 and 1"),
    ("--mri-hips", "half", "'half' is not a number"),
    ("--mri-hips", "nan", "nan is not a finite number"),
    ("--oa-hips", "2", "2 is not a share between 0 and 1"),
    ("--tha-hips", "-1", "-1 is not a share between 0 and 1"),
    ("--slice-offsets-mm", "8,16", "slice offsets '8,16': must include 0 (the slice itself)")])
def test_bad_option_values_are_one_line_errors(tmp_path, capsys, flag, value, problem):
    with pytest.raises(SystemExit) as done:
        cli.main(["train-phantoms", "--init", str(DEFAULT_MODEL_PATH), "--out", str(tmp_path / "s.pt"), flag, value])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and problem in err and flag in err
    assert not any(tmp_path.iterdir())


def test_the_module_entry_gives_the_same_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "FemurUNetTrainLib.phantom_stream", "--init", "missing.pt",
                           "--out", "s.pt"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and not (tmp_path / "s.log.jsonl").exists()
    assert done.stderr == "python3 -m FemurUNetTrainLib.phantom_stream: error: missing.pt: model file not found\n"


def test_the_stream_needs_no_simpleitk(tmp_path):
    code = ("import sys\nclass Block:\n    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] == 'SimpleITK': raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\nfrom FemurUNetTrainLib import phantom_stream\n"
            "print(phantom_stream.case_slices(3, {'center': 400.0, 'width': 2000.0}, 32, shape=(4, 20, 20))[1].shape)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(4,", "1,", "32,", "32)"]


@pytest.mark.slow
def test_a_short_run_writes_a_loadable_model_and_its_log(tmp_path, capsys):
    out = tmp_path / "s.pt"
    assert cli.main(["train-phantoms", "--init", str(DEFAULT_MODEL_PATH), "--out", str(out), "--minutes", "5",
                     "--max-steps", "6", "--workers", "1", "--shape", "10,40,40", "--val-seeds", "49000-49001",
                     "--seeds", "50000-50100", "--min-cases", "2", "--batch-size", "2",
                     "--val-every", "1", "--device", "cpu", "--warmup-steps", "2",
                     "--coverage-mix", "knee_to_ankle=1", "--mri-hips", "1", "--oa-hips", "0.5",
                     "--tha-hips", "0.5"]) == 0
    lines = [json.loads(line) for line in out.with_suffix(".log.jsonl").read_text().splitlines()]
    assert lines[-1]["steps"] == 6                  # ended by its steps (the clock allows minutes)
    validated = [r for r in lines if "val_loss" in r]
    assert validated and "start_val_loss" in validated[0] and any(r.get("best") for r in validated)
    best = [r for r in validated if r.get("best")][-1]
    assert capsys.readouterr().out.splitlines()[-1] == (f"best validation: loss {best['val_loss']:.4f}, "
                                                        f"Dice {best['val_dice']:.4f} at step {best['steps']}")
    model = load_model(out)
    training = model.metadata["training"]
    assert training["val_loss"] == min(r["val_loss"] for r in validated)
    assert training["steps"] <= lines[-1]["steps"] and training["init"] == str(DEFAULT_MODEL_PATH)
    assert training["coverage_mix"] == {"knee_to_ankle": 1.0} and training["init_base_filters"] == 16
    assert training["mri_hips"] == 1.0 and training["oa_hips"] == 0.5 and training["tha_hips"] == 0.5
    start = load_model(DEFAULT_MODEL_PATH).metadata      # the chain of runs stays traceable
    assert training["init_training"] == {**start["training"], **({"blend": start["blend"]} if "blend" in start else {})}
    assert load_model(tmp_path / "s_last.pt").metadata["training"]["steps"] == lines[-1]["steps"]
    assert model.metadata["min_field_mm"] == start["min_field_mm"] and model.metadata["smooth_z_mm"] == 0.0
    assert math.isfinite(training["val_dice"])
