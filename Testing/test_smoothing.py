"""Smoothing along the slice axis (``smoothing.SliceSmoother``, ``segment_volume(smooth_z_mm=...)``): the streamed
average equals scipy's Gaussian filter, it bridges a missed slice and drops a lone false one, and the model's
metadata gives the default."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from FemurUNetLib import segment_volume
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.geometry import Geometry
from FemurUNetLib.model import UNet2D
from FemurUNetLib.modelfile import load_model, save_model
from FemurUNetLib.smoothing import SliceSmoother, gaussian_weights


def streamed(probs: np.ndarray, sigma_mm: float, spacing_mm: float, batches) -> np.ndarray:
    """``probs`` (K, H, W) pushed through a SliceSmoother in batches of the given sizes (cycled)."""
    smoother = SliceSmoother(sigma_mm, spacing_mm, len(probs))
    out, first, turn = np.full(probs.shape, np.nan, np.float32), 0, 0
    while first < len(probs):
        stop = min(len(probs), first + batches[turn % len(batches)])
        finished = smoother.push(first, torch.from_numpy(probs[first:stop, None]))
        if finished is not None:
            start, block = finished
            assert np.isnan(out[start:start + len(block)]).all()          # each slice finished once
            out[start:start + len(block)] = block[:, 0].numpy()
        first, turn = stop, turn + 1
    return out


@pytest.mark.parametrize("sigma_mm, spacing_mm, slices, batches", [
    (3.0, 1.0, 40, [8]), (3.0, 5.0, 12, [3, 1]), (3.0, 0.5, 25, [1]), (2.0, 1.25, 5, [2]), (3.0, 1.0, 1, [4]),
    (10.0, 1.0, 30, [7, 64])])
def test_the_streamed_average_is_scipys_gaussian_filter_with_the_end_slices_repeated(sigma_mm, spacing_mm, slices,
                                                                                       batches):
    probs = np.random.default_rng(slices).random((slices, 3, 4)).astype(np.float32)
    want = gaussian_filter1d(probs, sigma_mm / spacing_mm, axis=0, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(streamed(probs, sigma_mm, spacing_mm, batches), want, atol=1e-6)


def test_the_weights_sum_to_one_over_three_sigma_and_zero_sigma_is_the_slice_itself():
    assert gaussian_weights(0.0) == [1.0] and len(gaussian_weights(2.0)) == 13 and len(gaussian_weights(0.6)) == 5
    assert sum(gaussian_weights(2.0)) == pytest.approx(1.0)
    probs = np.random.default_rng(1).random((6, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(streamed(probs, 0.0, 1.0, [4]), probs)


def test_a_missed_slice_in_a_bone_is_bridged_and_a_lone_false_slice_goes():
    column = np.full((21, 1, 1), 0.95, np.float32)
    column[10] = 0.05                                                  # the network missed one 1 mm slice
    assert streamed(column, 3.0, 1.0, [8])[10, 0, 0] > 0.5
    short = np.zeros((21, 1, 1), np.float32)
    short[9:12] = 0.9                                                  # 3 mm of labels on another bone
    assert streamed(short, 3.0, 1.0, [8]).max() < 0.5
    thick = np.zeros((9, 1, 1), np.float32)
    thick[4] = 0.9                                                     # one 5 mm slice: a neighbour weighs 1/4
    assert streamed(thick, 3.0, 5.0, [8])[4, 0, 0] > 0.5 > streamed(thick, 3.0, 5.0, [8])[3, 0, 0]


@pytest.mark.parametrize("direction, axis", [(None, 0), (((0, 0, 1), (0, 1, 0), (-1, 0, 0)), 2)])
def test_segment_volume_smooths_along_the_scans_slice_axis_in_mm(direction, axis):
    torch.manual_seed(3)
    model = UNet2D(base_filters=4).eval()
    with torch.no_grad():
        model.head.bias += 0.125                                       # probabilities around the threshold
    hu = np.random.default_rng(2).integers(-1000, 1500, (12, 32, 28)).astype(np.int16)
    geometry = Geometry(spacing=(0.8, 0.9, 2.0), direction=np.array(direction or np.eye(3), float).T)
    slice_mm = 2.0 if axis == 0 else 0.8
    plain = segment_volume(hu, geometry, model, autocast=False, return_probabilities=True, keep_all_pieces=True,
                           batch_size=5)
    smooth = segment_volume(hu, geometry, model, autocast=False, return_probabilities=True, keep_all_pieces=True,
                            batch_size=5, smooth_z_mm=3.0)
    want = gaussian_filter1d(plain.probabilities, 3.0 / slice_mm, axis=axis, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(smooth.probabilities, want, atol=1e-5)
    np.testing.assert_array_equal(smooth.labelmap, (want > 0.5).astype(np.uint8))
    assert plain.stats["smooth_z_mm"] == 0.0 and smooth.stats["smooth_z_mm"] == 3.0
    assert 0 < smooth.labelmap.mean() < 1 and (smooth.labelmap != plain.labelmap).any()


def test_the_models_metadata_gives_the_default_and_a_keyword_overrides_it(tmp_path):
    torch.manual_seed(3)
    path = save_model(UNet2D(base_filters=4), tmp_path / "m.pt", smooth_z_mm=2.5)
    model = load_model(path)
    hu = np.random.default_rng(4).integers(-1000, 1500, (9, 24, 24)).astype(np.int16)
    geometry = Geometry(spacing=(1.0, 1.0, 1.0))
    default = segment_volume(hu, geometry, model, autocast=False, keep_all_pieces=True)
    named = segment_volume(hu, geometry, model, autocast=False, keep_all_pieces=True, smooth_z_mm=2.5)
    off = segment_volume(hu, geometry, model, autocast=False, keep_all_pieces=True, smooth_z_mm=0)
    assert default.stats["smooth_z_mm"] == 2.5 and off.stats["smooth_z_mm"] == 0.0
    np.testing.assert_array_equal(default.labelmap, named.labelmap)
    for bad in (-1.0, 51.0):
        with pytest.raises(FemurUNetError, match=rf"^smoothing along the slice axis must be 0\.\.50 mm, got {bad:g}$"):
            segment_volume(hu, geometry, model, smooth_z_mm=bad)
    with pytest.raises(FemurUNetError, match=r"bad\.pt: smooth_z_mm 99 must be a number of mm, 0\.\.50$"):
        save_model(UNet2D(base_filters=4), tmp_path / "bad.pt", smooth_z_mm=99)
    assert not (tmp_path / "bad.pt").exists()
