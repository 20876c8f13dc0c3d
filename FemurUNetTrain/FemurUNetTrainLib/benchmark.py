"""Benchmark section ``training``: samples/s of the real training loop and the share of input work in a step."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from FemurUNetLib.benchmark import GOALS, Settings, _dtype_name, _print_row, _synchronizer
from FemurUNetLib.device import autocast_dtype
from FemurUNetLib.model import UNet2D

from .augment import draw_params
from .dataset import load_dataset
from .export import export_arrays
from .distributed import Dist
from .step import amp_dtype, augment, load_batch, make_optimizer, optimise
from .train import TrainConfig, train

TITLE = "training step (base {s.train_filters}, batch {s.train_batch})"


def bench_training(device: torch.device, s: Settings, case, workdir: Path) -> dict:
    """Samples/s of the real training loop (train(), step times from its progress callback), and the share of
    data loading and augmentation in a step, timing the loop's own three step parts one by one."""
    data_dir = workdir / "train_data"
    export_arrays(case.ct, case.label, case.geometry, data_dir, "bench", empty_fraction=0.1)
    t0 = time.perf_counter()
    data = load_dataset(data_dir, s.size)
    load_s = time.perf_counter() - t0
    amps = [None] + ([autocast_dtype(device)] if autocast_dtype(device) is not None and not s.quick else [])
    rows = []
    for amp in amps:
        stamps = []
        config = TrainConfig(data=str(data_dir), out=str(workdir / "bench_model.pt"), epochs=1,
                             steps_per_epoch=s.train_steps + 1, batch_size=s.train_batch, base_filters=s.train_filters,
                             input_size=s.size, device=str(device), amp=_dtype_name(amp) if amp else "off")
        train(config, progress=lambda p: stamps.append(time.perf_counter()) if p.record is None else None)
        step_times = list(np.diff(stamps))

        phases = _phase_times(device, s, data, config)
        totals = {k: sum(v) for k, v in phases.items()}
        step_total = sum(totals.values())
        best_step = min(step_times)
        row = {"base_filters": s.train_filters, "batch": s.train_batch, "input_size": s.size,
               "amp": _dtype_name(amp), "steps": len(step_times), "train_step_seconds": step_times,
               "train_samples_per_s": s.train_batch / best_step,
               "instrumented_step_seconds": step_total / len(phases["compute"]),
               "instrumented_samples_per_s": s.train_batch * len(phases["compute"]) / step_total,
               "phase_seconds": totals, "data_share": totals["data"] / step_total,
               "augment_share": totals["augment"] / step_total,
               "input_share": (totals["data"] + totals["augment"]) / step_total, "goal": GOALS["train_input_share"]}
        row["met"] = row["input_share"] < row["goal"]
        rows.append(row)
        _print_row(row, ("base_filters", "batch", "amp", "train_samples_per_s", "instrumented_samples_per_s",
                         "data_share", "augment_share", "input_share"))
    return {"dataset_slices": len(data), "load_dataset_seconds": load_s,
            "load_seconds_per_sample": load_s / len(data), "rows": rows}


def _phase_times(device: torch.device, s: Settings, data, config: TrainConfig) -> dict:
    """Seconds per step part (data, augment, compute) of ``s.train_steps`` steps after one warm-up step, each part
    the training loop's own function, with the device synchronised between parts."""
    sync = _synchronizer(device)
    torch.manual_seed(0)
    net = UNet2D(1, 1, s.train_filters).to(device).to(memory_format=torch.channels_last).train()
    optimizer, amp, ctx = make_optimizer(net, config.lr), amp_dtype(config.amp, device), Dist()
    gen = torch.Generator().manual_seed(0)
    phases = {"data": [], "augment": [], "compute": []}
    for step in range(s.train_steps + 1):
        t0 = time.perf_counter()
        x, y = load_batch(data, torch.randint(len(data), (s.train_batch,), generator=gen), device)
        sync()
        t1 = time.perf_counter()
        params = draw_params(s.train_batch, s.size, s.size, config.augment, gen)
        x, y = augment(x, y, params, None, config, float(data.manifest["window"]["width"]))
        sync()
        t2 = time.perf_counter()
        optimise(net, x, y, optimizer, None, ctx, amp, config.bce_weight)
        sync()
        if step:        # the first step warms up
            phases["data"].append(t1 - t0)
            phases["augment"].append(t2 - t1)
            phases["compute"].append(time.perf_counter() - t2)
    return phases


SECTION = ("training", TITLE, bench_training)
