"""Train the level gate (``FemurUNetLib.gate``) on phantom v2 scans: which axial levels hold a femur.

Two steps, each resumable:

    python3 -m FemurUNetTrainLib.gate_train make gate_data/train --seeds 600000-605999 --jobs 2
    python3 -m FemurUNetTrainLib.gate_train make gate_data/val --seeds 610000-610039
    python3 -m FemurUNetTrainLib.gate_train train gate_data/train gate_data/val --out gate.pt --minutes 25

``make`` renders each seed on a grid drawn per seed (in-plane 1.6-3.2 mm, slices 1.5-5 mm, a leg-weighted coverage
mix, or ``--mix``) and keeps only the gate's view of it: the 4 mm volume and which levels hold a femur (a few
hundred kB per scan; a folder of finished seeds is skipped on a rerun). ``train`` draws one scan at a time, crops a
random run of levels (a scan may start and end anywhere), flips it left-right, shifts it, cuts a field edge into one
scan in four and a field circle into one in seven, varies its HU scale, offset and noise; AdamW, cosine rate; the
checkpoint with the lowest validation loss is kept. Femur levels weigh ``--positive-weight`` (3) in the loss: a
femur level called empty deletes a femur piece, an empty level called femur only leaves what the U-Net gave.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.gate import (AIR_HU, BODY_HU, LevelGate, gate_inputs, gate_volume, level_targets, load_gate,
                               save_gate)
from FemurUNetLib.geometry import Reorientation
from FemurUNetLib.phantom import HU_MIN, HU_MAX
from FemurUNetLib.phantom2 import generate_case

from .options import seed_list

GATE_MIX = {"pelvis": 14, "hip_to_knee": 12, "whole_leg": 16, "knee_to_ankle": 16, "lower_leg": 16,
            "abdomen_to_thigh": 12, "abdomen": 7, "chest": 7}
MIN_LEVELS = 8                        # the shortest crop: 32 mm
POSITIVE_WEIGHT = 3.0
FIELD_CUT, FIELD_CUT_CHANCE = 0.3, 0.25      # a field edge takes up to 30 % of the body off one side, in 1 scan in 4
CIRCLE_CUT, CIRCLE_CUT_CHANCE = (0.6, 0.95), 0.15   # a field circle of 60-95 % of the body's reach, in 1 scan in 7


def mix_option(text: str) -> dict:
    """A coverage mix from ``name=weight`` pairs separated by commas (``lower_leg=3,knee_to_ankle=2``)."""
    try:
        mix = {name.strip(): float(weight) for name, weight in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected name=weight pairs like lower_leg=3,pelvis=1") from None
    unknown = sorted(set(mix) - set(GATE_MIX))
    if unknown or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected weights >= 0 (not all 0) of {', '.join(GATE_MIX)}"
                                         + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    return mix


def gate_case(seed: int, mix: Optional[dict] = None) -> tuple:
    """(gate volume int16, bool per level, coverage) of one phantom v2 scan on a grid drawn from ``seed``, its
    coverage drawn from ``mix`` (default ``GATE_MIX``)."""
    rng = np.random.default_rng([seed, 38])
    mix = GATE_MIX if mix is None else mix
    names = list(mix)
    p = np.array([mix[n] for n in names], float)
    coverage = str(rng.choice(names, p=p / p.sum()))
    inplane, between = float(rng.uniform(1.6, 3.2)), float(rng.uniform(1.5, 5.0))
    case = generate_case(seed, coverage=coverage, spacing=(inplane, inplane, between), jobs=1)
    axial = Reorientation.for_geometry(case.geometry)
    volume = gate_volume(axial.to_canonical(case.ct), axial.canonical_spacing(case.geometry))
    targets = level_targets(axial.to_canonical(case.label) > 0, volume.shape[0])
    return np.clip(np.rint(volume), HU_MIN, HU_MAX).astype(np.int16), targets, coverage


def _make_one(job: tuple) -> str:
    folder, seed, mix = job
    path = Path(folder) / f"{seed}.npz"
    if not path.exists():
        volume, targets, coverage = gate_case(seed, mix)
        partial = path.with_suffix(".part.npz")
        np.savez_compressed(partial, vol=volume, target=targets, coverage=coverage)
        partial.replace(path)
    return path.name


def make_cases(folder, seeds, jobs: int = 1, mix: Optional[dict] = None) -> int:
    """Render every seed not yet in ``folder`` (coverages drawn from ``mix``, default ``GATE_MIX``); returns how many
    files the folder holds for ``seeds``."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    todo = [(str(folder), s, mix) for s in seeds]
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        for done, name in enumerate(pool.imap_unordered(_make_one, todo), 1):
            print(f"{done}/{len(todo)} {name}", flush=True)
    return sum((Path(folder) / f"{s}.npz").exists() for s in seeds)


def load_cases(folder) -> list:
    """[(volume int16, targets float32, coverage)] of every finished scan in ``folder``."""
    cases = []
    for path in sorted(Path(folder).glob("*[0-9].npz")):
        with np.load(path) as d:
            cases.append((d["vol"], d["target"].astype(np.float32), str(d["coverage"])))
    if not cases:
        raise FemurUNetError(f"{folder}: no gate scans (make them with 'gate_train make')")
    return cases


def augment(volume: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> tuple:
    """A random run of levels, a left-right flip, a shift of up to 8 pixels, a field edge (``cut_field``) in a
    quarter of the scans, a field circle (``cut_circle``) in one in seven, HU x 0.9-1.1 + -40..40, noise."""
    levels = volume.shape[0]
    if levels > MIN_LEVELS and rng.random() < 0.6:
        n = int(rng.integers(MIN_LEVELS, levels + 1))
        k = int(rng.integers(0, levels - n + 1))
        volume, targets = volume[k:k + n], targets[k:k + n]
    v = volume.astype(np.float32)
    if rng.random() < 0.5:
        v = v[:, :, ::-1]
    v = np.roll(v, tuple(int(s) for s in rng.integers(-8, 9, 2)), axis=(1, 2))
    if rng.random() < FIELD_CUT_CHANCE:
        v = cut_field(v, rng)
    if rng.random() < CIRCLE_CUT_CHANCE:
        v = cut_circle(v, rng)
    v = np.where(v > -900, v * rng.uniform(0.9, 1.1) + rng.uniform(-40, 40), v)
    v = v + rng.normal(0, rng.uniform(0, 20), v.shape).astype(np.float32)
    return np.ascontiguousarray(v), np.ascontiguousarray(targets)


def cut_field(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Air beyond a straight edge at a random angle that takes up to FIELD_CUT of the body's extent across it off
    one side, the same on every level: a scan field that cuts the body (phantom v2 draws such fields, rarely)."""
    body, yy, xx = _body_grid(volume)
    if not body.any():
        return volume
    angle = rng.uniform(0.0, 2 * np.pi)
    across = np.cos(angle) * xx + np.sin(angle) * yy
    low, high = across[body].min(), across[body].max()
    out = volume.copy()
    out[:, across > high - rng.uniform(0.0, FIELD_CUT) * (high - low)] = AIR_HU
    return out


def cut_circle(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Air outside a circle around the body's middle whose radius is CIRCLE_CUT of the body's reach from there, the
    same on every level: a small reconstruction field that cuts both legs' outer sides."""
    body, yy, xx = _body_grid(volume)
    if not body.any():
        return volume
    rows, cols = np.nonzero(body)
    cy, cx = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
    reach = float(np.sqrt((rows - cy) ** 2 + (cols - cx) ** 2).max())
    cy, cx = np.array([cy, cx]) + rng.uniform(-0.1, 0.1, 2) * reach
    out = volume.copy()
    out[:, (yy - cy) ** 2 + (xx - cx) ** 2 > (rng.uniform(*CIRCLE_CUT) * reach) ** 2] = AIR_HU
    return out


def _body_grid(volume: np.ndarray) -> tuple:
    """(body on any level, row index, column index) of an axial stack: where a field's edge is drawn."""
    yy, xx = np.mgrid[:volume.shape[1], :volume.shape[2]]
    return (volume > BODY_HU).any(axis=0), yy, xx


def level_loss(logits: torch.Tensor, targets: torch.Tensor, positive_weight: float) -> torch.Tensor:
    """Binary cross-entropy per level, femur levels weighing ``positive_weight``."""
    return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=torch.tensor(positive_weight))


@torch.no_grad()
def validate(net: LevelGate, cases: list, positive_weight: float = POSITIVE_WEIGHT) -> dict:
    """Mean loss (as trained) and plain BCE over the scans; the lowest P on a femur level and the highest on a
    level without one."""
    net.eval()
    losses, bces, lowest, highest = [], [], [], []
    for volume, targets, _ in cases:
        logits = net(gate_inputs(volume.astype(np.float32)))
        p, t = torch.sigmoid(logits), torch.from_numpy(targets)
        losses.append(level_loss(logits, t, positive_weight).item())
        bces.append(level_loss(logits, t, 1.0).item())
        if t.any():
            lowest.append(float(p[t > 0].min()))
        if (t == 0).any():
            highest.append(float(p[t == 0].max()))
    net.train()
    return {"loss": float(np.mean(losses)), "bce": float(np.mean(bces)), "lowest_on_femur": min(lowest, default=None),
            "highest_without": max(highest, default=None)}


def train_gate(train_dir, val_dir, out, minutes: float, lr: float = 2e-3, accumulate: int = 4, seed: int = 38,
               threads: int = 2, validate_every: int = 100, max_steps: Optional[int] = None, init=None,
               positive_weight: float = POSITIVE_WEIGHT) -> list:
    """Train for ``minutes`` (or ``max_steps``) from scratch or from the gate file ``init``; the best validation
    checkpoint goes to ``out`` (its log beside it). The rate follows a cosine over the minutes."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    train, val = load_cases(train_dir), load_cases(val_dir)
    net = LevelGate() if init is None else load_gate(init).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    start, step, best, log = time.time(), 0, math.inf, []
    while time.time() - start < minutes * 60 and (max_steps is None or step < max_steps):
        done = (time.time() - start) / (minutes * 60)
        for group in opt.param_groups:
            group["lr"] = lr / 20 + (lr - lr / 20) * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
        opt.zero_grad()
        for _ in range(accumulate):
            volume, targets, _ = train[int(rng.integers(len(train)))]
            v, t = augment(volume, targets, rng)
            (level_loss(net(gate_inputs(v)), torch.from_numpy(t), positive_weight) / accumulate).backward()
        opt.step()
        step += 1
        if step % validate_every == 0:
            log.append({"step": step, "minutes": round((time.time() - start) / 60, 2),
                        **validate(net, val, positive_weight)})
            print(json.dumps(log[-1]), flush=True)
            if log[-1]["loss"] < best:
                best = log[-1]["loss"]
                save_gate(net, out, {"step": step, "scans": len(train), "validation": log[-1],
                                     "train_dir": Path(train_dir).name, "minutes": minutes, "lr": lr, "seed": seed,
                                     "positive_weight": positive_weight,
                                     "init": None if init is None else Path(init).name})
    Path(str(out) + ".log.json").write_text(json.dumps(log, indent=1))
    return log


def main(argv=None) -> int:
    prog = "python3 -m FemurUNetTrainLib.gate_train"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="render phantom scans into the gate's 4 mm view")
    make.add_argument("folder")
    make.add_argument("--seeds", type=seed_list, required=True, help="e.g. 600000-605999")
    make.add_argument("--jobs", type=int, default=1)
    make.add_argument("--mix", type=mix_option, help="coverage weights, e.g. lower_leg=3,knee_to_ankle=2 "
                      f"(default {','.join(f'{k}={v}' for k, v in GATE_MIX.items())})")
    train = sub.add_parser("train", help="train the gate on made scans")
    train.add_argument("train_dir")
    train.add_argument("val_dir")
    train.add_argument("--out", required=True)
    train.add_argument("--minutes", type=float, default=25.0)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--threads", type=int, default=2)
    train.add_argument("--init", help="start from this gate file (default: from scratch)")
    train.add_argument("--positive-weight", type=float, default=POSITIVE_WEIGHT,
                       help=f"loss weight of femur levels (default {POSITIVE_WEIGHT:g})")
    args = p.parse_args(argv)
    try:
        if args.command == "make":
            print(f"{make_cases(args.folder, args.seeds, args.jobs, args.mix)} scans in {args.folder}")
        else:
            train_gate(args.train_dir, args.val_dir, args.out, args.minutes, args.lr, threads=args.threads,
                       init=args.init, positive_weight=args.positive_weight)
    except FemurUNetError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
