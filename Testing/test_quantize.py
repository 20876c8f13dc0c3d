"""int8 inference (torchao PT2E, x86 CPU): a real calibrated and compiled demo model whose labels agree with
fp32's; the precision flag; clear refusals where int8 cannot run."""
import argparse

import numpy as np
import pytest
import torch

from FemurUNetLib import quantize
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.evaluate import dice
from FemurUNetLib.inference import segment_volume
from FemurUNetLib.phantom2 import generate_case
from FemurUNetLib.preprocess import to_model_input, window_hu
from FemurUNetLib.resolve import resolve_model
from FemurUNetLib.segment_options import add_segment_options, segment_keywords
from FemurUNetTrainLib.cli import main as femurunet
from FemurUNetTrainLib.widen import add_input_slices
from FemurUNetLib.model import UNet2D


def test_calibration_slices_are_fixed_model_inputs():
    """The slices of the fixed phantom cases, windowed and resized (the phantom's bits are fixed per seed:
    test_phantom2), so every run calibrates on the same inputs."""
    window, size = (400.0, 1800.0), 64
    a = quantize.calibration_batch(window, size)
    assert a.shape == (sum(n for _, n in quantize.CALIBRATION_CASES), 1, size, size)
    coverage, n = quantize.CALIBRATION_CASES[0]
    first = generate_case(quantize.CALIBRATION_SEED, coverage=coverage, shape=(n, 256, 256), jobs=1).ct
    expected = to_model_input(window_hu(torch.from_numpy(first.astype("float32")), *window), size)
    assert torch.equal(a[:n], expected) and 0.0 <= a.min() and a.max() <= 1.0
    assert (a > 0.5).any() and a.std() > 0.05           # bone and tissue, not a blank field


def test_a_model_of_neighbouring_slices_calibrates_on_stacks():
    """Calibration inputs carry the model's channels, the slice itself where the offset is 0; the converted model
    runs on them."""
    window, size, offsets = (400.0, 1800.0), 32, (-8.0, 0.0, 8.0)
    stacks = quantize.calibration_batch(window, size, offsets)
    assert stacks.shape == (sum(n for _, n in quantize.CALIBRATION_CASES), 3, size, size)
    assert torch.equal(stacks[:, 1:2], quantize.calibration_batch(window, size))
    assert not torch.equal(stacks[:, 0], stacks[:, 1])
    if quantize.int8_unavailable_reason(torch.device("cpu")):
        pytest.fail(quantize.int8_unavailable_reason(torch.device("cpu")))   # the test extra installs torchao
    torch.manual_seed(0)
    net = add_input_slices(UNet2D(1, 1, 4), offsets).eval()
    converted = quantize.convert_int8(net, window, size)
    with torch.no_grad():
        assert converted(stacks[:4]).shape == (4, 1, size, size)


def test_int8_is_refused_off_the_cpu_with_one_line():
    assert "CPU only" in quantize.int8_unavailable_reason(torch.device("meta"))
    with pytest.raises(FemurUNetError, match="CPU only"):
        segment_volume(np.zeros((2, 32, 32), np.int16), model=resolve_model(None), device="meta", autocast="int8")


def test_precision_flag_is_checked_and_mapped(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        femurunet(["segment", str(tmp_path / "ct.nii.gz"), str(tmp_path / "o.nii.gz"), "--precision", "fp16"])
    assert exit_.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()
    parser = argparse.ArgumentParser()
    add_segment_options(parser)
    keywords = [segment_keywords(parser.parse_args(a))["autocast"] for a in
                (["--precision", "int8"], ["--precision", "bf16"], ["--no-autocast"], [])]
    assert keywords == ["int8", torch.bfloat16, False, True]


@pytest.mark.slow
def test_int8_labels_agree_with_fp32_on_a_phantom():
    if quantize.int8_unavailable_reason(torch.device("cpu")):
        pytest.fail(quantize.int8_unavailable_reason(torch.device("cpu")))   # the test extra installs torchao
    case = generate_case(90005, coverage="hip_to_knee", shape=(40, 160, 160), jobs=1)
    net = resolve_model(None)
    fp32 = segment_volume(case.ct, case.geometry, net, device="cpu", autocast=False, keep_all_pieces=True,
                          return_probabilities=True)
    int8 = segment_volume(case.ct, case.geometry, net, device="cpu", autocast="int8", keep_all_pieces=True,
                          return_probabilities=True)
    assert int8.stats["autocast"] == "int8" and fp32.stats["autocast"] == "off"
    assert fp32.labelmap.sum() > 1000
    assert dice(int8.labelmap, fp32.labelmap) >= 0.98               # 0.9953 on the benchmark phantom (docs/BENCHMARKS.md)
    assert np.abs(int8.probabilities - fp32.probabilities).max() > 1e-3    # really computed in int8, not fp32
    assert dice(int8.labelmap, case.label > 0) >= dice(fp32.labelmap, case.label > 0) - 0.02
    first = quantize.quantize_int8(net, quantize_window(net), net.metadata["input_size"])
    assert quantize.quantize_int8(net, quantize_window(net), net.metadata["input_size"]) is first   # one per model


def quantize_window(net):
    return (float(net.metadata["window"]["center"]), float(net.metadata["window"]["width"]))


def test_benchmark_goals_report_the_int8_speedup_and_agreement():
    from FemurUNetLib.benchmark import goal_summary
    rows = [{"base_filters": 16, "variant": "bf16 channels_last", "dtype": "bf16", "compiled": False,
             "slices_per_s": 40.0},
            {"base_filters": 16, "variant": "int8 (torchao, compiled)", "dtype": "int8", "compiled": True,
             "slices_per_s": 60.0}]
    accuracy = {"trained": True, "goal": 0.999, "rows": [{"mode": "int8", "dice_vs_fp32": 0.993}]}
    goals = {g["goal"]: g for g in goal_summary({"forward": {"rows": rows}, "accuracy": accuracy})}
    speed = goals["int8 forward / bf16 channels_last (base 16)"]
    assert speed["value"] == pytest.approx(1.5) and speed["met"] is True
    agree = goals["Dice fp32 vs int8 labelmap"]
    assert agree["value"] == 0.993 and agree["met"] is False
