"""FemurUNetLib.gate: the 4 mm view of a scan, level targets, slice probabilities, whole-piece removal and the gate
file; the shipped gate on fresh phantoms and the real CTs."""
import numpy as np
import pytest
import torch

from FemurUNetLib.defaults import GATE_THRESHOLD
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.gate import (AIR_HU, GATE_SIZE, LevelGate, at_slices, emptied_note, gate_pieces, gate_volume,
                               level_targets, load_gate, save_gate, slice_probabilities)
from test_confirm import shin_case
from test_plausibility import flip_x


def test_gate_volume_is_4_mm_centred_on_the_body_and_air_around():
    ct = np.full((50, 200, 300), -1000, np.int16)            # 2 mm slices, 1 x 1 mm pixels
    ct[:, 20:100, 200:280] = 40                               # an 80 x 80 mm body off centre
    volume = gate_volume(ct, (1.0, 1.0, 2.0))
    assert volume.shape == (25, GATE_SIZE, GATE_SIZE)
    body = np.argwhere(volume[0] > -400)
    assert body.min(axis=0).tolist() == [51, 51] and body.max(axis=0).tolist() == [70, 70]   # 20 x 20 about 60
    assert volume[0, 0, 0] == AIR_HU and np.allclose(volume[:, 55, 55], 40)


def test_gate_volume_averages_thin_slices_and_stretches_thick_ones():
    ct = np.zeros((8, 40, 40), np.float32)
    ct[::2] = 1000.0                                          # 1 mm slices alternating 1000 / 0 HU
    assert np.allclose(gate_volume(ct, (4.0, 4.0, 1.0))[:, 60, 60], 500.0)
    thick = gate_volume(np.zeros((3, 40, 40), np.float32), (4.0, 4.0, 8.0))
    assert thick.shape[0] == 6


def test_level_targets_mark_each_4_mm_level_any_femur_slice_falls_in():
    label = np.zeros((12, 4, 4), bool)                       # 12 slices of 1 mm -> 3 levels
    label[5, 1, 1] = True
    assert level_targets(label, 3).tolist() == [False, True, False]
    assert level_targets(np.ones((2, 2, 2), bool), 4).tolist() == [True] * 4


def test_at_slices_interpolates_between_level_centres_and_holds_at_the_ends():
    p = at_slices(np.array([0.0, 1.0]), 8)                   # level centres at slice positions 2.0 and 6.0
    assert np.allclose(p, [0.0, 0.0, 0.125, 0.375, 0.625, 0.875, 1.0, 1.0])


def test_a_piece_wholly_on_levels_without_femur_goes_and_one_touching_an_allowed_slice_stays():
    hu, label, g = shin_case()                               # femurs on slices 20-59, a 'tibia' on 0-11
    femurs = label.copy()
    femurs[:12] = 0
    p = np.where(np.arange(label.shape[0]) >= 20, 0.9, 0.05)
    tibia = np.count_nonzero(label[:12])
    assert gate_pieces(label, p, hu, g, threshold=0.3) == tibia and np.array_equal(label, femurs)
    hu, label, g = shin_case()
    p[11] = 0.3                                              # one slice of the tibia at the threshold: kept whole
    assert gate_pieces(label, p, hu, g, threshold=0.3) == 0 and np.array_equal(label, shin_case()[1])


def test_gate_pieces_works_on_a_flipped_grid():
    hu, label, g = shin_case()
    (hu_f, label_f), g_f = flip_x([hu, label], g)
    p = np.where(np.arange(label.shape[0]) >= 20, 0.9, 0.05)
    assert gate_pieces(label_f, p, hu_f, g_f, threshold=0.3) == np.count_nonzero(label[:12])
    assert not label_f[:12].any() and np.array_equal(label_f[20:], label[20:, :, ::-1])


def test_gate_file_round_trip_and_one_line_errors(tmp_path):
    torch.manual_seed(0)
    net = LevelGate()
    save_gate(net, tmp_path / "g.pt", {"step": 7})
    loaded = load_gate(tmp_path / "g.pt")
    x = torch.rand(5, 2, GATE_SIZE, GATE_SIZE)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), loaded(x)) and loaded.training_record == {"step": 7}
    assert not list(tmp_path.glob("*.part"))
    torch.save({"state_dict": {}}, tmp_path / "model.pt")
    with pytest.raises(FemurUNetError, match=r"model\.pt: not a FemurUNet level gate file$"):
        load_gate(tmp_path / "model.pt")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(FemurUNetError, match=r"cut\.pt: cannot read the level gate"):
        load_gate(tmp_path / "cut.pt")


def test_a_scan_alike_at_every_level_gets_one_probability_even_at_its_ends():
    torch.manual_seed(1)
    net = LevelGate().eval()
    with torch.no_grad():
        for module in net.context:                   # weights big enough for the edge padding to show
            module.weight.normal_(0, 0.2)
        logits = net(torch.rand(1, 2, GATE_SIZE, GATE_SIZE).expand(40, -1, -1, -1))
    assert torch.allclose(logits, logits[20].expand(40), atol=1e-5)     # zero padding would change the ends


class LowerThirdGate(LevelGate):
    """A gate that finds a femur on the upper two thirds of a scan's levels only (a seam for segment_volume)."""

    def forward(self, slices):
        levels = torch.arange(len(slices), dtype=torch.float32)
        return torch.where(levels >= len(slices) / 3, 6.0, -6.0)


class NowhereGate(LevelGate):
    """A gate that finds a femur on no level (P = 0.0025 everywhere)."""

    def forward(self, slices):
        return torch.full((len(slices),), -6.0)


def test_segment_volume_empties_only_a_scan_the_gate_finds_no_femur_in():
    from FemurUNetLib import segment_volume
    from conftest import threshold_unet
    hu, _, g = shin_case()                                    # femurs on slices 20-59, a 'tibia' on 0-11
    net = threshold_unet(300.0, input_size=128)
    plain = segment_volume(hu, g, net, device="cpu", autocast=False)
    assert plain.labelmap[:12].any() and plain.stats["gate"] is None and plain.stats["gated_voxels_removed"] == 0
    upper = segment_volume(hu, g, net, device="cpu", autocast=False, gate=LowerThirdGate())
    assert np.array_equal(upper.labelmap, plain.labelmap) and upper.stats["gated_voxels_removed"] == 0
    assert upper.stats["gate"] == "(in memory)" and upper.stats["gate_threshold"] == GATE_THRESHOLD
    assert upper.stats["gate_highest_p"] > 0.99 and emptied_note(upper) is None
    emptied = segment_volume(hu, g, net, device="cpu", autocast=False, gate=NowhereGate())
    assert not emptied.labelmap.any() and emptied.stats["gated_voxels_removed"] == np.count_nonzero(plain.labelmap)
    ml = np.count_nonzero(plain.labelmap) * np.prod(g.spacing) / 1000
    assert emptied_note(emptied) == ("no femur in this scan's range by the level gate (highest P 0.002 < 0.3): "
                                     f"{ml:.1f} ml of labels removed (--no-gate or Keep detached pieces keeps them)")
    for kept in (segment_volume(hu, g, net, device="cpu", autocast=False, gate=NowhereGate(), keep_all_pieces=True),
                 segment_volume(hu, g, net, device="cpu", autocast=False, gate=NowhereGate(), gate_threshold=0.002)):
        assert np.array_equal(kept.labelmap, plain.labelmap)


def test_a_gate_file_is_loaded_before_any_slice_and_bad_gates_fail_first(monkeypatch, tmp_path):
    from FemurUNetLib import inference, segment_volume
    from conftest import threshold_unet
    hu, _, g = shin_case()
    net = threshold_unet(300.0, input_size=128)
    nowhere = LevelGate()                                    # weights 0, bias -6: P = 0.0025 on every level
    with torch.no_grad():
        for p in nowhere.parameters():
            p.zero_()
        nowhere.head.bias.fill_(-6.0)
    save_gate(nowhere, tmp_path / "g.pt", {})
    plain = segment_volume(hu, g, net, device="cpu", autocast=False)
    gated = segment_volume(hu, g, net, device="cpu", autocast=False, gate=tmp_path / "g.pt")
    assert gated.stats["gate"] == "g.pt" and not gated.labelmap.any()
    assert gated.stats["gated_voxels_removed"] == np.count_nonzero(plain.labelmap) > 0
    monkeypatch.setattr(inference.SliceSegmenter, "__call__", lambda *a, **k: pytest.fail("ran the network"))
    with pytest.raises(FemurUNetError, match=r"gone\.pt: gate file not found$"):
        segment_volume(hu, g, net, device="cpu", gate=tmp_path / "gone.pt")
    with pytest.raises(FemurUNetError, match=r"^the gate threshold must be 0\.\.1, got 2"):
        segment_volume(hu, g, net, device="cpu", gate=tmp_path / "g.pt", gate_threshold=2)
    with pytest.raises(FemurUNetError, match=r"^a gate threshold needs a gate \(--gate; the demo model's by "):
        segment_volume(hu, g, net, device="cpu", gate_threshold=0.2)


def test_the_shipped_gate_goes_with_the_demo_model_and_its_copies_only(tmp_path):
    import shutil
    from FemurUNetLib import segment_volume
    from FemurUNetLib.paths import DEFAULT_GATE_PATH, DEFAULT_MODEL_PATH
    from FemurUNetLib.resolve import resolve_gate, resolve_model
    from conftest import threshold_unet
    demo, other = resolve_model(None), threshold_unet(300.0, input_size=128)
    shipped = resolve_gate(None, demo)
    assert shipped.source_file == DEFAULT_GATE_PATH
    assert (shipped.training_record["scans"], shipped.training_record["positive_weight"]) == (816, 3.0)
    shutil.copy(DEFAULT_MODEL_PATH, tmp_path / "copy.pt")
    assert isinstance(resolve_gate(None, resolve_model(tmp_path / "copy.pt")), LevelGate)
    assert resolve_gate(None, other) is None and resolve_gate(False, demo) is None
    hu = np.full((2, 40, 40), -1000, np.int16)
    stats = segment_volume(hu, None, None, device="cpu").stats
    assert (stats["gate"], stats["gate_threshold"]) == ("femurunet_level_gate.pt", GATE_THRESHOLD) == (
        DEFAULT_GATE_PATH.name, 0.3)
    assert segment_volume(hu, None, None, device="cpu", gate=False).stats["gate"] is None


@pytest.mark.parametrize("bone_scale", [1.0, 0.5])
@pytest.mark.parametrize("seed, coverage", [(99998, "lower_leg"), (99999, "hip_to_knee")])
def test_the_shipped_gate_keeps_a_fresh_phantom_with_a_femur_and_empties_a_shin(seed, coverage, bone_scale):
    from FemurUNetLib.geometry import Reorientation
    from FemurUNetLib.paths import DEFAULT_GATE_PATH
    from FemurUNetLib.phantom2 import generate_case
    case = generate_case(seed, spacing=(3.0, 3.0, 3.0), coverage=coverage, jobs=1)     # seeds no rule has seen
    axial = Reorientation.for_geometry(case.geometry)
    ct = axial.to_canonical(case.ct).astype(np.float32)
    ct = np.where(ct > 100, 100 + (ct - 100) * bone_scale, ct)         # 0.5: bone half as far above soft tissue
    p = slice_probabilities(load_gate(DEFAULT_GATE_PATH), ct, axial.canonical_spacing(case.geometry))
    femur = axial.to_canonical(case.label > 0).any(axis=(1, 2))
    assert femur.any() == (coverage == "hip_to_knee") == (p.max() >= GATE_THRESHOLD)
