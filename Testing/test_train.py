"""Training: Dice-loss gradients, a tiny real run on phantom PNGs, best-checkpoint semantics, resume, DDP."""
from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from FemurUNetLib import UNet2D, dice_loss, segment_volume
from FemurUNetTrainLib.cli import main as femurunet
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.modelfile import load_model, save_model
from FemurUNetLib.phantom import generate_case
from FemurUNetLib.device import cpu_supports_bf16
from FemurUNetTrainLib.export import export_arrays
from FemurUNetTrainLib.distributed import Dist
from FemurUNetTrainLib.loss import batch_dice_loss, training_loss
from FemurUNetTrainLib.step import amp_dtype
from FemurUNetTrainLib.train import TrainConfig, checkpoint_path, collapsed, train, warmup_factor
from FemurUNetTrainLib.widen import add_input_slices

SIZE = 64
WINDOW = (350.0, 1800.0)          # not the engine default: the model file must carry it
TRAIN_SEEDS, VAL_SEEDS = range(500, 506), range(506, 508)


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    """Phantom PNG datasets at 64 x 64 (train: 6 cases, val: 2 cases) and the val cases' volumes."""
    root = tmp_path_factory.mktemp("phantom_pngs")
    cases = {}
    for seed in [*TRAIN_SEEDS, *VAL_SEEDS]:
        case = generate_case(seed, shape=(20, SIZE, SIZE))
        folder = root / ("train" if seed in TRAIN_SEEDS else "val")
        export_arrays(case.ct, case.label, case.geometry, folder, f"p{seed}", window=WINDOW, empty_fraction=1.0)
        cases[seed] = case
    return root / "train", root / "val", cases


train_module = importlib.import_module("FemurUNetTrainLib.train")   # the package's 'train' is the function


def tiny_config(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), epochs=3, steps_per_epoch=3, batch_size=4, lr=3e-3, base_filters=4,
                input_size=SIZE, seed=7, threads=1, amp="off")   # exactness tests compare fp32 runs
    base.update(kw)
    return TrainConfig(**base)


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- loss -----------------------------------------------------------------------------------------------------------

def test_dice_loss_gradient_matches_finite_differences_and_points_the_right_way():
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(2, 1, 6, 6, generator=g) > 0.6).double()
    p = torch.rand(2, 1, 6, 6, generator=g, dtype=torch.float64).requires_grad_()
    loss = dice_loss(y, p)
    (grad,) = torch.autograd.grad(loss, p)
    eps = 1e-6
    numeric = torch.zeros_like(p)
    for idx in np.ndindex(*p.shape):
        q = p.detach().clone()
        q[idx] += eps
        hi = dice_loss(y, q)
        q[idx] -= 2 * eps
        numeric[idx] = (hi - dice_loss(y, q)) / (2 * eps)
    torch.testing.assert_close(grad, numeric, atol=1e-7, rtol=1e-5)
    assert (grad[y == 1] < 0).all() and (grad[y == 0] > 0).all()     # raise p on femur, lower it elsewhere
    assert float(dice_loss(y, y)) == pytest.approx(0.0, abs=1e-12)
    assert float(dice_loss(y, torch.zeros_like(y))) == pytest.approx(1 - 1 / (y.sum().item() + 1))


def test_distributed_linearised_loss_gives_the_full_batch_gradient():
    """Two shards, each seeing the other's sums through all_reduce: (grad_a + grad_b) = full-batch gradient."""
    g = torch.Generator().manual_seed(1)
    y = (torch.rand(4, 1, 8, 8, generator=g) > 0.7).float()
    w = torch.rand(4, 1, 8, 8, generator=g, requires_grad=True)
    full_loss = dice_loss(y, torch.sigmoid(w))
    (full,) = torch.autograd.grad(full_loss, w)

    def shard_sums(s):
        p = torch.sigmoid(w[s]).detach()
        return torch.stack([(y[s] * p).sum(), y[s].sum() + p.sum()]).double()

    class FakeDist(Dist):
        def __init__(self, other):
            super().__init__(rank=0, world=2)
            self.other = other

        def all_reduce(self, t):
            return t + self.other

    grads, values = [], []
    for mine, other in ((slice(0, 2), slice(2, 4)), (slice(2, 4), slice(0, 2))):
        surrogate, value = batch_dice_loss(y[mine], torch.sigmoid(w[mine]), FakeDist(shard_sums(other)))
        grads.append(torch.autograd.grad(surrogate, w)[0] / 2)      # DDP averages over the 2 processes
        values.append(value)
    torch.testing.assert_close(grads[0] + grads[1], full, atol=1e-7, rtol=1e-4)
    assert values[0] == pytest.approx(float(full_loss.detach()), abs=1e-6) and values[1] == pytest.approx(values[0])


def test_bce_weight_adds_the_mean_cross_entropy_and_keeps_the_dice_value():
    g = torch.Generator().manual_seed(2)
    y = (torch.rand(4, 1, 8, 8, generator=g) > 0.7).float()
    w = (torch.randn(4, 1, 8, 8, generator=g) * 3).requires_grad_()
    p = torch.sigmoid(w)
    seed_loss, seed_value = training_loss(y, p, Dist())
    assert torch.equal(seed_loss, batch_dice_loss(y, p, Dist())[0])              # weight 0: the seed's loss
    loss, value = training_loss(y, p, Dist(), bce_weight=0.5)
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    torch.testing.assert_close(loss, dice_loss(y, p) + 0.5 * bce)
    assert value == seed_value == pytest.approx(float(dice_loss(y, p).detach()))    # what is logged: 1 - Dice
    # a confidently wrong pixel: Dice's gradient vanishes through the saturated sigmoid, BCE's does not
    x = torch.full((1, 1, 4, 4), -12.0, requires_grad=True)
    t = torch.zeros(1, 1, 4, 4)
    t[0, 0, 0, 0] = 1
    dice_only = torch.autograd.grad(training_loss(t, torch.sigmoid(x), Dist())[0], x)[0][0, 0, 0, 0]
    with_bce = torch.autograd.grad(training_loss(t, torch.sigmoid(x), Dist(), 1.0)[0], x)[0][0, 0, 0, 0]
    assert abs(float(dice_only)) < 1e-4 and float(with_bce) < -1 / 16 + 1e-3


def test_bce_weight_under_ddp_gives_the_full_batch_gradient():
    g = torch.Generator().manual_seed(3)
    y = (torch.rand(4, 1, 8, 8, generator=g) > 0.7).float()
    w = torch.randn(4, 1, 8, 8, generator=g, requires_grad=True)
    (full,) = torch.autograd.grad(training_loss(y, torch.sigmoid(w), Dist(), 2.0)[0], w)

    class FakeDist(Dist):
        def __init__(self, other):
            super().__init__(rank=0, world=2)
            self.other = other

        def all_reduce(self, t):
            p = torch.sigmoid(w[self.other]).detach()
            return t + torch.stack([(y[self.other] * p).sum(), y[self.other].sum() + p.sum()]).double()

    shards = ((slice(0, 2), slice(2, 4)), (slice(2, 4), slice(0, 2)))
    grads = [torch.autograd.grad(training_loss(y[a], torch.sigmoid(w[a]), FakeDist(b), 2.0)[0], w)[0] / 2
             for a, b in shards]                                                    # DDP averages the 2 processes
    torch.testing.assert_close(grads[0] + grads[1], full, atol=1e-7, rtol=1e-4)


# --- a real tiny run ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_tiny_training_learns_and_the_model_file_carries_its_preprocessing(phantom_data, tmp_path):
    train_dir, val_dir, cases = phantom_data
    out = tmp_path / "tiny.pt"
    seen = []
    # lr 5e-4: at 1e-3 the output died (all background) in 3 of 4 seeds on an AMD EPYC, by float rounding alone
    result = train(tiny_config(train_dir, out, val=str(val_dir), epochs=15, steps_per_epoch=10, batch_size=8, lr=5e-4,
                               base_filters=8, seed=3), progress=seen.append)
    h = result.history
    assert len(h) == 15 and result.monitor == "val_loss"
    chance = 2 * 0.015 / 1.015                                 # all-femur prediction at ~1.5 % femur voxels
    assert h[-1]["val_dice"] > 0.5 > 10 * chance
    assert np.mean([r["loss"] for r in h[-3:]]) < h[0]["loss"] - 0.2
    # ModelCheckpoint(save_best_only) on the monitored loss: the file holds the epoch of the lowest val_loss
    best = int(np.argmin([r["val_loss"] for r in h])) + 1
    assert result.best_epoch == best and [r["epoch"] for r in h if r["best"]][-1] == best
    model = load_model(out)
    meta = model.metadata
    assert meta["window"] == {"center": WINDOW[0], "width": WINDOW[1]} and meta["orientation"] == "LPS"
    assert meta["input_size"] == SIZE and meta["base_filters"] == 8
    t = meta["training"]
    assert t["epoch"] == best and t["seed"] == 3 and t["val_loss"] == pytest.approx(h[best - 1]["val_loss"])
    assert t["cases"] == [f"p{s}" for s in TRAIN_SEEDS] and t["torch"] == torch.__version__
    # log, curve, progress callbacks
    lines = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, 16))
    assert {"epoch", "loss", "val_loss", "val_dice", "lr", "seconds"} <= set(lines[0])
    assert Image.open(result.curve_path).format == "PNG"
    assert len([p for p in seen if p.record is None]) == 150 and len([p for p in seen if p.record]) == 15
    # segment uses the file's own window and size: the same Dice as the trainer's validation, on the volume
    case = cases[VAL_SEEDS[0]]
    labels = segment_volume(case.ct, case.geometry, out, device="cpu", autocast=False).labelmap
    truth = case.label > 0
    assert 2 * (labels.astype(bool) & truth).sum() / (labels.astype(bool).sum() + truth.sum()) > 0.4


# --- resume -------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_resume_continues_exactly_like_an_uninterrupted_run(phantom_data, tmp_path):
    train_dir, val_dir, _ = phantom_data
    recipe = dict(val=str(val_dir), epochs=4, warmup_epochs=3, lr_schedule="cosine")  # the cut falls in the warm-up
    whole = train(tiny_config(train_dir, tmp_path / "a" / "m.pt", **recipe))
    calls = {"n": 0}

    def stop_in_epoch_3():
        calls["n"] += 1
        return calls["n"] == 2 * 3 + 2          # the 2nd step of epoch 3: that epoch is lost, as if killed

    out_b = tmp_path / "b" / "m.pt"
    cut = train(tiny_config(train_dir, out_b, **recipe), should_stop=stop_in_epoch_3)
    assert cut.stopped and cut.epochs_completed == 2
    assert torch.load(checkpoint_path(out_b), weights_only=True)["epoch"] == 2
    resumed = train(tiny_config(train_dir, out_b, resume=True, **recipe))
    assert resumed.epochs_completed == 4 and not resumed.stopped
    assert_same_weights(state(whole.model), state(resumed.model))
    assert_same_weights(load_model(whole.model_path).state_dict(), load_model(out_b).state_dict())
    assert [r["val_loss"] for r in whole.history] == [r["val_loss"] for r in resumed.history]
    assert len(resumed.log_path.read_text().splitlines()) == 4


def test_ema_validates_and_saves_the_average_of_the_weights_after_every_step(phantom_data, tmp_path, monkeypatch):
    import FemurUNetTrainLib.train as training
    train_dir, val_dir, _ = phantom_data
    after_steps = []
    real_optimise = training.optimise

    def recording_optimise(model, *args, **kwargs):
        value = real_optimise(model, *args, **kwargs)
        after_steps.append(state(model))
        return value
    monkeypatch.setattr(training, "optimise", recording_optimise)
    decay = 0.6
    result = train(tiny_config(train_dir, tmp_path / "m.pt", val=str(val_dir), epochs=2, ema=decay, lr=1e-2))
    torch.manual_seed(7)                                             # tiny_config's seed: the run's first weights
    start = state(UNet2D(1, 1, 4))
    average = {k: decay * start[k] + (1 - decay) * after_steps[0][k] for k in start}
    for weights in after_steps[1:]:
        average = {k: decay * average[k] + (1 - decay) * weights[k] for k in average}
    assert len(after_steps) == 2 * 3
    for k, v in state(result.model).items():
        torch.testing.assert_close(v, average[k], atol=1e-6, rtol=1e-5)
    assert not torch.equal(state(result.model)["head.weight"], after_steps[-1]["head.weight"])
    saved = load_model(tmp_path / "m.pt")
    assert saved.metadata["training"]["ema"] == decay
    best = saved.metadata["training"]["epoch"]
    assert saved.metadata["training"]["val_loss"] == pytest.approx(result.history[best - 1]["val_loss"])


def test_ema_resumes_exactly_and_its_decay_is_checked(phantom_data, tmp_path):
    train_dir, val_dir, _ = phantom_data
    recipe = dict(val=str(val_dir), epochs=3, ema=0.9)
    whole = train(tiny_config(train_dir, tmp_path / "a" / "m.pt", **recipe))
    out_b = tmp_path / "b" / "m.pt"
    train(tiny_config(train_dir, out_b, **{**recipe, "epochs": 2}))
    resumed = train(tiny_config(train_dir, out_b, resume=True, **recipe))
    assert_same_weights(state(whole.model), state(resumed.model))
    assert [r["val_loss"] for r in whole.history] == [r["val_loss"] for r in resumed.history]
    for bad in (1.0, -0.1):
        with pytest.raises(FemurUNetError, match="ema decay must be at least 0 and below 1"):
            train(tiny_config(train_dir, tmp_path / "c.pt", ema=bad))


def test_resume_refuses_a_changed_recipe_and_a_missing_checkpoint(phantom_data, tmp_path):
    train_dir, _, _ = phantom_data
    out = tmp_path / "m.pt"
    train(tiny_config(train_dir, out, epochs=1))
    with pytest.raises(FemurUNetError, match="lr=0.01.*checkpoint was trained with lr=0.003"):
        train(tiny_config(train_dir, out, epochs=2, lr=1e-2, resume=True))
    longer = train(tiny_config(train_dir, out, epochs=2, resume=True))            # more epochs is allowed
    assert longer.epochs_completed == 2
    with pytest.raises(FemurUNetError, match="no checkpoint to resume from"):
        train(tiny_config(train_dir, tmp_path / "other.pt", resume=True))


def test_cli_bce_weight_reaches_the_model_provenance_and_is_part_of_the_recipe(phantom_data, tmp_path, capsys):
    train_dir, _, _ = phantom_data
    out = tmp_path / "bce.pt"
    common = ["train", str(train_dir), "--out", str(out), "--base-filters", "4", "--input-size", str(SIZE),
              "--steps-per-epoch", "2", "--batch-size", "2", "--threads", "1", "--quiet"]
    assert femurunet([*common, "--epochs", "1", "--bce-weight", "0.5"]) == 0
    training = load_model(out).metadata["training"]
    assert training["loss_function"] == "1 - Dice (smooth 1, flattened batch) + 0.5 x mean binary cross-entropy"
    assert torch.load(checkpoint_path(out), weights_only=True)["config"]["bce_weight"] == 0.5
    line = json.loads(Path(str(out).replace(".pt", ".log.jsonl")).read_text().splitlines()[0])
    assert 0 < line["loss"] < 1 and line["dice"] == pytest.approx(1 - line["loss"])   # logged: 1 - Dice
    capsys.readouterr()
    assert femurunet([*common, "--epochs", "2", "--bce-weight", "1", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bce_weight=1.0" in err and "bce_weight=0.5" in err
    assert femurunet([*common, "--epochs", "2", "--resume"]) == 0                      # the checkpoint's weight
    assert load_model(out).metadata["training"]["loss_function"].endswith("0.5 x mean binary cross-entropy")
    assert femurunet([*common, "--epochs", "1", "--bce-weight", "-1"]) == 2
    assert "bce-weight must be 0 or more, got -1.0" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_sigkill_of_the_cli(phantom_data, tmp_path):
    train_dir, _, _ = phantom_data
    args = ["train", str(train_dir), "--epochs", "8", "--steps-per-epoch", "4", "--batch-size", "4", "--lr", "3e-3",
            "--base-filters", "4", "--input-size", str(SIZE), "--seed", "7", "--threads", "1", "--quiet"]
    assert femurunet(args + ["--out", str(tmp_path / "a.pt")]) == 0
    killed_out = tmp_path / "b.pt"
    proc = subprocess.Popen([sys.executable, "-m", "FemurUNetTrainLib.cli", *args, "--out", str(killed_out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "b.log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(checkpoint_path(killed_out), weights_only=True)["epoch"]
    assert 2 <= done < 8, "the run finished before it could be killed"
    assert femurunet(args + ["--out", str(killed_out), "--resume"]) == 0
    assert_same_weights(load_model(tmp_path / "a.pt").state_dict(), load_model(killed_out).state_dict())
    assert torch.load(checkpoint_path(killed_out), weights_only=True)["epoch"] == 8


# --- options ------------------------------------------------------------------------------------------------------------

def test_early_stopping_and_plateau_schedule(phantom_data, tmp_path):
    train_dir, val_dir, _ = phantom_data
    # a learning rate far too high: the net collapses to empty output, the monitor stops improving
    r = train(tiny_config(train_dir, tmp_path / "m.pt", val=str(val_dir), epochs=12, steps_per_epoch=2, lr=3.0,
                          early_stopping=2, lr_schedule="plateau", lr_patience=0, lr_factor=0.1))
    assert r.early_stopped and r.epochs_completed < 12
    assert r.epochs_completed == r.best_epoch + 2
    lrs = [h["lr"] for h in r.history]
    assert lrs[0] == 3.0 and lrs[-1] < 3.0 and all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_amp_auto_is_bf16_on_a_cpu_with_native_bf16_else_off():
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) == (torch.bfloat16 if cpu_supports_bf16() else None)
    assert amp_dtype("off", cpu) is None and amp_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(FemurUNetError, match="fp16 needs CUDA"):
        amp_dtype("fp16", cpu)


def test_warmup_scales_the_first_steps_and_leaves_the_schedule_alone(phantom_data, tmp_path):
    config = tiny_config("x", "m.pt", steps_per_epoch=4, warmup_epochs=2)
    assert [warmup_factor(config, e, s) for e in range(3) for s in range(4)] == \
        [1 / 8, 2 / 8, 3 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8, 1, 1, 1, 1, 1]
    assert warmup_factor(tiny_config("x", "m.pt"), 0, 0) == 1.0             # default: the seed's constant rate
    train_dir, _, _ = phantom_data
    one_step = dict(epochs=1, steps_per_epoch=1, dropout=False, lr=1e-3)
    torch.manual_seed(7)
    start = state(UNet2D(base_filters=4))                                    # train() seeds its init with seed 7
    plain = state(train(tiny_config(train_dir, tmp_path / "a" / "m.pt", **one_step)).model)
    warm = train(tiny_config(train_dir, tmp_path / "b" / "m.pt", warmup_epochs=4, **one_step))
    step_plain = max((plain[k] - start[k]).abs().max().item() for k in start)
    step_warm = max((state(warm.model)[k] - start[k]).abs().max().item() for k in start)
    assert step_plain == pytest.approx(1e-3, rel=0.01)                       # Adam's first step: lr per weight
    assert step_warm == pytest.approx(0.25e-3, rel=0.01)                     # 1 of 4 warm-up steps
    assert warm.history[0]["lr"] == 1e-3
    assert load_model(warm.model_path).metadata["training"]["warmup_epochs"] == 4


def test_a_collapsed_run_stops_with_one_line_and_keeps_the_best_model(phantom_data, tmp_path, monkeypatch, capsys):
    learned, empty = {"dice": 0.9}, {"dice": 1e-4}
    assert collapsed([learned, empty, empty, empty]) and not collapsed([learned, empty, empty])
    assert not collapsed([{"dice": 0.3}, empty, empty, empty])       # never learned: early stopping's business
    assert not collapsed([learned, empty, {"dice": 0.2}, empty])
    train_dir, val_dir, _ = phantom_data
    out = tmp_path / "m.pt"
    monkeypatch.setattr(train_module, "collapsed", lambda history: len(history) == 2)
    code = femurunet(["train", str(train_dir), "--val", str(val_dir), "--out", str(out), "--epochs", "5",
                      "--steps-per-epoch", "2", "--batch-size", "4", "--base-filters", "4",
                      "--input-size", str(SIZE), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "training collapsed at epoch 2" in err and "lower --lr" in err and str(out) in err
    assert load_model(out).metadata["training"]["epoch"] in (1, 2)
    assert len((tmp_path / "m.log.jsonl").read_text().splitlines()) == 2


def test_training_without_validation_monitors_the_training_loss(phantom_data, tmp_path):
    train_dir, _, _ = phantom_data
    r = train(tiny_config(train_dir, tmp_path / "m.pt", epochs=3))
    assert r.monitor == "loss" and all(h["val_loss"] is None for h in r.history)
    assert r.best_epoch == int(np.argmin([h["loss"] for h in r.history])) + 1
    assert load_model(tmp_path / "m.pt").metadata["training"]["monitor"] == "loss"


def test_val_cases_hold_out_whole_cases_drawn_with_the_seed(phantom_data, tmp_path, capsys):
    train_dir, _, _ = phantom_data
    r = train(tiny_config(train_dir, tmp_path / "m.pt", epochs=2, steps_per_epoch=1, val_cases=2))
    t = load_model(tmp_path / "m.pt").metadata["training"]
    everything = sorted(f"p{seed}" for seed in TRAIN_SEEDS)
    assert len(t["val_cases"]) == 2 and sorted(t["cases"] + t["val_cases"]) == everything
    assert t["train_slices"] + t["val_slices"] == 20 * len(TRAIN_SEEDS)
    assert r.monitor == "val_loss" and all(h["val_loss"] is not None for h in r.history)
    again = train(tiny_config(train_dir, tmp_path / "again.pt", epochs=1, steps_per_epoch=1, val_cases=2))
    assert load_model(again.model_path).metadata["training"]["val_cases"] == t["val_cases"]     # same seed, same split
    assert femurunet(["train", str(train_dir), "--out", str(tmp_path / "no.pt"), "--val-cases", str(len(TRAIN_SEEDS)),
                 "--epochs", "1"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"--val-cases {len(TRAIN_SEEDS)} leaves no training case "
                                                    f"(the folder has {len(TRAIN_SEEDS)} case(s))")
    assert not (tmp_path / "no.pt").exists()


def test_init_fine_tunes_from_a_model_that_fits_the_run(phantom_data, tmp_path, capsys):
    train_dir, val_dir, _ = phantom_data
    torch.manual_seed(123)
    start = save_model(UNet2D(base_filters=4), tmp_path / "start.pt", input_size=SIZE,
                       window={"center": WINDOW[0], "width": WINDOW[1]}, training={"epochs": 7, "seed": 3})
    start_weights = state(load_model(start))
    still = dict(epochs=1, lr=1e-12, val=str(val_dir))               # a rate too small to move the weights
    tuned = train(tiny_config(train_dir, tmp_path / "tuned.pt", init=str(start), **still)).model
    fresh = train(tiny_config(train_dir, tmp_path / "fresh.pt", **still)).model
    for name, value in state(tuned).items():
        assert torch.allclose(value, start_weights[name], atol=1e-6), name
    assert not torch.allclose(state(fresh)["head.weight"], start_weights["head.weight"])
    tuned_training = load_model(tmp_path / "tuned.pt").metadata["training"]
    assert tuned_training["init"] == str(start) and tuned_training["init_training"] == {"epochs": 7, "seed": 3}
    train(tiny_config(train_dir, tmp_path / "tuned.pt", init=str(start), resume=True, **{**still, "epochs": 2}))
    resumed = torch.load(checkpoint_path(tmp_path / "tuned.pt"), weights_only=True)
    assert resumed["epoch"] == 2 and resumed["init_training"] == {"epochs": 7, "seed": 3}   # the chain survives
    blend = {"weight": 0.5, "tuned": "a.pt", "start": "b.pt"}
    blended = save_model(load_model(start), tmp_path / "blended.pt", blend=blend, min_field_mm=300.0, smooth_z_mm=3.0)
    train(tiny_config(train_dir, tmp_path / "from_blend.pt", init=str(blended), **still))  # a blend starts the run
    from_blend = load_model(tmp_path / "from_blend.pt").metadata
    assert from_blend["training"]["init_training"] == {"epochs": 7, "seed": 3, "blend": blend}
    assert from_blend["min_field_mm"] == 0.0        # trained on unpadded slices: inference pads none either
    assert from_blend["smooth_z_mm"] == 0.0         # a written model smooths only when set_model_defaults.py says so
    # a model that does not fit the run: one line naming the file and the mismatch, nothing written
    stacked = save_model(add_input_slices(load_model(start), (0.0, 8.0)), tmp_path / "stacked.pt")
    for change, message in ((dict(base_filters=6), "--base-filters 6: a model of base 4 widens only to a multiple "
                                                   "of 4"),
                            (dict(input_size=32), "input_size 64, but this run needs 32"),
                            (dict(init=str(stacked)), "reads 2 neighbouring slices, but a PNG slice folder holds one "
                                                      "slice per image: train it with femurunet train-phantoms")):
        init = change.pop("init", str(start))
        with pytest.raises(FemurUNetError, match=message) as err:
            train(tiny_config(train_dir, tmp_path / "no.pt", init=init, **change))
        assert init in str(err.value) and "\n" not in str(err.value)
        assert not (tmp_path / "no.pt").exists()
    # a multiple of the width widens the --init model: the same outputs to start from
    wide = train(tiny_config(train_dir, tmp_path / "wide.pt", init=str(start), base_filters=8, **still)).model
    x = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        expected, got = load_model(start).logits(x), load_model(tmp_path / "wide.pt").logits(x)
    assert wide.base_filters == 8 and torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    # the CLI takes the width and input size from the --init model
    assert femurunet(["train", str(train_dir), "--out", str(tmp_path / "cli.pt"), "--init", str(start),
                      "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--threads", "1",
                      "--quiet"]) == 0
    meta = load_model(tmp_path / "cli.pt").metadata
    assert meta["base_filters"] == 4 and meta["input_size"] == SIZE and meta["training"]["init"] == str(start)
    assert "done: 1 epoch in" in capsys.readouterr().out


def test_cli_train_errors_are_one_line(phantom_data, tmp_path, capsys):
    train_dir, _, _ = phantom_data
    assert femurunet(["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err and "no such data folder" in err
    assert femurunet(["train", str(train_dir), "--out", str(tmp_path / "m.pt"), "--input-size", "50"]) == 2
    assert "multiple of 16" in capsys.readouterr().err
    bad = tmp_path / "bad"
    shutil.copytree(train_dir, bad)
    (bad / "label" / sorted(os.listdir(bad / "label"))[0]).unlink()
    assert femurunet(["train", str(bad), "--out", str(tmp_path / "m.pt"), "--input-size", str(SIZE)]) == 2
    assert "without a label/ partner" in capsys.readouterr().err


# --- DDP ----------------------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, config: TrainConfig, outdir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    result = train(config)
    torch.save({"state": result.model.state_dict(), "history": result.history}, Path(outdir) / f"rank{rank}.pt")


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(phantom_data, tmp_path):
    train_dir, val_dir, _ = phantom_data
    config = tiny_config(train_dir, tmp_path / "ddp" / "m.pt", val=str(val_dir), epochs=2, steps_per_epoch=3,
                         batch_size=4, lr=1e-3, dropout=False, threads=None)
    mp.start_processes(_ddp_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert_same_weights(r0["state"], r1["state"])                     # DDP keeps the replicas identical
    assert (tmp_path / "ddp" / "m.pt").exists() and len((tmp_path / "ddp" / "m.log.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "rank1").exists()
    single = train(TrainConfig(**{**config.__dict__, "out": str(tmp_path / "one" / "m.pt"), "threads": 1}))
    for k, v in single.model.state_dict().items():                    # same global batch, same gradient
        torch.testing.assert_close(r0["state"][k], v, atol=2e-5, rtol=1e-4)
    for a, b in zip(r0["history"], single.history):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
    assert load_model(tmp_path / "ddp" / "m.pt").metadata["training"]["world_size"] == 2


@pytest.mark.slow
def test_torchrun_cli_two_processes(phantom_data, tmp_path):
    train_dir, val_dir, _ = phantom_data
    out = tmp_path / "m.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "FemurUNetTrainLib.cli", "train", str(train_dir), "--val", str(val_dir), "--out", str(out), "--epochs", "2",
           "--steps-per-epoch", "2", "--batch-size", "4", "--base-filters", "4", "--input-size", str(SIZE), "--quiet"]
    scratch = tmp_path / "tmp"                                         # torchrun's own folders end up here
    scratch.mkdir()
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(scratch)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("done: 2 epochs") == 1                    # only process 0 reports and writes
    meta = load_model(out).metadata["training"]
    assert meta["world_size"] == 2 and meta["batch_size"] == 4
    assert len((tmp_path / "m.log.jsonl").read_text().splitlines()) == 2


def test_cli_train_passes_augmentation_options_into_the_provenance(phantom_data, tmp_path, capsys):
    train_dir, _, _ = phantom_data
    out = tmp_path / "m.pt"
    assert femurunet(["train", str(train_dir), "--out", str(out), "--epochs", "1", "--steps-per-epoch", "1",
                      "--batch-size", "2", "--base-filters", "4", "--input-size", str(SIZE), "--threads", "1",
                      "--rotation-range", "5", "--zoom-range", "0.9,1.2", "--no-horizontal-flip",
                      "--fill-mode", "constant", "--quiet"]) == 0
    assert "done: 1 epoch in" in capsys.readouterr().out
    aug = load_model(out).metadata["training"]["augment"]
    assert aug["rotation_range"] == 5.0 and aug["zoom_range"] == [0.9, 1.2] and not aug["horizontal_flip"]
    assert aug["fill_mode"] == "constant" and aug["width_shift_range"] == 0.05      # untouched: the seed's
    assert femurunet(["train", str(train_dir), "--out", str(out), "--zoom-range", "1.2,0.9"]) == 2
    assert "zoom range" in capsys.readouterr().err
