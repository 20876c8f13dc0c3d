"""FemurUNetLib.confirm: pieces a second model does not confirm are removed, the confirmed ones kept voxel for voxel;
through segment_volume when a second model is given (a module or a file), and not with keep_all_pieces."""
import math

import numpy as np
import pytest

from FemurUNetLib import segment_volume
from FemurUNetLib.confirm import CONFIRM_FRACTION, remove_unconfirmed_pieces, unconfirmed_pieces
from conftest import threshold_unet
from test_plausibility import SIDED, add_bone, flip_x, two_femurs


def shin_case():
    """Two femurs (cortex 1400 HU) over slices 20-59 and on the left a detached 'tibia' with a fainter cortex (360
    HU) at slices 0-11: 30 % of the femur, so the detached-piece rule keeps it."""
    hu, label, g = two_femurs(slices=60)
    label[:20] = 0
    hu[:20][hu[:20] > 100] = 40
    add_bone(hu, label, g, 90.0, 0, 12, cortex_hu=360)
    return hu, label, g


def test_a_piece_confirmed_below_the_fraction_goes_and_the_others_stay_voxel_for_voxel():
    hu, label, g = shin_case()
    agreed = math.ceil(CONFIRM_FRACTION * 12)                       # of the tibia's 12 equal slices
    assert 0 < agreed <= 12
    confirmed = label > 0
    confirmed[:12] = False
    confirmed[:agreed - 1] = label[:agreed - 1] > 0                  # just under the fraction
    femurs = label.copy()
    femurs[:12] = 0
    assert remove_unconfirmed_pieces(label, confirmed, hu, g) == np.count_nonzero(shin_case()[1][:12])
    assert np.array_equal(label, femurs)
    kept = shin_case()[1]
    confirmed[:agreed] = kept[:agreed] > 0                           # at the fraction: stays
    assert remove_unconfirmed_pieces(kept, confirmed, hu, g) == 0 and np.array_equal(kept, shin_case()[1])
    tibia = np.count_nonzero(kept[:12])
    assert remove_unconfirmed_pieces(kept, confirmed, hu, g, fraction=1.0) == tibia and not kept[:12].any()


def test_pieces_are_judged_per_side_on_any_grid_and_sided_labels_keep_their_values():
    hu, label, g = two_femurs(slices=20)
    confirmed = np.zeros(label.shape, bool)
    confirmed[:, :, 64:] = label[:, :, 64:] > 0                       # only the left femur (+x: high i here)
    drop = unconfirmed_pieces(label, confirmed, hu, g)
    assert np.array_equal(drop, (label > 0) & ~confirmed)
    (hu_f, label_f, conf_f), g_f = flip_x([hu, label, confirmed], g)
    assert np.array_equal(unconfirmed_pieces(label_f, conf_f, hu_f, g_f)[:, :, ::-1], drop)
    sided = label * np.where(np.arange(label.shape[2]) >= 64, 1, 2).astype(np.uint8)
    remove_unconfirmed_pieces(sided, confirmed, hu, g, SIDED)
    assert set(np.unique(sided)) == {0, 1} and np.array_equal(sided > 0, confirmed)


def test_nothing_to_judge_and_a_bad_fraction():
    hu, label, g = two_femurs(slices=10)
    empty = np.zeros_like(label)
    assert remove_unconfirmed_pieces(empty, np.ones(label.shape, bool), hu, g) == 0 and not empty.any()
    with pytest.raises(ValueError, match=r"fraction must be within \[0, 1\], got -0.1"):
        remove_unconfirmed_pieces(label, label > 0, hu, g, fraction=-0.1)


def test_segment_volume_asks_the_second_model_unless_asked_to_keep_all_pieces():
    hu, truth, g = shin_case()
    net = threshold_unet(300.0, input_size=128)                       # no resize: labels exactly HU > 300
    second = threshold_unet(400.0, input_size=128)                    # sees the femurs' cortex, not the tibia's
    judged = segment_volume(hu, g, net, device="cpu", autocast=False, confirm=second)
    plain = segment_volume(hu, g, net, device="cpu", autocast=False)
    kept = segment_volume(hu, g, net, device="cpu", autocast=False, confirm=second, keep_all_pieces=True)
    assert plain.labelmap[:12].any() and np.array_equal(kept.labelmap, plain.labelmap)    # own model: no opinion
    expected = plain.labelmap.copy()
    expected[:12] = 0
    assert np.array_equal(judged.labelmap, expected)
    assert judged.stats["unconfirmed_voxels_removed"] == np.count_nonzero(plain.labelmap[:12])
    assert plain.stats["unconfirmed_voxels_removed"] == 0 == kept.stats["unconfirmed_voxels_removed"]
    agree = segment_volume(hu, g, net, device="cpu", autocast=False, confirm=threshold_unet(300.0, input_size=128))
    assert np.array_equal(agree.labelmap, plain.labelmap)


def test_the_second_model_may_be_a_file_and_is_run_only_where_labels_are(tmp_path, monkeypatch):
    from FemurUNetLib.modelfile import save_model
    from FemurUNetLib import inference
    hu, truth, g = shin_case()
    net = threshold_unet(300.0, input_size=128)
    path = save_model(threshold_unet(400.0, input_size=128), tmp_path / "second.pt")
    seen = []
    real = inference.SliceFeed.__init__

    def record(self, runner, stack, source, batch):
        real(self, runner, stack, source, batch)
        inputs = self.inputs
        self.inputs = lambda ks: seen.append((runner.model, list(ks))) or inputs(ks)
    monkeypatch.setattr(inference.SliceFeed, "__init__", record)
    judged = segment_volume(hu, g, net, device="cpu", autocast=False, confirm=path, batch_size=64)
    expected = segment_volume(hu, g, net, device="cpu", autocast=False).labelmap
    expected[:12] = 0
    assert np.array_equal(judged.labelmap, expected) and expected[20:].any()
    second = [ks for model, ks in seen if model is not net]
    assert second == [list(range(0, 12)) + list(range(20, 60))]       # the labelled slices, none of 12-19



def test_a_missing_second_model_is_refused_before_any_slice(monkeypatch, tmp_path):
    from FemurUNetLib import inference
    from FemurUNetLib.errors import FemurUNetError
    monkeypatch.setattr(inference.SliceSegmenter, "__call__", lambda *a, **k: pytest.fail("ran the network"))
    hu, _, g = shin_case()
    with pytest.raises(FemurUNetError, match=r"gone\.pt: model file not found"):
        segment_volume(hu, g, threshold_unet(300.0, input_size=128), device="cpu", confirm=tmp_path / "gone.pt")


def test_the_fraction_is_an_option_checked_before_any_slice(monkeypatch):
    from FemurUNetLib import inference
    from FemurUNetLib.errors import FemurUNetError
    hu, _, g = shin_case()
    net, second = threshold_unet(300.0, input_size=128), threshold_unet(400.0, input_size=128)
    plain = segment_volume(hu, g, net, device="cpu", autocast=False)
    lenient = segment_volume(hu, g, net, device="cpu", autocast=False, confirm=second, confirm_fraction=0.0)
    assert np.array_equal(lenient.labelmap, plain.labelmap) and plain.labelmap[:12].any()   # share 0 >= 0: kept
    assert lenient.stats["second_opinion_fraction"] == 0.0 and plain.stats["second_opinion_fraction"] is None
    default = segment_volume(hu, g, net, device="cpu", autocast=False, confirm=second)
    assert default.stats["second_opinion_fraction"] == CONFIRM_FRACTION and not default.labelmap[:12].any()
    monkeypatch.setattr(inference.SliceSegmenter, "__call__", lambda *a, **k: pytest.fail("ran the network"))
    with pytest.raises(FemurUNetError, match=r"^a second-opinion fraction needs a second model"):
        segment_volume(hu, g, net, device="cpu", confirm_fraction=0.5)
    with pytest.raises(FemurUNetError, match=r"^the second-opinion fraction must be 0\.\.1, got 1\.5$"):
        segment_volume(hu, g, net, device="cpu", confirm=second, confirm_fraction=1.5)


def test_the_segment_help_states_the_default_fraction(capsys):
    from FemurUNetTrainLib.cli import main
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {CONFIRM_FRACTION:g}; needs --second-opinion)" in help_text
