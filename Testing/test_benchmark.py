"""``femurunet benchmark --quick``: every section present, numbers sane and consistent with each other.

No timing thresholds: only the arithmetic between reported figures, and the inference options it relies on.
"""
import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from FemurUNetLib import UNet2D, segment_volume
from FemurUNetLib.benchmark import SLICE_SIZE
from FemurUNetTrainLib.cli.benchmark import SECTIONS
from FemurUNetTrainLib.cli import main
from FemurUNetLib.device import autocast_dtype, cpu_supports_bf16
from FemurUNetLib.model import forward_macs

SECTION_KEYS = ("machine", "gemm", "forward", "phantom", "end_to_end", "seed_baseline", "memory", "training",
                "accuracy", "goals")


def close(a, b, rel=1e-9):
    return a == pytest.approx(b, rel=rel)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "FemurUNetTrainLib.cli", "benchmark", "--quick", "--device", "cpu",
                           "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow
def test_every_section_is_reported(quick):
    report, stdout = quick
    for key in SECTION_KEYS:
        assert key in report, key
        assert "skipped" not in report[key], report[key]
    assert set(report["section_seconds"]) == set(SECTIONS)
    assert report["quick"] is True
    for title in ("GEMM peak", "U-Net forward", "segment_volume vs bare forward", "seed-style pipeline",
                  "peak memory", "training step", "accuracy cost", "goals"):
        assert f"== {title}" in stdout
    m = report["machine"]
    assert m["cpu"] and m["usable_cpus"] >= 1 and m["torch_threads"] >= 1
    assert m["torch"] == torch.__version__ and m["device"] == "cpu" and m["gpu"] is None
    assert m["autocast"] == ("bf16" if cpu_supports_bf16() else "fp32")


@pytest.mark.slow
def test_gemm_and_forward_figures_follow_from_the_times(quick):
    report, _ = quick
    gemm, fwd = report["gemm"], report["forward"]
    for dtype in ("fp32", "bf16"):
        runs = gemm[dtype]["by_size"]
        assert [r["size"] for r in runs] == gemm["sizes"]
        for r in runs:
            assert close(r["gflops"], 2 * r["size"] ** 3 / r["seconds"] / 1e9)
        assert gemm[dtype]["gflops"] == max(r["gflops"] for r in runs)
        n = gemm[dtype]["size"]
        assert close(gemm[dtype]["gflops"], 2 * n ** 3 / gemm[dtype]["seconds"] / 1e9)
    variants = {r["variant"] for r in fwd["rows"]}
    assert {"fp32 NCHW", "fp32 channels_last"} <= variants
    assert ("bf16 channels_last" in variants) == cpu_supports_bf16()
    for r in fwd["rows"]:
        assert r["base_filters"] == 16 and r["batch"] >= 1 and r["runs"] >= 2
        assert r["macs_per_slice"] == forward_macs(16, fwd["size"])
        assert close(r["slices_per_s"], r["batch"] / r["seconds_per_batch"])
        assert close(r["gflops"], 2 * r["macs_per_slice"] * r["slices_per_s"] / 1e9)
        assert close(r["peak_ratio"], r["gflops"] / gemm[r["peak_dtype"]]["gflops"])
        assert r["seconds_per_batch"] <= r["median_seconds_per_batch"]
        assert 0 < r["peak_ratio"] < 10
    threads = fwd["threads"]
    assert threads[0]["threads"] == 1 and [r["default"] for r in threads].count(True) == 1
    assert next(r for r in threads if r["default"])["threads"] == report["machine"]["torch_threads"]
    for r in threads:
        assert close(r["slices_per_s"], r["batch"] / r["seconds_per_batch"])


@pytest.mark.slow
def test_end_to_end_overhead_is_the_ratio_of_the_reported_times(quick):
    report, _ = quick
    e2e = report["end_to_end"]
    assert e2e["slice_shape"] == [SLICE_SIZE, SLICE_SIZE] and e2e["depth"] == report["settings"]["depth"]
    for r in e2e["rows"]:
        assert r["slices"] == e2e["depth"]
        assert r["segment_seconds"] == min(r["segment_seconds_runs"])
        assert r["forward_seconds"] == min(r["forward_seconds_runs"])
        assert close(r["overhead_ratio"], r["segment_seconds"] / r["forward_seconds"])
        assert close(r["segment_slices_per_s"], r["slices"] / r["segment_seconds"])
        assert r["met"] == (r["overhead_ratio"] <= r["goal"])
        assert r["preprocess_seconds"] > 0 and r["postprocess_seconds"] > 0 and r["smooth_3mm_seconds"] > 0


@pytest.mark.slow
def test_seed_baseline_speedup_is_the_ratio_of_the_reported_times(quick):
    report, _ = quick
    seed = report["seed_baseline"]
    assert seed["slices"] == report["settings"]["seed_slices"] and seed["slice_shape"] == [SLICE_SIZE, SLICE_SIZE]
    assert [r["base_filters"] for r in seed["rows"]] == [16]
    for r in seed["rows"]:
        assert r["seed_seconds"] == min(r["seed_seconds_runs"]) and r["ours_seconds"] == min(r["ours_seconds_runs"])
        assert close(r["speedup"], r["seed_seconds"] / r["ours_seconds"])
        assert close(r["ours_slices_per_s"], seed["slices"] / r["ours_seconds"])
        assert set(r["seed_phases_seconds"]) == {"png_io", "resize", "predict"}
        assert 0 < sum(r["seed_phases_seconds"].values()) <= r["seed_seconds"]
        assert all(v > 0 for v in r["seed_phases_seconds"].values())
        assert 0 <= r["dice_seed_vs_ours"] <= 1
        assert r["met"] == (r["speedup"] >= r["goal"])


@pytest.mark.slow
def test_memory_growth_is_measured_for_n_and_4n(quick):
    report, _ = quick
    mem = report["memory"]
    small, large = mem["runs"]
    n = report["settings"]["depth"]
    assert (small["slices"], large["slices"]) == (n, 4 * n)
    for run in mem["runs"]:
        assert run["volume_bytes"] == run["slices"] * SLICE_SIZE ** 2 * 2         # int16 input
        assert run["labelmap_bytes"] == run["slices"] * SLICE_SIZE ** 2           # uint8 labelmap
        assert run["peak_rss_bytes"] >= run["rss_before_bytes"] > 0
        assert run["process_peak_rss_bytes"] >= run["peak_rss_bytes"]
        assert run["segment_peak_bytes"] == run["peak_rss_bytes"] - run["rss_before_bytes"]
    assert mem["expected_growth_bytes"] == 3 * n * SLICE_SIZE ** 2 * 3
    assert mem["growth_bytes"] == large["segment_peak_bytes"] - small["segment_peak_bytes"]
    assert close(mem["growth_ratio"], mem["growth_bytes"] / mem["expected_growth_bytes"])
    assert mem["growth_bytes"] > 0
    assert mem["met"] == (mem["growth_bytes"] <= mem["goal"] * mem["expected_growth_bytes"] + mem["slack_bytes"])


@pytest.mark.slow
def test_training_shares_add_up(quick):
    report, _ = quick
    tr = report["training"]
    assert tr["dataset_slices"] > 0 and tr["load_seconds_per_sample"] > 0
    for r in tr["rows"]:
        assert len(r["train_step_seconds"]) == r["steps"] == report["settings"]["train_steps"]
        assert close(r["train_samples_per_s"], r["batch"] / min(r["train_step_seconds"]))
        phases = r["phase_seconds"]
        total = sum(phases.values())
        assert close(r["input_share"], (phases["data"] + phases["augment"]) / total)
        assert close(r["input_share"], r["data_share"] + r["augment_share"])
        assert 0 < r["input_share"] < 1
        assert r["met"] == (r["input_share"] < r["goal"])


@pytest.mark.slow
def test_accuracy_rows_compare_with_fp32(quick):
    report, _ = quick
    acc = report["accuracy"]
    rows = {r["mode"]: r for r in acc["rows"]}
    fp32 = rows["fp32"]
    assert fp32["dice_vs_fp32"] == 1.0 and fp32["voxels_differing_from_fp32"] == 0 and fp32["autocast"] == "off"
    assert ("bf16" in rows) == cpu_supports_bf16()
    assert {"fast", "mirror"} <= set(rows)
    assert rows["mirror"]["autocast"] == rows["fast"]["autocast"]          # both on the default precision
    for r in acc["rows"]:
        assert 0 <= r["dice_vs_fp32"] <= 1 and 0 <= r["dice_vs_truth"] <= 1
        assert close(r["speedup_vs_fp32"], fp32["seconds"] / r["seconds"])
        assert close(r["slices_per_s"], acc["shape"][0] / r["seconds"])
    assert acc["truth_voxels"] > 0


@pytest.mark.slow
def test_goals_summarise_the_sections(quick):
    report, stdout = quick
    goals = report["goals"]
    assert len(goals) >= 5                        # forward, end to end, seed baseline, memory, training: any CPU
    assert any(g["goal"].startswith("Dice fp32 vs bf16") for g in goals) == cpu_supports_bf16()
    assert all(isinstance(g["met"], bool) for g in goals)
    e2e = report["end_to_end"]["rows"][0]
    assert any(g["value"] == e2e["overhead_ratio"] and g["met"] == e2e["met"] for g in goals)
    assert stdout.count("[met]") + stdout.count("[NOT met]") == len(goals)
    compare = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, ">": lambda a, b: a > b}
    for g in goals:      # what a reader sees, "value [met] (goal <= X)", agrees: the printed target is the one tested
        op, bound = re.match(r"(<=|>=|<|>) ([0-9.]+)", g["target"]).groups()
        assert compare[op](g["value"], float(bound)) == g["met"], g


def test_bad_options_are_one_line_errors(capsys):
    assert main(["benchmark", "--sections", "gemm,bogus"]) == 2
    assert "unknown section(s) bogus" in capsys.readouterr().err
    assert main(["benchmark", "--depth", "0", "--sections", "memory"]) == 2
    assert "--depth must be at least 1" in capsys.readouterr().err


# --- inference options the benchmark relies on ---------------------------------------------------------------
def test_autocast_accepts_a_dtype():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, torch.bfloat16) == torch.bfloat16
    assert autocast_dtype(cpu, torch.float32) is None
    torch.manual_seed(0)
    net = UNet2D(base_filters=4)
    hu = np.random.default_rng(0).integers(-1000, 2000, (3, 64, 64)).astype(np.int16)
    r = segment_volume(hu, None, net, autocast=torch.bfloat16)
    assert r.stats["autocast"] == "bfloat16"


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken_compile(model, **kwargs):
        def run(x):
            raise RuntimeError("no C++ compiler\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    torch.manual_seed(0)
    net = UNet2D(base_filters=4)
    hu = np.random.default_rng(0).integers(-1000, 2000, (5, 64, 64)).astype(np.int16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = segment_volume(hu, None, net, batch_size=2, autocast=False, compile=True)
    assert [str(w.message) for w in caught if "torch.compile" in str(w.message)] == [
        "torch.compile failed (no C++ compiler); running the model eagerly"]
    ref = segment_volume(hu, None, net, batch_size=2, autocast=False)
    assert np.array_equal(got.labelmap, ref.labelmap)


class HeadOnlyNet(UNet2D):
    """A UNet2D that runs its 1x1 head only: inductor compiles it in seconds (the whole U-Net takes ~40 s of
    C++ compilation on a fresh machine; test_quantize compiles that one)."""

    def logits(self, x):
        return self.head(x)


@pytest.mark.slow
def test_compiled_model_gives_the_eager_labels():
    """torch.compile (inductor, needs a C++ compiler) with a padded last batch: the same labels as eager."""
    torch.manual_seed(0)
    net = HeadOnlyNet(base_filters=1)
    with torch.no_grad():
        net.head.weight.fill_(8.0)
        net.head.bias.fill_(-4.0)           # p > 0.5 where the windowed input is above 0.5
    rng = np.random.default_rng(1)
    hu = rng.integers(-1000, 2000, (5, 64, 64)).astype(np.int16)
    kw = dict(batch_size=3, autocast=False, return_probabilities=True)
    eager = segment_volume(hu, None, net, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = segment_volume(hu, None, net, compile=True, **kw)
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]   # no silent fallback to eager
    assert np.array_equal(compiled.labelmap, eager.labelmap)
    assert np.allclose(compiled.probabilities, eager.probabilities, atol=1e-5)
