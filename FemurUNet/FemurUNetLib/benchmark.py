"""``femurunet benchmark``: speed and accuracy of the engine as ratios measured in one process.

Sections: machine, gemm (the physical reference), forward (U-Net throughput vs the GEMM peak), end_to_end
(segment_volume vs the bare forward of the same slices), seed_baseline (the seed's PNG-per-slice pipeline on
the same model), memory (peak RSS at depths N and 4N, in subprocesses), training (step throughput and the
share of data loading + augmentation), accuracy (Dice of the fp32 labelmap vs bf16/fp16 and ``--fast``).

Every time is the best of repeated runs (other load on the machine only makes runs slower), and every ratio
divides two figures from the same run (interleaved where it matters), so ratios move far less with other load
than absolute figures do. Take figures for a README on an otherwise idle machine.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .defaults import DEFAULT_WINDOW
from .device import autocast, autocast_dtype, cpu_supports_bf16, pick_device
from .errors import FemurUNetError
from .evaluate import dice
from .geometry import Reorientation
from .inference import SliceSegmenter, auto_batch_size, segment_volume
from .model import UNet2D, forward_macs
from .quantize import int8_unavailable_reason, quantize_int8
from .modelfile import model_metadata
from .paths import DEFAULT_MODEL_PATH
from .resolve import resolve_model
from .smoothing import SliceSmoother
from .preprocess import from_model_output, labels_from_probabilities, to_model_input, window_hu, window_to_uint8

BENCHMARK_VERSION = 1
SLICE_SIZE = 512
GOALS = {"forward_fp32_peak_ratio": 0.85, "overhead_ratio": 1.10, "seed_speedup": 3.0,
         "memory_growth_ratio": 1.10, "train_input_share": 0.10, "autocast_dice": 0.999, "phantom_seconds": 20.0}
FORWARD_MAX_BATCH = 32               # accelerators: enough to fill them, small enough for fp32 at base 64
MEMORY_SLACK_BYTES = 16 << 20        # allocator noise allowed on top of the input + labelmap growth
# glibc: a fixed mmap threshold returns every large block to the OS when freed, so RSS tracks live memory
MEMORY_PROBE_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
ACCURACY_SEED = 9000                 # the demo's phantom seed, never used in training
PHANTOM_SEED = 9000


@dataclass
class Settings:
    quick: bool = False
    size: int = 256
    gemm_sizes: tuple = (2048, 4096)
    min_seconds: float = 2.0          # per timed figure: repeat until this much time has passed ...
    repeats: int = 2                  # ... and at least this many runs (after a warm-up)
    forward_filters: tuple = (64, 32, 16)
    e2e_filters: tuple = (64, 16)
    depth: int = 64
    seed_filters: tuple = (64, 16)
    seed_slices: int = 16
    memory_filters: int = 16
    train_filters: int = 16
    train_batch: int = 20             # the seed's batch
    train_steps: int = 4
    compile: bool = False
    model_size: Optional[int] = None  # input size of the untrained models timed (None: the engine's default)
    phantom_shape: tuple = (200, 512, 512)

    @classmethod
    def make(cls, quick: bool, depth: Optional[int] = None, compile: bool = False) -> "Settings":
        # quick: every section and figure, on small inputs (a smoke test of the benchmark, not a measurement)
        s = cls(quick=True, size=128, gemm_sizes=(1024,), min_seconds=0.1, repeats=2, forward_filters=(16,),
                e2e_filters=(16,), depth=4, seed_filters=(16,), seed_slices=2, train_batch=2, train_steps=1,
                model_size=128, phantom_shape=(16, 256, 256)) if quick else cls()
        if depth is not None:
            if depth < 1:
                raise FemurUNetError(f"--depth must be at least 1, got {depth}")
            s.depth = depth
        s.seed_slices = min(s.seed_slices, s.depth)
        s.compile = compile
        return s


# --- timing helpers --------------------------------------------------------------------------------------------
def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def best_time(fn: Callable[[], object], sync: Callable[[], None], min_seconds: float, repeats: int,
              warmup: bool = True) -> dict:
    """Run ``fn`` (after one untimed warm-up) until ``repeats`` runs and ``min_seconds`` have passed."""
    if warmup:
        fn()
        sync()
    times, started = [], time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - started < min_seconds and len(times) < 100):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"best_s": min(times), "median_s": statistics.median(times), "runs": len(times)}


def _dtype_name(dtype: Optional[torch.dtype]) -> str:
    return "fp32" if dtype in (None, torch.float32) else {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _model(base_filters: int, seed: int = 0, input_size: Optional[int] = None) -> UNet2D:
    torch.manual_seed(seed)
    net = UNet2D(1, 1, base_filters).eval()
    net.metadata = model_metadata(net)
    if input_size:
        net.metadata["input_size"] = int(input_size)
    return net


# --- sections ---------------------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict:
    cpu, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as f:
            memory = int(f.readline().split()[1]) * 1024
    info = {
        "cpu": cpu, "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_flags": sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16",
                                     "amx_tile", "avx512_vnni"}),
        "virtual_machine": "hypervisor" in flags,
        "memory_bytes": memory, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(), "numpy": np.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_bf16_autocast": cpu_supports_bf16(), "autocast": _dtype_name(autocast_dtype(device)),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    return info


def bench_gemm(device: torch.device, s: Settings) -> dict:
    """Large square matmul per dtype: the machine's practical peak in GFLOP/s."""
    sizes = s.gemm_sizes if device.type == "cpu" else tuple(4 * n for n in s.gemm_sizes)
    sync = _synchronizer(device)
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device.type != "cpu" else [])
    out = {"sizes": list(sizes)}
    gen = torch.Generator().manual_seed(0)
    for dtype in dtypes:
        runs = []
        for n in sizes:
            a = torch.randn(n, n, generator=gen).to(device, dtype)
            b = torch.randn(n, n, generator=gen).to(device, dtype)
            t = best_time(lambda: torch.mm(a, b), sync, s.min_seconds / 2, max(3, s.repeats))
            runs.append({"size": n, "seconds": t["best_s"], "gflops": 2.0 * n ** 3 / t["best_s"] / 1e9,
                         "runs": t["runs"]})
        best = max(runs, key=lambda r: r["gflops"])
        out[_dtype_name(dtype)] = {"gflops": best["gflops"], "size": best["size"], "seconds": best["seconds"],
                                   "by_size": runs}
        print(f"  {_dtype_name(dtype)}: {best['gflops']:.1f} GFLOP/s (best of "
              + ", ".join(f"{r['size']}: {r['gflops']:.0f}" for r in runs) + ")", flush=True)
    return out


def forward_variants(device: torch.device) -> list:
    """(name, autocast dtype, channels_last) rows: fp32 NCHW, fp32 channels_last, the engine's half precision."""
    rows = [("fp32 NCHW", None, False), ("fp32 channels_last", None, True)]
    half = autocast_dtype(device)
    if half is not None:
        rows.append((f"{_dtype_name(half)} channels_last", half, True))
    return rows


def bench_forward(device: torch.device, s: Settings, gemm: dict) -> dict:
    sync = _synchronizer(device)
    rows = []
    for base in s.forward_filters:
        macs = forward_macs(base, s.size)
        batch = min(auto_batch_size(device, base, s.size), FORWARD_MAX_BATCH)
        variants = [(name, amp, cl, False) for name, amp, cl in forward_variants(device)]
        if s.compile:
            variants += [(name + " compiled", amp, cl, True) for name, amp, cl, _ in variants if cl]
        if not s.quick and not int8_unavailable_reason(device):
            variants.append(("int8 (torchao, compiled)", "int8", False, True))
        for name, amp, channels_last, compiled in variants:
            net = _model(base).to(device)
            x = torch.rand(batch, 1, s.size, s.size, device=device)
            if channels_last:
                net = net.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            fn = net
            compile_s = None
            if compiled:
                fn = quantize_int8(net, DEFAULT_WINDOW, s.size) if amp == "int8" else torch.compile(net, dynamic=False)
                amp = None if amp == "int8" else amp
                t0 = time.perf_counter()
                with torch.inference_mode(), autocast(device, amp):
                    fn(x)
                sync()
                compile_s = time.perf_counter() - t0

            def step():
                with torch.inference_mode(), autocast(device, amp):
                    fn(x)

            t = best_time(step, sync, s.min_seconds, s.repeats)
            rate = batch / t["best_s"]
            gflops = 2.0 * macs * rate / 1e9
            peak_dtype = "bf16" if name.startswith("int8") and "bf16" in gemm else _dtype_name(amp)
            dtype = "int8" if name.startswith("int8") else peak_dtype
            row = {"base_filters": base, "variant": name, "dtype": dtype, "channels_last": channels_last,
                   "compiled": compiled, "batch": batch, "macs_per_slice": macs, "seconds_per_batch": t["best_s"],
                   "median_seconds_per_batch": t["median_s"], "runs": t["runs"], "slices_per_s": rate,
                   "gflops": gflops, "peak_dtype": peak_dtype, "peak_gflops": gemm[peak_dtype]["gflops"],
                   "peak_ratio": gflops / gemm[peak_dtype]["gflops"]}
            if compile_s is not None:
                row["compile_seconds"] = compile_s
            rows.append(row)
            _print_row(row, ("base_filters", "variant", "batch", "slices_per_s", "gflops", "peak_ratio"))
    return {"size": s.size, "rows": rows, "threads": bench_threads(device, s) if device.type == "cpu" else []}


def bench_threads(device: torch.device, s: Settings) -> list:
    """The engine's default forward (smallest base, its autocast, channels_last) at 1 .. all CPU threads."""
    base = min(s.forward_filters)
    amp = autocast_dtype(device)
    batch = auto_batch_size(device, base, s.size)
    net = _model(base).to(memory_format=torch.channels_last)
    x = torch.rand(batch, 1, s.size, s.size).contiguous(memory_format=torch.channels_last)
    default = torch.get_num_threads()
    counts = sorted({1, max(1, default // 2), default})
    rows = []

    def step():
        with torch.inference_mode(), autocast(device, amp):
            net(x)

    try:
        for n in counts:
            torch.set_num_threads(n)
            t = best_time(step, lambda: None, s.min_seconds, s.repeats)
            row = {"threads": n, "base_filters": base, "dtype": _dtype_name(amp), "batch": batch,
                   "seconds_per_batch": t["best_s"], "slices_per_s": batch / t["best_s"], "default": n == default}
            rows.append(row)
            _print_row(row, ("threads", "base_filters", "dtype", "slices_per_s", "default"))
    finally:
        torch.set_num_threads(default)
    return rows


def bench_end_to_end(device: torch.device, s: Settings, case) -> dict:
    """segment_volume on the phantom vs the bare forward of the same slices at the same batch size."""
    sync = _synchronizer(device)
    volume, geometry = case.ct, case.geometry
    rows = []
    for base in s.e2e_filters:
        net = _model(base, input_size=s.model_size)
        runner = SliceSegmenter(net, device)
        # warm-up; its batch size is the engine's choice after any out-of-memory back-off
        batch = segment_volume(volume[:auto_batch_size(device, base, runner.size)], geometry, net,
                               device=str(device), keep_all_pieces=True).batch_size
        hu = torch.from_numpy(volume)
        x_all = to_model_input(window_hu(hu, *runner.window), runner.size)
        x_all = x_all.to(device).contiguous(memory_format=torch.channels_last)
        starts = range(0, volume.shape[0], batch)

        def bare_forward():
            with torch.inference_mode(), autocast(device, runner.amp_dtype):
                for b0 in starts:
                    runner.model(x_all[b0:b0 + batch])

        def end_to_end():   # the slice loop: an untrained net labels ~60 % of the voxels, and the removal of
            # detached pieces on that much would time the random labels (on the demo model's: ~5 % of the run)
            return segment_volume(volume, geometry, net, device=str(device), batch_size=batch, keep_all_pieces=True)

        with torch.inference_mode(), autocast(device, runner.amp_dtype):
            runner.model(x_all[:batch])
        sync()
        e2e, fwd = [], []
        started = time.perf_counter()    # interleaved rounds, so both see the same machine load
        while len(e2e) < s.repeats or (time.perf_counter() - started < 15 * s.min_seconds and len(e2e) < 10):
            e2e.append(best_time(end_to_end, sync, 0, 1, warmup=False)["best_s"])
            fwd.append(best_time(bare_forward, sync, 0, 1, warmup=False)["best_s"])

        probs = torch.rand(batch, 1, runner.size, runner.size, device=device)
        labelmap = np.zeros(volume.shape, np.uint8)

        def preprocess():
            for b0 in starts:
                x = to_model_input(window_hu(hu[b0:b0 + batch].to(device), *runner.window), runner.size)
                x.contiguous(memory_format=torch.channels_last)

        def postprocess():
            for b0 in starts:
                n = min(batch, volume.shape[0] - b0)
                p = from_model_output(probs[:n], volume.shape[1], volume.shape[2])
                labelmap[b0:b0 + n] = labels_from_probabilities(p, runner.threshold).cpu().numpy()

        full = from_model_output(probs, volume.shape[1], volume.shape[2])
        slice_mm = Reorientation.for_geometry(geometry).canonical_spacing(geometry)[2]

        def smooth():       # the demo model's 3 mm along the slice axis (smooth_z_mm) on every batch's probabilities
            smoother = SliceSmoother(3.0, slice_mm, volume.shape[0])
            for b0 in starts:
                smoother.push(b0, full[:min(batch, volume.shape[0] - b0)])

        pre = best_time(preprocess, sync, 0, s.repeats)["best_s"]
        post = best_time(postprocess, sync, 0, s.repeats)["best_s"]
        smoothing = best_time(smooth, sync, 0, s.repeats)["best_s"]
        depth = volume.shape[0]
        row = {"base_filters": base, "batch": batch, "autocast": _dtype_name(runner.amp_dtype),
               "input_size": runner.size, "slices": depth, "segment_seconds": min(e2e), "forward_seconds": min(fwd),
               "segment_seconds_runs": e2e, "forward_seconds_runs": fwd,
               "segment_slices_per_s": depth / min(e2e), "forward_slices_per_s": depth / min(fwd),
               "overhead_ratio": min(e2e) / min(fwd), "preprocess_seconds": pre, "postprocess_seconds": post,
               "smooth_3mm_seconds": smoothing,
               "goal": GOALS["overhead_ratio"]}
        row["met"] = row["overhead_ratio"] <= row["goal"]
        rows.append(row)
        _print_row(row, ("base_filters", "batch", "autocast", "segment_seconds", "forward_seconds", "overhead_ratio",
                         "preprocess_seconds", "postprocess_seconds", "smooth_3mm_seconds"))
    return {"slice_shape": list(volume.shape[1:]), "depth": int(volume.shape[0]), "rows": rows}


def seed_style_segment(model: UNet2D, slices_hu: np.ndarray, window, size: int, threshold: float, workdir: Path,
                       device: torch.device) -> tuple:
    """The seed's pipeline per slice: PNG out and back (skimage.io), skimage resize, one-slice fp32 NCHW
    prediction, resize back, PNG out. Returns (labels uint8 (N, H, W), {phase: seconds})."""
    from skimage import io, transform

    phases = {"png_io": 0.0, "resize": 0.0, "predict": 0.0}
    labels = np.zeros(slices_hu.shape, np.uint8)
    for k, hu in enumerate(slices_hu):
        t0 = time.perf_counter()
        png = workdir / f"{k}.png"
        io.imsave(str(png), window_to_uint8(hu, *window), check_contrast=False)
        img = io.imread(str(png), as_gray=True)
        t1 = time.perf_counter()
        img = transform.resize(img / 255.0, (size, size))
        x = torch.from_numpy(img.astype(np.float32)).reshape(1, 1, size, size).to(device)
        t2 = time.perf_counter()
        with torch.no_grad():
            p = model(x)[0, 0].cpu().numpy()
        t3 = time.perf_counter()
        p = transform.resize(p, hu.shape)
        labels[k] = p > threshold
        t4 = time.perf_counter()
        io.imsave(str(workdir / f"{k}_predict.png"), labels[k] * np.uint8(255), check_contrast=False)
        t5 = time.perf_counter()
        phases["png_io"] += (t1 - t0) + (t5 - t4)
        phases["resize"] += (t2 - t1) + (t4 - t3)
        phases["predict"] += t3 - t2
    return labels, phases


def bench_seed_baseline(device: torch.device, s: Settings, case, workdir: Path) -> dict:
    """The seed's pipeline vs segment_volume (default settings) on the same slices with the same weights."""
    sync = _synchronizer(device)
    k0 = max(0, case.ct.shape[0] // 2 - s.seed_slices // 2)
    slices = np.ascontiguousarray(case.ct[k0:k0 + s.seed_slices])
    rows = []
    for base in s.seed_filters:
        ours_net = _model(base, input_size=s.model_size)
        seed_net = copy.deepcopy(ours_net).to(device).to(memory_format=torch.contiguous_format)
        meta = ours_net.metadata
        window = (float(meta["window"]["center"]), float(meta["window"]["width"]))
        with torch.no_grad():
            seed_net(torch.zeros(1, 1, meta["input_size"], meta["input_size"], device=device))   # warm-up
        sync()
        seed_runs, ours_runs, phases = [], [], None
        for _ in range(s.repeats):        # interleaved rounds
            t0 = time.perf_counter()
            seed_labels, run_phases = seed_style_segment(seed_net, slices, window, meta["input_size"],
                                                         meta["threshold"], workdir, device)
            seed_runs.append(time.perf_counter() - t0)
            if seed_runs[-1] == min(seed_runs):
                phases = run_phases
            t0 = time.perf_counter()
            result = segment_volume(slices, case.geometry, ours_net, device=str(device))
            ours_runs.append(time.perf_counter() - t0)
        row = {"base_filters": base, "seed_seconds": min(seed_runs), "ours_seconds": min(ours_runs),
               "seed_seconds_runs": seed_runs, "ours_seconds_runs": ours_runs, "seed_phases_seconds": phases,
               "seed_slices_per_s": len(slices) / min(seed_runs), "ours_slices_per_s": len(slices) / min(ours_runs),
               "ours_batch": result.batch_size, "ours_autocast": result.stats["autocast"],
               "speedup": min(seed_runs) / min(ours_runs), "goal": GOALS["seed_speedup"],
               "dice_seed_vs_ours": dice(seed_labels, result.labelmap)}
        row["met"] = row["speedup"] >= row["goal"]
        rows.append(row)
        _print_row(row, ("base_filters", "seed_seconds", "ours_seconds", "speedup", "dice_seed_vs_ours"))
    return {"slices": int(slices.shape[0]), "slice_shape": list(slices.shape[1:]), "rows": rows}


def bench_memory(device: torch.device, s: Settings, case, workdir: Path) -> dict:
    """Peak RSS of fresh processes segmenting N and 4N slices (after a warm-up; on Linux the high-water mark is
    reset first): the peak above the RSS before loading the volume should grow by the input + labelmap only."""
    runs = []
    for factor in (1, 4):
        path = workdir / f"memory_{factor}.npy"
        np.save(path, np.concatenate([case.ct] * factor))
        probe = [sys.executable, "-m", "FemurUNetLib.memory_probe", str(path), str(s.memory_filters), str(device)]
        proc = subprocess.run(probe + ([str(s.model_size)] if s.model_size else []), capture_output=True, text=True,
                              env={**os.environ, **MEMORY_PROBE_ENV})
        path.unlink()
        if proc.returncode != 0:
            raise FemurUNetError(f"memory probe failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        run["working_set_bytes"] = run["segment_peak_bytes"] - run["volume_bytes"] - run["labelmap_bytes"]
        runs.append(run)
    small, large = runs
    growth = large["segment_peak_bytes"] - small["segment_peak_bytes"]
    expected = (large["volume_bytes"] + large["labelmap_bytes"]) - (small["volume_bytes"] + small["labelmap_bytes"])
    out = {"base_filters": s.memory_filters, "runs": runs, "growth_bytes": growth, "expected_growth_bytes": expected,
           "growth_ratio": growth / expected, "float32_volume_copy_bytes": 2 * large["volume_bytes"],
           "goal": GOALS["memory_growth_ratio"], "slack_bytes": MEMORY_SLACK_BYTES, "probe_env": MEMORY_PROBE_ENV}
    out["met"] = growth <= out["goal"] * expected + MEMORY_SLACK_BYTES
    for r in runs:
        print(f"  depth {r['slices']:5d}: peak {r['segment_peak_bytes'] / 2**20:7.1f} MiB above the "
              f"{r['rss_before_bytes'] / 2**20:.0f} MiB before loading = input {r['volume_bytes'] / 2**20:.1f} + "
              f"labelmap {r['labelmap_bytes'] / 2**20:.1f} + working set {r['working_set_bytes'] / 2**20:.1f} MiB "
              f"(process peak {r['process_peak_rss_bytes'] / 2**20:.0f} MiB)")
    print(f"  growth {growth / 2**20:.1f} MiB for {expected / 2**20:.1f} MiB more input + labelmap "
          f"(ratio {out['growth_ratio']:.3f})")
    return out


def _accuracy_model(model_arg) -> tuple:
    if model_arg is not None or DEFAULT_MODEL_PATH.is_file():
        path = model_arg or DEFAULT_MODEL_PATH
        return resolve_model(path), str(path), True
    return _model(16), "untrained UNet2D base 16 (no model installed: agreement figures are pessimistic)", False


def bench_accuracy(device: torch.device, s: Settings, case, model_arg=None) -> dict:
    """Labelmaps of one phantom in fp32, in each half precision, with ``--fast`` and with ``--mirror``: Dice vs fp32
    and vs truth, and the time of each."""
    net, name, trained = _accuracy_model(model_arg)
    print(f"  model: {name}")
    halves = [autocast_dtype(device)] if autocast_dtype(device) is not None else []
    if device.type == "cuda":
        halves = [torch.bfloat16, torch.float16] if torch.cuda.is_bf16_supported() else [torch.float16]
    elif device.type == "cpu" and not s.quick:
        halves.append(torch.float16)       # what fp16 devices compute; emulated (slow) on most CPUs
    modes = [("fp32", False, {})] + [(_dtype_name(h), h, {}) for h in halves]
    if not s.quick and not int8_unavailable_reason(device):
        modes.append(("int8", "int8", {}))
    modes += [("fast", True, {"fast": True}), ("mirror", True, {"mirror": True})]
    truth = case.label > 0
    rows, reference = [], None
    for mode, precision, options in modes:
        segment_volume(case.ct[:2], case.geometry, net, device=str(device), autocast=precision, **options)   # warm-up
        t0 = time.perf_counter()
        result = segment_volume(case.ct, case.geometry, net, device=str(device), autocast=precision, **options)
        seconds = time.perf_counter() - t0
        if reference is None:
            reference = result.labelmap
        row = {"mode": mode, "autocast": result.stats["autocast"], "input_size": result.stats["input_size"],
               "seconds": seconds, "slices_per_s": case.ct.shape[0] / seconds,
               "dice_vs_fp32": dice(result.labelmap, reference),
               "voxels_differing_from_fp32": int(np.count_nonzero(result.labelmap != reference)),
               "dice_vs_truth": dice(result.labelmap, truth),
               "speed_meaningful": not (device.type == "cpu" and autocast is torch.float16)}
        rows.append(row)
        _print_row(row, ("mode", "input_size", "slices_per_s", "dice_vs_fp32", "voxels_differing_from_fp32",
                         "dice_vs_truth"))
    fp32_s = rows[0]["seconds"]
    for row in rows:
        row["speedup_vs_fp32"] = fp32_s / row["seconds"]
    half_rows = [r for r in rows if r["mode"] in ("bf16", "fp16")]
    out = {"model": name, "trained": trained, "phantom": case.name, "shape": list(case.ct.shape),
           "truth_voxels": int(truth.sum()), "rows": rows, "goal": GOALS["autocast_dice"]}
    out["met"] = all(r["dice_vs_fp32"] >= out["goal"] for r in half_rows) if half_rows else None
    return out


# --- report ------------------------------------------------------------------------------------------------------
def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def _print_row(row: dict, keys) -> None:
    print("  " + "  ".join(f"{k}={_fmt(row[k])}" for k in keys), flush=True)


def goal_summary(report: dict) -> list:
    goals = []
    fwd = [r for r in report.get("forward", {}).get("rows", []) if r["variant"] == "fp32 channels_last"]
    if fwd:
        r = max(fwd, key=lambda r: r["base_filters"])
        goals.append({"goal": f"forward fp32 channels_last (base {r['base_filters']}) / fp32 GEMM peak",
                      "value": r["peak_ratio"], "target": f">= {GOALS['forward_fp32_peak_ratio']}",
                      "met": r["peak_ratio"] >= GOALS["forward_fp32_peak_ratio"]})
    for r in report.get("end_to_end", {}).get("rows", []):
        goals.append({"goal": f"segment_volume / bare forward (base {r['base_filters']}, {r['autocast']})",
                      "value": r["overhead_ratio"], "target": f"<= {r['goal']}", "met": r["met"]})
    for r in report.get("seed_baseline", {}).get("rows", []):
        goals.append({"goal": f"seed-style pipeline time / ours (base {r['base_filters']})", "value": r["speedup"],
                      "target": f">= {r['goal']}", "met": r["met"]})
    if "growth_ratio" in report.get("memory", {}):
        r = report["memory"]
        allowed = (r["goal"] * r["expected_growth_bytes"] + r["slack_bytes"]) / 2**20
        goals.append({"goal": "memory growth N -> 4N, MiB", "value": r["growth_bytes"] / 2**20,
                      "target": f"<= {allowed:.1f} ({r['goal']} x input + labelmap growth + {r['slack_bytes'] >> 20} MiB)",
                      "met": r["met"]})
    for r in report.get("training", {}).get("rows", []):
        goals.append({"goal": f"data + augmentation share of a training step ({r['amp']})", "value": r["input_share"],
                      "target": f"< {r['goal']}", "met": r["met"]})
    for r in report.get("phantom", {}).get("rows", []):
        if r["goal_seconds"]:
            goals.append({"goal": "phantom v2 case, 512 x 512 x 200, seconds", "value": r["seconds"],
                          "target": f"<= {r['goal_seconds']}", "met": r["seconds"] <= r["goal_seconds"]})
    int8 = {r["base_filters"]: r for r in report.get("forward", {}).get("rows", []) if r["dtype"] == "int8"}
    for r in report.get("forward", {}).get("rows", []):
        if r["base_filters"] in int8 and r["variant"].startswith("bf16") and not r["compiled"]:
            speedup = int8[r["base_filters"]]["slices_per_s"] / r["slices_per_s"]
            goals.append({"goal": f"int8 forward / bf16 channels_last (base {r['base_filters']})", "value": speedup,
                          "target": "> 1 (else int8 has no use here)", "met": speedup > 1.0})
    acc = report.get("accuracy", {})
    for r in acc.get("rows", []):
        if r["mode"] in ("bf16", "fp16", "int8"):
            goals.append({"goal": f"Dice fp32 vs {r['mode']} labelmap" + ("" if acc["trained"] else " (untrained)"),
                          "value": r["dice_vs_fp32"], "target": f">= {acc['goal']}",
                          "met": r["dice_vs_fp32"] >= acc["goal"]})
    return goals


def bench_phantom(s: Settings) -> dict:
    """Phantom v2 generation time for one pelvis case on a 512 x 512 x 200 grid (16 x 256 x 256 when quick)."""
    from .phantom2 import generate_case
    t0 = time.perf_counter()
    case = generate_case(PHANTOM_SEED, shape=s.phantom_shape, coverage="pelvis")
    seconds = time.perf_counter() - t0
    row = {"shape": list(case.ct.shape), "spacing": list(case.geometry.spacing), "seconds": seconds,
           "goal_seconds": GOALS["phantom_seconds"] if not s.quick else None}
    _print_row(row, ("shape", "seconds"))
    return {"rows": [row]}


def _section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_benchmark(device_name: str = "auto", quick: bool = False, depth: Optional[int] = None, model=None,
                  compile: bool = False, sections: Optional[list] = None, extra_sections=()) -> dict:
    """Run the wanted sections (default: all, with ``extra_sections``: (name, title, fn(device, settings, case,
    workdir)) from packages above the engine, e.g. the training step) and return the report."""
    started = time.perf_counter()
    device = pick_device(device_name)
    s = Settings.make(quick, depth, compile)
    wanted = set(sections or SECTIONS + tuple(name for name, _, _ in extra_sections))
    if "forward" in wanted:
        wanted.add("gemm")
    report = {"benchmark_version": BENCHMARK_VERSION, "quick": quick, "settings": asdict(s),
              "machine": machine_info(device), "section_seconds": {}}
    m = report["machine"]
    print(f"FemurUNet benchmark{' (quick)' if quick else ''}: {m['cpu']}, {m['usable_cpus']} CPUs, "
          f"torch {m['torch']} ({m['torch_threads']} threads), device {device}"
          + (f" ({m['gpu']})" if m["gpu"] else "") + f", autocast {m['autocast']}", flush=True)
    load = (m["load_average_start"] or [0.0])[0]
    m["busy_at_start"] = load >= max(0.5, 0.25 * (m["usable_cpus"] or 1))
    if m["busy_at_start"]:
        print(f"note: 1-minute load average {load:.1f} on {m['usable_cpus']} CPUs: other work is running, so absolute "
              f"figures are low and noisy (ratios within this run still compare like with like)", flush=True)
    case = None
    if wanted - {"gemm", "forward", "phantom"}:
        from .phantom import generate_case
        t0 = time.perf_counter()
        case = generate_case(ACCURACY_SEED, shape=(s.depth, SLICE_SIZE, SLICE_SIZE), direction=np.eye(3))
        report["phantom"] = {"name": case.name, "shape": list(case.ct.shape), "spacing": list(case.geometry.spacing),
                             "seconds": time.perf_counter() - t0}
    with tempfile.TemporaryDirectory(prefix="femurunet-bench-") as tmp:
        workdir = Path(tmp)
        plan = [
            ("gemm", "GEMM peak (square matmul)", lambda: bench_gemm(device, s)),
            ("forward", f"U-Net forward at {s.size}x{s.size}", lambda: bench_forward(device, s, report["gemm"])),
            ("end_to_end", f"segment_volume vs bare forward ({s.depth} slices of {SLICE_SIZE}x{SLICE_SIZE})",
             lambda: bench_end_to_end(device, s, case)),
            ("seed_baseline", f"seed-style pipeline vs ours ({s.seed_slices} slices of {SLICE_SIZE}x{SLICE_SIZE})",
             lambda: bench_seed_baseline(device, s, case, workdir)),
            ("memory", f"peak memory at depth {s.depth} and {4 * s.depth} (subprocesses)",
             lambda: bench_memory(device, s, case, workdir)),
            ("accuracy", "accuracy cost of autocast, --fast and --mirror",
             lambda: bench_accuracy(device, s, case, model)),
            ("phantom", "phantom v2 generation (pelvis, {1} x {2} grid)".format(*s.phantom_shape),
             lambda: bench_phantom(s)),
        ] + [(name, title.format(s=s), lambda fn=fn: fn(device, s, case, workdir)) for name, title, fn in extra_sections]
        for name, title, fn in plan:
            if name not in wanted:
                continue
            _section(title)
            t0 = time.perf_counter()
            report[name] = fn()
            report["section_seconds"][name] = time.perf_counter() - t0
            if "skipped" in report[name]:
                print(f"  skipped: {report[name]['skipped']}")
    report["goals"] = goal_summary(report)
    m["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["seconds"] = time.perf_counter() - started
    _section("goals")
    for g in report["goals"]:
        print(f"  [{'met' if g['met'] else 'NOT met'}] {g['goal']}: {_fmt(g['value'])} (goal {g['target']})")
    load = [f"{x[0]:.1f}" if x else "?" for x in (m["load_average_start"], m["load_average_end"])]
    print(f"\n{report['seconds']:.0f} s in all (1-min load average {load[0]} at the start, {load[1]} at the end)",
          flush=True)
    return report


SECTIONS = ("gemm", "forward", "end_to_end", "seed_baseline", "memory", "accuracy", "phantom")   # the engine's
