"""2.5-D inputs (FemurUNetLib.neighbours): each slice with the slices at fixed distances in mm, blended from the
two nearest slices' pictures (each made once), the edge slice repeated; the mm and their direction hold on any
grid; inference feeds a 2.5-D model exactly what the phantom training stream trains it on; a 2.5-D model started
from a one-slice one segments alike."""
import numpy as np
import pytest
import torch

from FemurUNetLib import FemurUNetError, Geometry, UNet2D, segment_volume
from FemurUNetLib.geometry import Reorientation
from FemurUNetLib.modelfile import load_model, model_metadata, save_model
from FemurUNetLib.neighbours import PictureCache, SliceStack, model_offsets, parse_offsets
from FemurUNetLib.phantom2 import generate_case
from FemurUNetTrainLib.phantom_stream import case_slices
from FemurUNetTrainLib.widen import add_input_slices
from test_inference import blob_volume

OFFSETS = (-24.0, -8.0, 0.0, 8.0, 24.0)
WINDOW = {"center": 400.0, "width": 2000.0}


def test_channels_blend_the_two_nearest_slices_pictures_and_repeat_the_edges():
    pictures = (10 * torch.arange(7.0))[:, None, None, None] * torch.ones(1, 1, 2, 2)   # slice k's picture: 10 k
    stack = SliceStack((-3.0, 0.0, 5.0), 2.0, 7)                                       # -1.5, 0, +2.5 slices
    got = stack.blend(pictures, [0, 3, 6])
    assert got.shape == (3, 3, 2, 2) and got.dtype == torch.float32
    expected = 10 * np.clip(np.array([0, 3, 6])[:, None] + np.array([-1.5, 0.0, 2.5]), 0, 6)
    assert np.allclose(got[:, :, 0, 0].numpy(), expected)    # [[0, 0, 25], [15, 30, 55], [45, 60, 60]]
    assert torch.equal(stack.blend(pictures, slice(2, 5)), stack.blend(pictures, [2, 3, 4]))
    one = SliceStack((0.0,), 2.0, 7)
    assert torch.equal(one.blend(pictures.to(torch.uint8), slice(1, 3)), pictures[1:3])


def test_each_slice_is_made_into_a_picture_once():
    made = []
    make = lambda ks: made.extend(ks.tolist()) or (10 * torch.as_tensor(ks, dtype=torch.float32))[:, None, None, None]
    cache = PictureCache(SliceStack((-4.0, 0.0, 4.0), 2.0, 20), make, chunk=4)
    got = torch.cat([cache.inputs(np.arange(k, min(20, k + 6))) for k in range(0, 20, 6)])
    assert sorted(made) == list(range(20))                                  # no slice twice
    expected = 10 * np.clip(np.arange(20)[:, None] + np.array([-2, 0, 2]), 0, 19)
    assert np.array_equal(got[:, :, 0, 0].numpy(), expected)
    assert min(cache.pictures) >= 16                                        # the ones below are let go
    made.clear()
    one = PictureCache(SliceStack((0.0,), 2.0, 20), make, chunk=4)
    assert one.inputs(np.arange(0, 20, 2)).shape == (10, 1, 1, 1) and made == list(range(0, 20, 2))  # --fast


@pytest.mark.parametrize("text, problem", [
    ("-8,x", "expected numbers of mm separated by commas"),
    ("-8,8", "must include 0 (the slice itself)"),
    ("0,8,8", "must be distinct numbers of mm within +-100"),
    ("0,150", "must be distinct numbers of mm within +-100"),
    ("0,nan", "must be distinct numbers of mm within +-100")])
def test_bad_offsets_are_one_line_errors(text, problem):
    with pytest.raises(FemurUNetError) as caught:
        parse_offsets(text)
    assert str(caught.value) == f"slice offsets {text!r}: {problem}"


def test_a_model_of_several_inputs_must_name_its_offsets(tmp_path):
    net = UNet2D(3, 1, 4)
    with pytest.raises(FemurUNetError, match="the model takes 3 input channels but names no slice_offsets_mm"):
        segment_volume(blob_volume((4, 32, 32)), None, net)
    with pytest.raises(FemurUNetError, match="slice_offsets_mm has 2 entries for 3 input channels"):
        save_model(net, tmp_path / "m.pt", slice_offsets_mm=[0.0, 8.0])
    assert not (tmp_path / "m.pt").exists()
    save_model(net, tmp_path / "m.pt", slice_offsets_mm=[-8, 0, 8])
    assert model_offsets(load_model(tmp_path / "m.pt").metadata) == (-8.0, 0.0, 8.0)
    assert model_offsets({"in_channels": 1}) == (0.0,)


@pytest.mark.parametrize("seed", range(3))
def test_offsets_are_mm_towards_the_head_on_any_grid(seed):
    """Each voxel holds its own height (patient z, mm; a window of 2 mm per step, no resize); the input channels of
    each slice hold its height plus the offsets, up to the scanned range, whatever the storage order, flips and
    spacing."""
    rng = np.random.default_rng(seed)
    perm, flips = rng.permutation(3), rng.random(3) < 0.5
    direction = np.zeros((3, 3))
    for numpy_axis in range(3):
        direction[2 - perm[numpy_axis], 2 - numpy_axis] = -1.0 if flips[numpy_axis] else 1.0
    spacing = tuple(rng.uniform(1.5, 4.0, 3))
    shape = tuple(12 if p == 0 else 16 for p in perm)            # 12 slices along the axis that runs head-foot
    g = Geometry(spacing, (0.0, 0.0, 0.0), direction)
    z = g.lps_coordinate(2, *np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"))
    net = UNet2D(len(OFFSETS), 1, 4)
    net.metadata = {**model_metadata(net), "slice_offsets_mm": list(OFFSETS), "input_size": 16,
                    "window": {"center": 0.0, "width": 510.0}}
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    segment_volume(z.astype(np.float32), g, net, autocast=False, batch_size=3, channels_last=False)
    seen = torch.cat(seen).numpy() * 510.0 - 255.0
    heights = Reorientation.for_geometry(g).to_canonical(z)[:, 0, 0]
    assert np.all(np.diff(heights) > 0)                                      # canonical slices go up
    expected = np.clip(heights[:, None] + np.array(OFFSETS), heights[0], heights[-1])
    assert seen.shape[:2] == (len(heights), len(OFFSETS))
    assert np.allclose(seen[:, :, 0, 0], expected, atol=1.0 + 1e-3)


def test_inference_feeds_a_model_what_the_training_stream_made(monkeypatch):
    """The model-size inputs of every slice of a phantom equal the stream's 8-bit training slices."""
    seed, size = 7, 64
    case = generate_case(seed, shape=(18, 40, 36), jobs=1)
    _, images, _ = case_slices(seed, WINDOW, size, offsets=OFFSETS, shape=(18, 40, 36))
    net = UNet2D(len(OFFSETS), 1, 4)
    net.metadata = {**model_metadata(net), "slice_offsets_mm": list(OFFSETS), "window": WINDOW, "input_size": size}
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    segment_volume(case.ct, case.geometry, net, autocast=False, batch_size=5, channels_last=False)
    inputs = torch.cat(seen).numpy()
    assert inputs.shape == images.shape == (18, len(OFFSETS), size, size)
    assert np.abs(inputs - images / 255.0).max() <= 0.5 / 255 + 1e-6
    assert not np.array_equal(images[:, 0], images[:, 2])                    # the channels are other slices


@pytest.mark.parametrize("fast, mirror", [(False, False), (True, False), (False, True)])
def test_a_model_given_zero_weighted_neighbours_segments_as_before(fast, mirror):
    torch.manual_seed(0)
    plain = UNet2D(base_filters=4).eval()
    plain.metadata = model_metadata(plain)
    wide = add_input_slices(plain, OFFSETS).eval()
    assert wide.in_channels == 5 and wide.metadata["slice_offsets_mm"] == list(OFFSETS)
    hu, g = blob_volume((9, 64, 64)), Geometry((1.0, 1.0, 3.0))
    run = lambda net: segment_volume(hu, g, net, autocast=False, return_probabilities=True, fast=fast,
                                     mirror=mirror, keep_all_pieces=True)
    a, b = run(plain), run(wide)
    assert np.allclose(a.probabilities, b.probabilities, atol=1e-5) and np.array_equal(a.labelmap, b.labelmap)
    with torch.no_grad():
        wide.enc[0][0].weight[:, 0] += 0.5                                   # now the slice 24 mm below counts
    assert np.abs(run(wide).probabilities - a.probabilities).max() > 1e-3
