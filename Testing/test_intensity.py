"""Intensity randomisation (opt-in): drawn ranges and probabilities, each transform measured on the pixels,
identity when off, batch/device behaviour, and the training/CLI/provenance/resume plumbing."""
from __future__ import annotations

import dataclasses
import importlib
import math

import numpy as np
import pytest
import torch

from FemurUNetTrainLib.cli import main as femurunet
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.modelfile import load_model
from FemurUNetLib.phantom import generate_case
from FemurUNetTrainLib.augment import AugmentConfig, augment_batch, select
from FemurUNetTrainLib.export import export_arrays
from FemurUNetTrainLib.intensity import (IntensityConfig, apply_intensity, draw_intensity, intensity_batch,
                                         low_resolution)
from FemurUNetTrainLib.train import TrainConfig, checkpoint_path, train

step_module = importlib.import_module("FemurUNetTrainLib.step")     # where the training step calls them
intensity_module = importlib.import_module("FemurUNetTrainLib.intensity")

WIDTH = 2000.0                     # window width: HU per image unit
KEYS = {"blur": 0.0, "lowres": 1.0, "noise_hu": 0.0, "scale": 1.0, "shift_hu": 0.0, "contrast": 1.0, "gamma": 1.0}
IDENTITY = dict(scale=(1, 1), shift_hu=0, contrast=(1, 1), gamma=(1, 1), blur_sigma=0, lowres_factor=1,
                noise_sd_hu=0)


def only(p=0.3, **kw) -> IntensityConfig:
    """Enabled, every transform at its identity range except those in kw."""
    return IntensityConfig(enabled=True, p=p, **{**IDENTITY, **kw})


def run(images, config, seed=0, width=WIDTH):
    params = draw_intensity(images.shape[0], config, torch.Generator().manual_seed(seed))
    return apply_intensity(images, params, width), params


def changed(out, images) -> torch.Tensor:
    return (out != images).flatten(1).any(dim=1)


def check_applied(out, images, applied, p=0.3, tolerance=0.05):
    """Only the samples drawn for the transform change, and about a fraction p of them is drawn."""
    assert not changed(out, images)[~applied].any()
    assert abs(float(changed(out, images).double().mean()) - p) < tolerance


# --- configuration ------------------------------------------------------------------------------------------------

def test_off_by_default_is_the_identity():
    assert not IntensityConfig().enabled and not TrainConfig().intensity.enabled
    images = torch.rand(6, 1, 16, 16)
    assert intensity_batch(images, IntensityConfig(), torch.Generator().manual_seed(0), WIDTH) is images
    out, params = run(images, IntensityConfig(enabled=True, p=0.0))
    assert torch.equal(out, images) and all(torch.all(params[k] == v) for k, v in KEYS.items())
    out, _ = run(images, only(p=1.0))                  # every transform drawn, all at their identity ranges
    assert torch.equal(out, images)


def test_config_round_trip_and_validation():
    c = IntensityConfig(enabled=True, noise_sd_hu=25, gamma=[0.8, 1.2])
    assert c.gamma == (0.8, 1.2) and IntensityConfig.from_dict(c.to_dict()) == c
    assert IntensityConfig.from_dict(None) == IntensityConfig()
    assert c.to_dict()["gamma"] == [0.8, 1.2]          # JSON-friendly for the provenance
    bad = [dict(p=1.5), dict(p=-0.1), dict(scale=(1.1, 0.9)), dict(contrast=(0, 1)), dict(gamma=(0.5, math.inf)),
           dict(shift_hu=-1), dict(noise_sd_hu=float("nan")), dict(noise_sd_hu=math.inf), dict(blur_sigma=11),
           dict(noise_corr=-1), dict(lowres_factor=0.5), dict(lowres_factor=9)]
    for kw in bad:
        with pytest.raises(ValueError):
            IntensityConfig(**kw)


# --- drawn parameters ---------------------------------------------------------------------------------------------

def test_drawn_parameters_stay_in_their_ranges_with_probability_p():
    n, c = 40_000, IntensityConfig(enabled=True, noise_corr=2.0)
    p = draw_intensity(n, c, torch.Generator().manual_seed(0))
    ranges = {"blur": (0, 1.5), "lowres": (1, 3), "noise_hu": (0, 40), "scale": (0.9, 1.1), "shift_hu": (-50, 50),
              "contrast": (0.75, 1.25), "gamma": (0.7, 1.5)}
    applied = {}
    for key, (low, high) in ranges.items():
        applied[key] = p[key] != KEYS[key]
        v = p[key][applied[key]]
        assert abs(float(applied[key].double().mean()) - 0.3) < 0.01, key
        assert low <= float(v.min()) and float(v.max()) <= high, key
        assert float(v.min()) < low + 0.01 * (high - low) and float(v.max()) > high - 0.01 * (high - low), key
        assert abs(float(v.mean()) - (low + high) / 2) < 0.02 * (high - low), key          # uniform
        assert abs(float(v.std()) - (high - low) / np.sqrt(12)) < 0.02 * (high - low), key
    flags = np.stack([applied[k].numpy() for k in ranges]).astype(float)
    off_diagonal = np.corrcoef(flags)[~np.eye(len(ranges), dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.03                       # each transform has its own draw
    corr = p["noise_corr"]
    assert 0 <= float(corr.min()) and float(corr.max()) <= 2.0 and abs(float(corr.mean()) - 1.0) < 0.02
    assert len(set(p["noise_seed"].tolist())) == n


def test_probability_is_followed_and_the_stream_does_not_depend_on_the_ranges():
    g = lambda: torch.Generator().manual_seed(3)
    for prob in (0.0, 0.5, 1.0):
        p = draw_intensity(20_000, IntensityConfig(enabled=True, p=prob), g())
        for key, identity in KEYS.items():
            assert abs(float((p[key] != identity).double().mean()) - prob) < 0.015, (key, prob)
    a = draw_intensity(500, IntensityConfig(enabled=True), g())
    b = draw_intensity(500, IntensityConfig(enabled=True, noise_sd_hu=10, gamma=(0.9, 1.1)), g())
    assert torch.equal(a["noise_seed"], b["noise_seed"]) and torch.equal(a["blur"], b["blur"])
    assert torch.equal(a["gamma"] != 1, b["gamma"] != 1)
    torch.testing.assert_close(b["noise_hu"], a["noise_hu"] / 4)


# --- each transform, measured on the pixels --------------------------------------------------------------------

def test_scale_shift_contrast_and_gamma_measured_on_the_pixels():
    n = 2000
    images = 0.3 + 0.4 * torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))   # no clamping
    out, p = run(images, only(scale=(0.9, 1.1), shift_hu=50))
    expected = images * p["scale"].float().view(-1, 1, 1, 1) + (p["shift_hu"] / WIDTH).float().view(-1, 1, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    hu = ((out - images) * WIDTH)[(p["scale"] == 1)]               # shift alone: measured in HU
    assert hu.abs().max() <= 50 + 1e-3 and hu.abs().max() > 48
    assert abs(float(changed(out, images).double().mean()) - (1 - 0.7 ** 2)) < 0.05

    out, p = run(images, only(contrast=(0.75, 1.25)))
    ratio = out.flatten(1).std(dim=1) / images.flatten(1).std(dim=1)
    torch.testing.assert_close(ratio.double(), p["contrast"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=1e-6, rtol=0)
    assert 0.75 - 1e-5 <= float(ratio.min()) and float(ratio.max()) <= 1.25 + 1e-5
    check_applied(out, images, p["contrast"] != 1)

    out, p = run(images, only(gamma=(0.7, 1.5)))
    measured = (out.log() / images.log()).flatten(1).mean(dim=1)
    torch.testing.assert_close(measured.double(), p["gamma"], atol=1e-4, rtol=0)
    assert 0.7 - 1e-4 <= float(measured.min()) and float(measured.max()) <= 1.5 + 1e-4
    check_applied(out, images, p["gamma"] != 1)


def test_blur_sigma_measured_on_an_impulse():
    n, size = 1000, 21
    impulse = torch.zeros(n, 1, size, size)
    impulse[..., size // 2, size // 2] = 1.0
    out, p = run(impulse, only(blur_sigma=1.5))
    t = torch.arange(size, dtype=torch.float64) - size // 2
    profile = out[:, 0].double().sum(dim=1)                        # the column profile: 1-D kernel
    torch.testing.assert_close(profile.sum(dim=1), torch.ones(n, dtype=torch.float64), atol=1e-5, rtol=0)
    measured = (profile * t ** 2).sum(dim=1).sqrt()
    check_applied(out, impulse, p["blur"] > 0)
    assert float(measured.max()) <= 1.5
    wide = p["blur"] >= 0.6                                         # the sampled Gaussian's sd is sigma
    assert torch.allclose(measured[wide], p["blur"][wide], rtol=0.03)
    assert torch.allclose(out[:, 0], out[:, 0].transpose(1, 2), atol=1e-6)     # isotropic


def test_low_resolution_keeps_ramps_and_removes_detail_finer_than_its_lattice():
    factors = torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0], dtype=torch.float64)
    ramp = (torch.arange(64.0) / 64).expand(5, 1, 64, 64)
    inner = (..., slice(12, 52), slice(12, 52))
    torch.testing.assert_close(low_resolution(ramp, factors)[inner], ramp[inner], atol=1e-5, rtol=0)
    noise = torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(0)).expand(5, 1, 128, 128)
    out = low_resolution(noise, factors)
    freq = torch.fft.fftfreq(128).abs()
    for i, f in enumerate(factors.tolist()):
        power = torch.fft.fft2(out[i, 0] - out[i, 0].mean()).abs() ** 2
        above = (freq[:, None] > 0.5 / f) | (freq[None, :] > 0.5 / f)  # finer than the coarse lattice's Nyquist
        share = float(power[above].sum() / power.sum())
        assert (share < 0.2) if f > 1 else torch.allclose(out[i], noise[i], atol=1e-5)
    sharpness = out.flatten(1).std(dim=1)
    assert torch.all(sharpness[1:] < sharpness[:-1])               # coarser with the factor
    images = torch.rand(800, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    out, p = run(images, only(lowres_factor=3.0))
    check_applied(out, images, p["lowres"] > 1)
    assert float(p["lowres"].max()) <= 3.0


def lag1(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    return (x[..., 1:] * x[..., :-1]).mean(dim=(-2, -1)) / (x ** 2).mean(dim=(-2, -1))


@pytest.mark.parametrize("corr", [0.0, 2.0])
def test_noise_sd_in_hu_and_its_correlation(corr):
    n = 600
    flat = torch.full((n, 1, 64, 64), 0.5)
    out, p = run(flat, only(noise_sd_hu=40, noise_corr=corr), width=WIDTH)
    noisy = p["noise_hu"] > 0
    check_applied(out, flat, noisy)
    inner = (out - 0.5)[noisy, 0, 8:56, 8:56].double()             # away from the repeated edges
    ratio = inner.flatten(1).std(dim=1) * WIDTH / p["noise_hu"][noisy]
    assert abs(float(ratio.mean()) - 1) < 0.02                     # the drawn sd, in HU
    assert float((ratio - 1).abs().max()) < (0.08 if corr == 0 else 0.3)   # smoothed: fewer independent pixels
    assert float(p["noise_hu"].max()) <= 40
    rho = lag1(inner)
    if corr == 0:
        assert abs(float(rho.mean())) < 0.01 and float(rho.abs().max()) < 0.1
    else:                                                          # smoothed white noise: rho(1) = exp(-1 / 4 s^2)
        s, wide = p["noise_corr"][noisy], p["noise_corr"][noisy] > 1.0
        assert torch.allclose(rho[wide], torch.exp(-1 / (4 * s[wide] ** 2)), atol=0.08)


# --- the whole batch ----------------------------------------------------------------------------------------------

def test_default_set_on_a_batch_in_range_deterministic_and_split_consistent():
    n, size = 64, 32
    g = torch.Generator().manual_seed(4)
    masks = torch.rand(n, 1, size, size, generator=g) > 0.7
    images = (0.2 + 0.6 * masks.float() + 0.1 * torch.rand(n, 1, size, size, generator=g))
    images = images.contiguous(memory_format=torch.channels_last)
    warped, _ = augment_batch(images, masks, AugmentConfig(), torch.Generator().manual_seed(5))
    config = IntensityConfig(enabled=True, noise_corr=1.0)
    out = intensity_batch(warped, config, torch.Generator().manual_seed(6), WIDTH)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out, intensity_batch(warped, config, torch.Generator().manual_seed(6), WIDTH))
    assert not torch.equal(out, intensity_batch(warped, config, torch.Generator().manual_seed(7), WIDTH))
    assert abs(float(changed(out, warped).double().mean()) - (1 - 0.7 ** 7)) < 0.12
    params = draw_intensity(n, config, torch.Generator().manual_seed(6))   # a DDP process' share = its rows
    halves = [apply_intensity(warped[s], select(params, s), WIDTH) for s in (slice(0, 40), slice(40, n))]
    torch.testing.assert_close(torch.cat(halves), out, atol=1e-6, rtol=0)


# --- training, CLI, provenance, resume ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("intensity_pngs")
    for seed in (500, 501):
        case = generate_case(seed, shape=(10, 64, 64))
        export_arrays(case.ct, case.label, case.geometry, root, f"p{seed}", window=(350.0, 1800.0), empty_fraction=1.0)
    return root


def tiny(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), epochs=2, steps_per_epoch=2, batch_size=4, lr=3e-3, base_filters=4,
                input_size=64, seed=7, threads=1, amp="off")
    return TrainConfig(**{**base, **kw})


def test_training_changes_only_the_images_and_leaves_the_geometric_stream(data, tmp_path, monkeypatch):
    def recorder(name, fn):
        def wrapped(*args):
            result = fn(*args)
            seen.setdefault(name, []).append((args, result))
            return result
        return wrapped

    for name in ("apply_augmentation", "apply_intensity", "training_loss"):
        monkeypatch.setattr(step_module, name, recorder(name, getattr(step_module, name)))
    runs = []
    for intensity in (IntensityConfig(enabled=True), IntensityConfig()):
        seen = {}
        train(tiny(data, tmp_path / f"{len(runs)}.pt", epochs=1, intensity=intensity))
        runs.append(seen)
    on, off = runs
    assert "apply_intensity" not in off and len(on["apply_intensity"]) == 2
    for (_, (x_on, y_on)), (_, (x_off, y_off)) in zip(on["apply_augmentation"], off["apply_augmentation"]):
        assert torch.equal(x_on, x_off) and torch.equal(y_on, y_off)           # the same warps
    for (args_on, _), (args_off, _) in zip(on["training_loss"], off["training_loss"]):
        assert torch.equal(args_on[0], args_off[0])                             # the masks the loss sees
    for (args, out), (_, (warped, _)) in zip(on["apply_intensity"], on["apply_augmentation"]):
        assert args[0] is warped and not torch.equal(out, warped)              # after the warp, changing it


def test_training_records_keeps_and_resumes_the_intensity_config(data, tmp_path):
    on = IntensityConfig(enabled=True, p=0.5, noise_sd_hu=30)
    whole = train(tiny(data, tmp_path / "a.pt", intensity=on))
    plain = train(tiny(data, tmp_path / "b.pt"))
    assert whole.history[0]["loss"] != plain.history[0]["loss"]              # it reached the batches
    assert load_model(tmp_path / "a.pt").metadata["training"]["intensity"] == on.to_dict()
    assert load_model(tmp_path / "b.pt").metadata["training"]["intensity"]["enabled"] is False
    cut = train(tiny(data, tmp_path / "c.pt", intensity=on, epochs=1))
    resumed = train(tiny(data, tmp_path / "c.pt", resume=True))             # no intensity given: the checkpoint's
    assert torch.load(checkpoint_path(tmp_path / "c.pt"), weights_only=True)["config"]["intensity"] == on.to_dict()
    assert cut.epochs_completed == 1 and resumed.epochs_completed == 2
    for k, v in whole.model.state_dict().items():                           # exactly the uninterrupted run
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    with pytest.raises(FemurUNetError, match="--resume with intensity="):
        train(tiny(data, tmp_path / "c.pt", resume=True, epochs=3, intensity=dataclasses.replace(on, p=0.2)))


def test_cli_flags_validation_and_provenance(data, tmp_path, capsys):
    out = tmp_path / "m.pt"
    common = ["train", str(data), "--out", str(out), "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
              "--base-filters", "4", "--input-size", "64", "--threads", "1", "--quiet"]
    for bad, message in ((["--noise-sd-hu", "20"], "--noise-sd-hu: needs --intensity-augment"),
                         (["--intensity-augment", "--intensity-p", "1.5"], "p must be in [0, 1], got 1.5"),
                         (["--intensity-augment", "--blur-sigma", "-1"], "blur_sigma must be in [0, 10], got -1"),
                         (["--intensity-augment", "--lowres-factor", "0.5"], "lowres_factor must be in [1, 8]"),
                         (["--intensity-augment", "--noise-corr", "nan"], "noise_corr must be in [0, 10], got nan")):
        assert femurunet([*common, *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()
    assert femurunet(common) == 0
    assert load_model(out).metadata["training"]["intensity"] == IntensityConfig().to_dict()       # off
    assert femurunet([*common, "--intensity-augment", "--noise-sd-hu", "20", "--blur-sigma", "1", "--intensity-p",
                      "0.4", "--lowres-factor", "2", "--noise-corr", "0.5"]) == 0
    recorded = load_model(out).metadata["training"]["intensity"]
    assert recorded == IntensityConfig(enabled=True, noise_sd_hu=20, blur_sigma=1, p=0.4, lowres_factor=2,
                                       noise_corr=0.5).to_dict()
    assert recorded["gamma"] == [0.7, 1.5] and recorded["shift_hu"] == 50.0                  # the documented set
