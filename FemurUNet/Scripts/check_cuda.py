"""Exercise FemurUNet's CUDA paths on a machine with an NVIDIA GPU (opt-in: CI has no GPU).

usage: python FemurUNet/Scripts/check_cuda.py [--json OUT.json]     (exit 1 when a check fails)

Checks, each printed as one JSON line: the auto device; the demo model on a phantom on CUDA vs the CPU
(labels, Dice vs truth, output grid); auto batch size; real out-of-memory back-off (a memory cap makes the big
batch fail: halve, then at batch 1 continue on the CPU) with labels unchanged; torch.compile; training on CUDA
with fp16 (GradScaler) and bf16 autocast, resume, and a torchrun launch (one process: NCCL needs 2 GPUs for 2).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from FemurUNetLib import UNet2D, segment_volume
from FemurUNetLib.evaluate import dice
from FemurUNetLib.device import pick_device
from FemurUNetLib.inference import auto_batch_size
from FemurUNetLib.modelfile import default_metadata, load_model
from FemurUNetLib.phantom import generate_case
from FemurUNetTrainLib.export import export_arrays

RESULTS: list = []


def check(name: str, ok: bool, **facts) -> None:
    row = {"check": name, "ok": bool(ok), **facts}
    RESULTS.append(row)
    print(json.dumps(row), flush=True)


def segment(case, model, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = segment_volume(case.ct, case.geometry, model, **kw)
    return result, [str(w.message) for w in caught]


def check_inference(case) -> None:
    dev = pick_device("auto")
    check("auto device is cuda", dev.type == "cuda", device=str(dev), gpu=torch.cuda.get_device_name(dev))
    truth = case.label > 0
    cpu, _ = segment(case, None, device="cpu")
    gpu, _ = segment(case, None, device="cuda")
    differ = float((cpu.labelmap != gpu.labelmap).mean())
    check("demo model cuda == cpu", differ < 1e-3 and gpu.labelmap.shape == case.ct.shape,
          voxels_differing=differ, dice_cpu=dice(cpu.labelmap > 0, truth), dice_cuda=dice(gpu.labelmap > 0, truth),
          autocast_cuda=gpu.stats["autocast"], batch_cuda=gpu.batch_size)
    fp32, _ = segment(case, None, device="cuda", autocast=False)
    differ = float((fp32.labelmap != gpu.labelmap).mean())
    check("cuda fp32 == cuda autocast", differ < 1e-3, voxels_differing=differ)
    check("auto batch size on cuda", 8 <= auto_batch_size(dev, 64, 256) <= 256,
          base64=auto_batch_size(dev, 64, 256), base16=auto_batch_size(dev, 16, 256))
    compiled, notes = segment(case, None, device="cuda", compile=True, batch_size=16)
    differ = float((compiled.labelmap != gpu.labelmap).mean())
    fell_back = [n for n in notes if "torch.compile failed" in n]       # torch's own deprecation notes don't count
    check("torch.compile on cuda", differ < 1e-3 and not fell_back, voxels_differing=differ, warnings=fell_back)


def check_out_of_memory(case) -> None:
    torch.manual_seed(0)
    net = UNet2D(base_filters=64).eval()
    net.metadata = default_metadata(64)
    reference, _ = segment(case, net, device="cuda", batch_size=2)
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    used = torch.cuda.memory_reserved()
    torch.cuda.set_per_process_memory_fraction(min(1.0, (used + 3 * 2**30) / total))   # ~3 GiB beyond the model
    try:
        halved, notes = segment(case, net, device="cuda", batch_size=256)
        differ = float((halved.labelmap != reference.labelmap).mean())
        check("oom: halves the batch on cuda", halved.batch_size < 256 and halved.device.startswith("cuda")
              and differ < 1e-3 and any("retrying" in n for n in notes),
              final_batch=halved.batch_size, voxels_differing=differ, warnings=notes[:3])
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved() + 2**20) / total))
        cpu, notes = segment(case, net, device="cuda", batch_size=4)
        differ = float((cpu.labelmap != reference.labelmap).mean())
        check("oom: batch 1 continues on the cpu", cpu.device == "cpu" and differ < 1e-3
              and any("on the CPU" in n for n in notes), device=cpu.device, voxels_differing=differ,
              warnings=notes[-1:])
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def check_intensity(case) -> None:
    """Domain randomisation on the GPU draws the same transforms as on the CPU (noise aside)."""
    from FemurUNetTrainLib.intensity import IntensityConfig, apply_intensity, draw_intensity
    width = 2000.0
    images = torch.rand(32, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    params = draw_intensity(32, IntensityConfig(enabled=True, p=0.6, noise_sd_hu=0), torch.Generator().manual_seed(1))
    gpu = apply_intensity(images.cuda(), params, width)
    diff = float((gpu.cpu() - apply_intensity(images, params, width)).abs().max())
    check("intensity randomisation on cuda = on cpu", gpu.device.type == "cuda" and diff <= 2e-5, max_abs_diff=diff)


def run_cli(*args, torchrun: int = 0) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(torchrun)] if torchrun else [sys.executable]
    return subprocess.run([*launcher, "-m", "FemurUNetTrainLib.cli", *args], capture_output=True, text=True, timeout=600)


def check_training(work: Path) -> None:
    for seed in (11, 12, 13):
        out = work / ("val" if seed == 13 else "train")
        case = generate_case(seed)
        export_arrays(case.ct, case.label, case.geometry, out, f"p{seed}", empty_fraction=0.5, seed=seed)
    common = [str(work / "train"), "--val", str(work / "val"), "--base-filters", "16", "--steps-per-epoch", "20",
              "--batch-size", "8", "--lr", "3e-4", "--warmup-epochs", "1", "--quiet", "--device", "cuda"]
    for amp in ("fp16", "bf16"):
        out = work / amp / "m.pt"
        run = run_cli("train", *common, "--out", str(out), "--epochs", "3", "--amp", amp)
        log = [json.loads(line) for line in (work / amp / "m.log.jsonl").read_text().splitlines()] if out.exists() else []
        check(f"train on cuda, amp {amp}", run.returncode == 0 and len(log) == 3 and log[-1]["val_dice"] > 0.3
              and all(np.isfinite(r["loss"]) for r in log), rc=run.returncode, stderr=run.stderr[-300:],
              val_dice=[round(r["val_dice"], 3) for r in log], seconds=[r["seconds"] for r in log],
              device=load_model(out).metadata["training"]["device"] if out.exists() else None)
    resumed = run_cli("train", *common, "--out", str(work / "bf16" / "m.pt"), "--epochs", "5", "--amp", "bf16", "--resume")
    log = (work / "bf16" / "m.log.jsonl").read_text().splitlines()
    check("resume on cuda", resumed.returncode == 0 and len(log) == 5, rc=resumed.returncode, epochs=len(log),
          stderr=resumed.stderr[-300:])
    ddp = run_cli("train", *common, "--out", str(work / "ddp" / "m.pt"), "--epochs", "2", torchrun=1)
    meta = load_model(work / "ddp" / "m.pt").metadata["training"] if (work / "ddp" / "m.pt").exists() else {}
    check("torchrun launch on cuda (1 process: one GPU here)", ddp.returncode == 0 and meta.get("world_size") == 1
          and meta.get("device") == "cuda", rc=ddp.returncode, stderr=ddp.stderr[-300:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this script checks the CUDA paths and needs an NVIDIA GPU", file=sys.stderr)
        return 2
    case = generate_case(9000)
    for step in (check_inference, check_out_of_memory, check_intensity):
        try:
            step(case)
        except Exception as exc:  # report and go on to the next group
            check(f"{step.__name__} raised", False, error=f"{type(exc).__name__}: {exc}"[:500])
    with tempfile.TemporaryDirectory() as tmp:
        try:
            check_training(Path(tmp))
        except Exception as exc:
            check("training raised", False, error=f"{type(exc).__name__}: {exc}"[:500])
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "gpu": torch.cuda.get_device_name(),
                                               "checks": RESULTS}, indent=1))
    failed = [r["check"] for r in RESULTS if not r["ok"]]
    print(f"{len(RESULTS) - len(failed)}/{len(RESULTS)} CUDA checks passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
