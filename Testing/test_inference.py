import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from FemurUNetLib import Cancelled, FemurUNetError, Geometry, UNet2D, segment_volume
from FemurUNetLib.geometry import Reorientation
from FemurUNetLib.device import autocast_dtype, pick_device
from FemurUNetLib.modelfile import model_metadata
from conftest import expected_threshold_labels, threshold_unet


def blob_volume(shape=(12, 256, 256), seed=0):
    """Smooth HU volume: soft tissue with a few bright ellipsoids, so resizing changes little."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    hu = np.full(shape, 40.0)
    for _ in range(4):
        c = rng.uniform(-0.5, 0.5, 3)
        r = rng.uniform(0.2, 0.4, 3)
        hu[((k - c[0]) / r[0]) ** 2 + ((j - c[1]) / r[1]) ** 2 + ((i - c[2]) / r[2]) ** 2 < 1] = 900
    return hu.astype(np.int16)


def test_labelmap_is_voxel_exact_on_the_input_grid(threshold_model):
    hu = blob_volume()
    g = Geometry((0.8, 0.8, 2.5), (10.0, -20.0, 30.0), np.eye(3))
    r = segment_volume(hu, g, threshold_model, device="cpu", autocast=False, keep_all_pieces=True)
    assert r.labelmap.dtype == np.uint8 and r.labelmap.shape == hu.shape
    assert r.geometry == g
    assert np.array_equal(r.labelmap, expected_threshold_labels(hu))


@pytest.mark.parametrize("seed", range(4))
def test_any_direction_gives_the_same_physical_labels(threshold_model, seed):
    """The same anatomy stored with permuted/flipped/oblique axes gets the same labels voxel for voxel."""
    rng = np.random.default_rng(seed)
    canonical = blob_volume((9, 256, 256), seed)
    perm = rng.permutation(3)
    flips = rng.random(3) < 0.5
    # build a stored array + direction whose canonical view is `canonical`
    stored = np.transpose(canonical, perm)        # stored numpy axis s <- canonical numpy axis perm[s]
    stored = stored[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    direction = np.zeros((3, 3))
    for numpy_axis in range(3):
        world = 2 - perm[numpy_axis]             # canonical numpy axis -> world axis (z, y, x)
        index_axis = 2 - numpy_axis
        direction[world, index_axis] = -1.0 if flips[numpy_axis] else 1.0
    g = Geometry((1.0, 1.0, 1.0), (0, 0, 0), direction)
    r = Reorientation.for_geometry(g)
    assert np.array_equal(r.to_canonical(stored), canonical)
    out = segment_volume(stored, g, threshold_model, autocast=False, keep_all_pieces=True).labelmap
    ref = segment_volume(canonical, None, threshold_model, autocast=False, keep_all_pieces=True).labelmap
    assert np.array_equal(r.to_canonical(out), ref)
    assert ref.any()


@pytest.mark.parametrize("shape", [(6, 300, 180), (6, 180, 300), (4, 512, 512), (4, 128, 128)])
def test_slices_needing_resize_still_land_in_place(shape):
    """Pad + resize to 256 and back: same labels up to boundary resampling, no shift (a half-pixel error fails)."""
    midpoint = (40 + 900) / 2                       # threshold halfway up the edge: blurring cannot grow it
    net = threshold_unet(midpoint)
    hu = blob_volume(shape)
    got = segment_volume(hu, None, net, autocast=False, keep_all_pieces=True).labelmap.astype(bool)
    exp = expected_threshold_labels(hu, midpoint).astype(bool)
    assert 2 * (got & exp).sum() / (got.sum() + exp.sum()) > 0.99
    for axis in (1, 2):
        idx = np.arange(hu.shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)])
        assert abs((idx * got).sum() / got.sum() - (idx * exp).sum() / exp.sum()) < 0.25


@pytest.mark.parametrize("autocast", [False, True])
def test_batch_size_does_not_change_the_result(autocast):
    torch.manual_seed(0)
    net = UNet2D(base_filters=4)
    hu = blob_volume((11, 96, 80))
    kw = dict(autocast=autocast, return_probabilities=True)
    a = segment_volume(hu, None, net, batch_size=1, **kw)
    b = segment_volume(hu, None, net, batch_size=7, **kw)
    assert np.array_equal(a.labelmap, b.labelmap)
    assert np.allclose(a.probabilities, b.probabilities, atol=1e-6 if not autocast else 1e-2)
    assert a.probabilities.dtype == np.float32 and 0 <= a.probabilities.min() <= a.probabilities.max() <= 1


def test_volume_without_bone_gives_an_empty_labelmap(threshold_model):
    air_and_tissue = np.where(blob_volume((5, 64, 64)) > 100, 40, -1000).astype(np.int16)
    assert not segment_volume(air_and_tissue, None, threshold_model).labelmap.any()


def test_progress_reports_every_batch_and_cancel_leaves_nothing(threshold_model):
    hu = blob_volume((10, 64, 64))
    seen = []
    segment_volume(hu, None, threshold_model, batch_size=4, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(4, 10), (8, 10), (10, 10)]
    calls = []
    with pytest.raises(Cancelled):
        segment_volume(hu, None, threshold_model, batch_size=4, cancel=lambda: len(calls) >= 2,
                       progress=lambda d, t: calls.append(d))
    assert calls == [4, 8]


class OutOfMemoryAboveTwo(UNet2D):
    """A real UNet2D that fails like an exhausted accelerator for batches larger than two slices."""
    def forward(self, x):
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


@pytest.mark.parametrize("fast", [False, True], ids=["every slice", "fast"])
def test_out_of_memory_halves_the_batch_and_keeps_the_result(fast):
    torch.manual_seed(0)
    net = OutOfMemoryAboveTwo(base_filters=4)
    hu = blob_volume((9, 64, 64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = segment_volume(hu, None, net, batch_size=8, autocast=False, fast=fast)
    assert r.batch_size == 2
    assert [str(w.message) for w in caught if "out of memory" in str(w.message)] == [
        "out of memory on cpu at batch size 8; retrying with 4",
        "out of memory on cpu at batch size 4; retrying with 2"]
    plain = UNet2D(base_filters=4)
    plain.load_state_dict(net.state_dict())
    ref = segment_volume(hu, None, plain, batch_size=2, autocast=False, fast=fast)
    assert np.array_equal(r.labelmap, ref.labelmap) and ref.labelmap.any()


def test_bad_inputs_are_refused_with_a_clear_message(threshold_model):
    with pytest.raises(FemurUNetError, match="3-D volume"):
        segment_volume(np.zeros((64, 64)), None, threshold_model)
    with pytest.raises(FemurUNetError, match="dtype"):
        segment_volume(np.zeros((2, 8, 8), dtype=complex), None, threshold_model)
    with pytest.raises(FemurUNetError, match="batch size"):
        segment_volume(np.zeros((2, 8, 8)), None, threshold_model, batch_size=-1)


def test_device_choice():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else pick_device("auto").type)
    if not torch.cuda.is_available():
        with pytest.raises(FemurUNetError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(FemurUNetError, match="unknown"):
        pick_device("tpu9")
    assert autocast_dtype(torch.device("cpu"), enabled=False) is None
    assert autocast_dtype(torch.device("cuda"), enabled=True) in (torch.bfloat16, torch.float16) \
        if torch.cuda.is_available() else True


MEMORY_PROBE = r"""
import resource, sys, numpy as np, torch
torch.set_num_threads(1)
from FemurUNetLib import UNet2D, segment_volume
depth = int(sys.argv[1])
torch.manual_seed(0)
net = UNet2D(base_filters=4)
vol = np.zeros((2, 512, 512), np.int16)
options = dict(batch_size=4, autocast=False, keep_all_pieces=True)   # the slice loop (the removal pass: DESIGN)
segment_volume(vol, None, net, **options)      # warm up allocator and kernels
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
vol = np.full((depth, 512, 512), 40, np.int16)
segment_volume(vol, None, net, **options)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""


@pytest.mark.slow
def test_memory_grows_only_by_input_and_labelmap():
    n = 24
    growth = {}
    for depth in (n, 4 * n):
        out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(depth)], capture_output=True, text=True,
                             check=True)
        growth[depth] = int(out.stdout.strip().splitlines()[-1])
    slice_voxels = 512 * 512
    expected = 3 * n * slice_voxels * (2 + 1)          # extra int16 input + uint8 labelmap for 3n more slices
    float_copy = 4 * n * slice_voxels * 4              # what holding the volume as float32 would add
    assert growth[4 * n] - growth[n] < expected + float_copy / 2, growth


class CountingUNet(UNet2D):
    """A real UNet2D that counts the slices it is run on."""
    slices_seen = 0

    def forward(self, x):
        type(self).slices_seen += x.shape[0]
        return super().forward(x)


def test_mirror_averages_each_slice_with_its_left_right_mirror():
    torch.manual_seed(0)
    net = UNet2D(base_filters=4).eval()          # random weights: not mirror-symmetric
    net.metadata = model_metadata(net)
    hu = blob_volume((4, 64, 64))                # square slices: no padding, so the mirror is exact
    plain = segment_volume(hu, None, net, autocast=False, return_probabilities=True).probabilities
    mirrored = segment_volume(np.ascontiguousarray(hu[:, :, ::-1]), None, net, autocast=False,
                              return_probabilities=True).probabilities[:, :, ::-1]
    r = segment_volume(hu, None, net, autocast=False, return_probabilities=True, mirror=True, batch_size=3)
    expected = (plain + mirrored) / 2
    assert np.abs(plain - mirrored).max() > 1e-3                  # the two passes really differ
    assert np.allclose(r.probabilities, expected, atol=1e-6)
    clear = np.abs(expected - 0.5) > 1e-5
    assert np.array_equal(r.labelmap[clear], (expected[clear] > 0.5).astype(np.uint8))


def test_a_small_field_is_padded_with_air_to_the_minimum_field():
    """min_field_mm: the probabilities of the slices padded with air to that field of view, cropped back; the
    in-plane spacing sets the padding (not the slice spacing); the model's metadata gives the default."""
    torch.manual_seed(0)
    net = UNet2D(base_filters=4).eval()
    net.metadata = model_metadata(net)
    hu, g = blob_volume((3, 48, 40)), Geometry((2.0, 2.0, 0.5))        # a 80 x 96 mm field
    padded = np.full((3, 100, 100), -1000, np.int16)                  # 200 mm at 2 mm, the slices centred
    padded[:, 26:74, 30:70] = hu
    run = lambda volume, **kw: segment_volume(volume, g, net, autocast=False, return_probabilities=True,
                                              keep_all_pieces=True, **kw)
    expected = run(padded).probabilities[:, 26:74, 30:70]
    r = run(hu, min_field_mm=200)
    assert r.stats["min_side"] == 100 and r.stats["padded_field_mm"] == 200
    assert np.allclose(r.probabilities, expected, atol=1e-6)
    assert np.array_equal(r.labelmap, (r.probabilities > 0.5).astype(np.uint8))
    plain = run(hu).probabilities
    assert np.abs(plain - expected).max() > 1e-3                      # the padding changes what the network sees
    large = run(hu, min_field_mm=90)                                  # the field is already that large
    assert np.array_equal(large.probabilities, plain) and large.stats["padded_field_mm"] == 0
    net.metadata["min_field_mm"] = 200.0
    assert np.allclose(run(hu).probabilities, expected, atol=1e-6)
    assert np.array_equal(run(hu, min_field_mm=0).probabilities, plain)
    with pytest.raises(FemurUNetError, match="minimum field of view must be 0..2000 mm, got -1"):
        run(hu, min_field_mm=-1)


@pytest.mark.parametrize("depth", [9, 10])
def test_fast_runs_every_other_slice_and_fills_from_neighbours(depth):
    net = CountingUNet(base_filters=4)
    net.load_state_dict(threshold_unet().state_dict())
    hu = np.repeat(blob_volume((5, 64, 64))[2:3], depth, axis=0)
    hu[1::2] = -1000                               # skipped slices hold air: only the neighbours can fill them
    CountingUNet.slices_seen = 0
    seen = []
    r = segment_volume(hu, None, net, autocast=False, fast=True, batch_size=3, return_probabilities=True,
                       progress=lambda d, t: seen.append((d, t)))
    predicted = list(range(0, depth, 2)) + ([depth - 1] if depth % 2 == 0 else [])
    assert CountingUNet.slices_seen == len(predicted)
    assert seen[-1] == (depth, depth)
    exact = expected_threshold_labels(hu)
    for k in predicted:
        assert np.array_equal(r.labelmap[k], exact[k])
    full = segment_volume(hu, None, net, autocast=False, return_probabilities=True)
    for k in range(1, depth - 1, 2):
        if k in predicted:
            continue
        mean = (full.probabilities[k - 1] + full.probabilities[k + 1]) / 2
        assert np.allclose(r.probabilities[k], mean, atol=1e-6)
        assert np.array_equal(r.labelmap[k], (mean > 0.5).astype(np.uint8))
        assert np.array_equal(r.labelmap[k], exact[k - 1])    # both neighbours agree: the fill is theirs
    assert exact[0].any() and not full.labelmap[1::2].any()


def test_a_model_is_named_by_its_file_loaded_or_not_and_by_nothing_in_memory(tmp_path):
    import hashlib
    from FemurUNetLib.modelfile import load_model, save_model
    from FemurUNetLib.paths import DEFAULT_MODEL_PATH
    from FemurUNetLib.resolve import model_identity, model_source
    from conftest import threshold_unet
    path = save_model(threshold_unet(), tmp_path / "folder of a patient" / "t.pt")
    identity = {"model": "t.pt", "model_sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}
    assert model_identity(path) == model_identity(load_model(path)) == identity      # no folder in it
    assert model_source(load_model(path)) == str(path.resolve()) and model_source(None) == str(DEFAULT_MODEL_PATH)
    assert model_identity(threshold_unet()) == {"model": "(a model in memory)"}


def test_a_model_file_changed_in_place_gets_a_new_digest(tmp_path):
    import os
    from FemurUNetLib.modelfile import save_model
    from FemurUNetLib.resolve import model_identity
    from conftest import threshold_unet
    path = save_model(threshold_unet(100.0), tmp_path / "m.pt")
    first = model_identity(path)["model_sha256"]
    assert model_identity(path)["model_sha256"] == first
    save_model(threshold_unet(900.0), path)
    os.utime(path, ns=(1, 1))                           # even with an old time stamp: the size or time differs
    assert model_identity(path)["model_sha256"] != first
