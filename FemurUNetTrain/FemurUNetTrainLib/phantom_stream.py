"""Training on phantoms made while the network trains: every case a new individual, never a fixed dataset.

Worker processes generate phantom v2 cases and turn each into model-size slices the way ``femurunet export`` +
``load_dataset`` do (canonical axial slices, the engine's 8-bit window, the engine's pad-and-resize; every slice of
the case, stored as 8-bit at model size, with its neighbouring slices as channels for a 2.5-D model:
``--slice-offsets-mm``); the training process keeps them in a pool on the device (the oldest
cases give way when it is full) and draws every batch uniformly from it. The step is ``femurunet train``'s:
the seed's augmentation, optionally ``--intensity-augment``, 1 - Dice + W x BCE, Adam, autocast, a weight
average (EMA) that is validated and saved. The rate warms up, then follows a cosine over the time budget.
Validation: fixed seeds generated first, evaluated every ``--val-every`` seconds; the best average is saved.
Made for a GPU machine with many cores; not bit-reproducible (what is in the pool depends on the workers' timing).

    python3 -m FemurUNetTrainLib.phantom_stream --init MODEL.pt --out OUT.pt --minutes 7 --device cuda
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import queue
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from FemurUNetLib.device import pick_device
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.geometry import CANONICAL_ORIENTATION, Reorientation
from FemurUNetLib.model import UNet2D
from FemurUNetLib.modelfile import load_model, save_model
from FemurUNetLib.phantom2 import ALL_COVERAGES, generate_case
from FemurUNetLib.phantom2_hips import HIP_SHAPES
from FemurUNetLib.phantom2_native import coarse_spacing
from FemurUNetLib.neighbours import ONE_SLICE, SliceStack, model_offsets, parse_offsets
from FemurUNetLib.preprocess import min_side, window_to_uint8
from FemurUNetLib.segment_options import positive_int, positive_number, share

from .augment import draw_params
from .dataset import SliceDataset, to_model_tensors
from .distributed import Dist
from .intensity import draw_intensity
from .loss import evaluate
from .options import AMP_MODES, AugmentConfig, IntensityConfig, TrainConfig, seed_list
from .step import WeightAverage, amp_dtype, augment, make_optimizer, optimise
from .train import start_provenance
from .widen import add_input_slices, widened_start


def coarse_seed(seed: int) -> bool:
    """A third of the seeds are rendered on the isotropic 2-3 mm grid of ``coarse_spacing`` (stage 14's way)."""
    return seed % 3 == 1


def parse_coverage_mix(text: str) -> dict:
    """``--coverage-mix`` ``name=weight,...`` (names of phantom2.ALL_COVERAGES) -> {name: probability}."""
    mix = {}
    for item in text.split(","):
        name, _, weight = item.partition("=")
        name = name.strip()
        if name not in ALL_COVERAGES:
            raise argparse.ArgumentTypeError(f"{text!r}: {name!r} is not a coverage ({', '.join(ALL_COVERAGES)})")
        if name in mix:
            raise argparse.ArgumentTypeError(f"{text!r}: {name} is given twice")
        try:
            mix[name] = float(weight)
        except ValueError:
            mix[name] = math.nan
        if not mix[name] >= 0 or math.isinf(mix[name]):
            raise argparse.ArgumentTypeError(f"{text!r}: {name}'s weight must be a number >= 0, got {weight!r}")
    total = sum(mix.values())
    if total <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the weights sum to 0")
    return {name: w / total for name, w in mix.items()}


def stream_coverage(seed: int, mix: Optional[dict]) -> Optional[str]:
    """The coverage a training seed is made with under ``mix`` (its own stream: the same for a seed on every run);
    None without a mix (the generator draws it)."""
    if not mix:
        return None
    return str(np.random.default_rng([int(seed), 11]).choice(list(mix), p=list(mix.values())))


def stream_hips(seed: int, share: Optional[float]) -> Optional[str]:
    """The hip bone shape a training seed is made with when ``share`` of them get MRI2PSM's (its own stream);
    None without a share (the generator draws it)."""
    if share is None:
        return None
    return HIP_SHAPES[1] if _in_share(seed, 12, share) else HIP_SHAPES[0]


def stream_oa(seed: int, share: Optional[float]) -> bool:
    """Whether a training seed is made with osteoarthritic hips when ``share`` of them are (its own stream)."""
    return bool(share) and _in_share(seed, 13, share)


def stream_tha(seed: int, share: Optional[float]) -> bool:
    """Whether a training seed is made with a hip arthroplasty when ``share`` of them are (its own stream)."""
    return bool(share) and _in_share(seed, 14, share)


def _in_share(seed: int, stream: int, share: float) -> bool:
    """Whether ``seed`` is among ``share`` of the seeds, drawn from the seed's own ``stream``."""
    return bool(np.random.default_rng([int(seed), stream]).random() < share)


def case_slices(seed: int, window: dict, input_size: int, min_field: float = 0.0, coverage=None, hips=None,
                offsets=ONE_SLICE, oa: bool = False, tha: bool = False, **grid) -> tuple:
    """(seed, images uint8 (n, C, S, S), masks bool (n, S, S)): every canonical axial slice of phantom ``seed``
    at model size, with its neighbours at ``offsets`` mm as the C channels (``neighbours``), padded to the model's
    minimum field (``min_field`` mm) as inference pads them. ``coverage`` and ``hips``: one of
    phantom2.ALL_COVERAGES and of HIP_SHAPES (default: drawn); ``oa``, ``tha``: osteoarthritic hips (phantom2_oa),
    a hip arthroplasty (phantom2_arthroplasty);
    ``grid``: ``generate_case`` overrides (``shape``, ``spacing``); default: drawn, coarse by seed."""
    torch.set_num_threads(1)
    if not grid and coarse_seed(seed):
        grid = {"spacing": coarse_spacing(seed)}
    case = generate_case(seed, jobs=1, coverage=coverage, hips=hips, oa=oa, tha=tha, **grid)
    axial = Reorientation.for_geometry(case.geometry)
    ct, label = axial.to_canonical(case.ct), axial.to_canonical(case.label != 0)
    spacing = axial.canonical_spacing(case.geometry)
    images = [window_to_uint8(hu, window["center"], window["width"]) for hu in ct]
    side = min_side(min_field, spacing)
    x, y = to_model_tensors(images, [m.astype(np.uint8) * 255 for m in label], input_size, min_side=side)
    x = SliceStack(offsets, spacing[2], len(ct)).blend(x, slice(None))
    return seed, x.mul(255.0).round_().to(torch.uint8).numpy(), y[:, 0].numpy()


class SlicePool:
    """Model-size slices (C channels each) on the device, a ring of ``capacity`` slices (the oldest go first when
    full)."""

    def __init__(self, capacity: int, size: int, device: torch.device, channels: int = 1):
        try:
            self.images = torch.empty((capacity, channels, size, size), dtype=torch.uint8, device=device)
            self.masks = torch.empty((capacity, 1, size, size), dtype=torch.bool, device=device)
        except (RuntimeError, torch.OutOfMemoryError):
            need = capacity * (channels + 1) * size * size / 1e9
            raise FemurUNetError(f"--capacity {capacity}: a pool of {capacity} slices of {channels + 1} x {size} x "
                                 f"{size} bytes ({need:.1f} GB) does not fit on {device}; lower --capacity") from None
        self.capacity, self.added, self.cases = capacity, 0, []

    def __len__(self) -> int:
        return min(self.added, self.capacity)

    def add(self, seed: int, images: np.ndarray, masks: np.ndarray) -> None:
        images, masks = images[-self.capacity:], masks[-self.capacity:]
        at = (self.added + np.arange(len(images))) % self.capacity
        index = torch.from_numpy(at).to(self.images.device)
        self.images[index] = torch.from_numpy(images).to(self.images.device)
        self.masks[index] = torch.from_numpy(masks).unsqueeze(1).to(self.masks.device)
        self.added += len(images)
        self.cases.append(int(seed))

    def batch(self, indices: torch.Tensor) -> tuple:
        indices = indices.to(self.images.device)
        return self.images[indices].float().div_(255.0), self.masks[indices]

    def dataset(self) -> SliceDataset:
        """The whole pool as a ``SliceDataset`` (float images), for ``evaluate``."""
        n = len(self)
        return SliceDataset(images=self.images[:n].float().div_(255.0), masks=self.masks[:n],
                            names=[str(i) for i in range(n)], manifest={"cases": {}}, root=Path("."))


def scheduled_rate(lr: float, min_lr: float, warmup_steps: int, step: int, fraction: float) -> float:
    """Linear warm-up over ``warmup_steps``, then a cosine from ``lr`` to ``min_lr`` over the time budget."""
    cosine = min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))
    return cosine * min(1.0, (step + 1) / max(1, warmup_steps))


def _seeds(text: str, flag: str) -> list:
    try:
        return seed_list(text)
    except argparse.ArgumentTypeError as exc:
        raise FemurUNetError(f"{flag} {exc}") from None


def starting_model(path, offsets=None):
    """The ``--init`` model reading the slices at ``offsets`` (``--slice-offsets-mm``; None: the model's own):
    a one-slice model gains the others with zero weights (``add_input_slices``: the same outputs to start from)."""
    start = load_model(path)
    try:
        have = model_offsets(start.metadata)
    except FemurUNetError as exc:
        raise FemurUNetError(f"{path}: {exc}") from None
    if offsets is None or tuple(offsets) == have:
        return start
    if have != ONE_SLICE:
        raise FemurUNetError(f"{path}: the model reads slices at {list(have)} mm, not at --slice-offsets-mm "
                             f"{list(offsets)}")
    return add_input_slices(start, offsets)


def stream_optimizer(net: UNet2D, lr: float, input_scale: float = 1.0) -> torch.optim.Optimizer:
    """``make_optimizer``'s Adam; the first convolution (it reads the input slices) learns at ``input_scale`` x
    the rate, so channels that start at zero weight can grow within a short run (Adam ignores gradient scale)."""
    if input_scale == 1.0:
        return make_optimizer(net, lr)
    first = list(net.enc[0][0].parameters())
    rest = [p for p in net.parameters() if all(p is not q for q in first)]
    return make_optimizer(net, lr, [{"params": rest, "scale": 1.0}, {"params": first, "scale": input_scale}])


class _Run:
    """The network, its average, the optimiser and the two pools of one streaming run."""

    def __init__(self, args, device: torch.device):
        self.train_seeds, self.val_seeds = _seeds(args.seeds, "--seeds"), _seeds(args.val_seeds, "--val-seeds")
        if set(self.train_seeds) & set(self.val_seeds):
            raise FemurUNetError(f"--seeds {args.seeds} and --val-seeds {args.val_seeds} overlap")
        start = starting_model(args.init, args.slice_offsets_mm)
        self.offsets = model_offsets(start.metadata)
        self.args, self.device, self.start, self.init_base = args, device, start, start.base_filters
        self.init_training = start_provenance(start.metadata)
        self.window, self.size = start.metadata["window"], int(start.metadata["input_size"])
        self.min_field = float(start.metadata.get("min_field_mm", 0.0))
        base = args.base_filters or start.base_filters
        self.config = TrainConfig(out=args.out, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                  base_filters=base, input_size=self.size, bce_weight=args.bce_weight,
                                  ema=args.ema, augment=AugmentConfig(),
                                  intensity=IntensityConfig(enabled=args.intensity_augment))
        torch.manual_seed(args.seed)
        self.net = UNet2D(len(self.offsets), 1, base)
        self.net.load_state_dict(widened_start(start, base, args.seed, args.init).state_dict())
        self.net.to(device).to(memory_format=torch.channels_last)
        self.average = WeightAverage(self.net, args.ema)
        self.optimizer = stream_optimizer(self.net, args.lr, args.input_lr_scale)
        self.amp = amp_dtype(args.amp, device)
        self.train = SlicePool(args.capacity, self.size, device, len(self.offsets))
        self.val, self.val_parts = None, {}
        self.gen = torch.Generator().manual_seed(args.seed)
        self.intensity_gen = torch.Generator().manual_seed(args.seed + 1)
        self.steps, self.best, self.log = 0, math.inf, []

    def add(self, result) -> None:
        seed, images, masks = result
        if seed not in self.val_seeds:
            self.train.add(seed, images, masks)
            return
        self.val_parts[seed] = (images, masks)
        if len(self.val_parts) == len(self.val_seeds):      # complete: on the device, in seed order
            slices = sum(len(i) for i, _ in self.val_parts.values())
            self.val = SlicePool(slices, self.size, self.device, len(self.offsets))
            for s in self.val_seeds:
                self.val.add(s, *self.val_parts.pop(s))

    def step(self, lr: float) -> float:
        c, n = self.config, self.args.batch_size
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("scale", 1.0)
        x, y = self.train.batch(torch.randint(len(self.train), (n,), generator=self.gen))
        params = draw_params(n, self.size, self.size, c.augment, self.gen)
        drawn = draw_intensity(n, c.intensity, self.intensity_gen) if c.intensity.enabled else None
        x, y = augment(x, y, params, drawn, c, float(self.window["width"]))
        loss = optimise(self.net, x, y, self.optimizer, None, Dist(), self.amp, c.bce_weight)
        self.average.update(self.net)
        self.steps += 1
        return loss

    def validate(self, model=None) -> tuple:
        return evaluate(model or self.average.net, self.val.dataset(), self.device, self.amp, 128, Dist(), True)

    def save(self, path, val_loss: float, val_dice: float) -> None:
        training = {"recipe": "phantom stream (femurunet train's step on phantoms made while training)",
                    "init": str(self.args.init), "steps": self.steps, "batch_size": self.args.batch_size,
                    "lr": self.args.lr, "min_lr": self.args.min_lr, "ema": self.args.ema,
                    "bce_weight": self.args.bce_weight, "intensity": self.config.intensity.to_dict(),
                    "train_cases": len(self.train.cases), "val_seeds": self.args.val_seeds,
                    "seeds": self.args.seeds, "val_loss": val_loss, "val_dice": val_dice,
                    "torch": str(torch.__version__), "device": self.device.type, "init_training": self.init_training,
                    "init_base_filters": self.init_base, "coverage_mix": self.args.coverage_mix,
                    "mri_hips": self.args.mri_hips, "oa_hips": self.args.oa_hips, "tha_hips": self.args.tha_hips,
                    "input_lr_scale": self.args.input_lr_scale}
        inputs = {} if self.offsets == ONE_SLICE else {"slice_offsets_mm": list(self.offsets)}
        save_model(self.average.net, path, window=self.window, orientation=CANONICAL_ORIENTATION,
                   input_size=self.size, min_field_mm=self.min_field, smooth_z_mm=0.0, training=training, **inputs)


def _record(run: _Run, started: float, losses: list, out: Path) -> dict:
    """Validate the average (once every validation seed has arrived), keep it when best, log a line."""
    record = {"seconds": round(time.time() - started, 1), "steps": run.steps, "train_cases": len(run.train.cases),
              "train_slices": len(run.train), "loss": float(np.mean(losses)) if losses else None,
              "lr": run.optimizer.param_groups[0]["lr"]}
    if run.val is not None:
        if run.start is not None:     # the starting model's figures, once, then it is dropped
            record["start_val_loss"], record["start_val_dice"] = run.validate(run.start.to(run.device))
            run.start = None
        record["val_loss"], record["val_dice"] = run.validate()
        if record["val_loss"] < run.best:
            run.best, record["best"] = record["val_loss"], True
            run.save(out, record["val_loss"], record["val_dice"])
    run.log.append(record)
    with open(out.with_suffix(".log.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)
    return record


def _train_until(run: _Run, arrived: queue.Queue, deadline: float, out: Path) -> None:
    args, started = run.args, time.time()
    t0, losses, last_record = None, [], time.time()
    while time.time() < deadline and run.steps < (args.max_steps or math.inf):
        while not arrived.empty():
            run.add(arrived.get())
        if len(run.train.cases) < args.min_cases:
            time.sleep(0.2)
            continue
        t0 = t0 or time.time()
        fraction = max((time.time() - t0) / max(1e-6, deadline - t0), run.steps / (args.max_steps or math.inf))
        losses.append(run.step(scheduled_rate(args.lr, args.min_lr, args.warmup_steps, run.steps, fraction)))
        if time.time() - last_record >= args.val_every:
            _record(run, started, losses, out)
            losses, last_record = [], time.time()
    _record(run, started, losses, out)
    last = run.log[-1]
    run.save(out.with_name(out.stem + "_last.pt"), last.get("val_loss", math.nan), last.get("val_dice", math.nan))


def stream_train(args) -> list:
    """Run the workers and the training until ``args.minutes`` have passed (or ``args.max_steps`` steps are done);
    returns the log records."""
    started = time.time()
    device = pick_device(args.device)
    torch.set_num_threads(max(1, args.threads))
    torch.backends.cudnn.benchmark = device.type == "cuda"
    run = _Run(args, device)               # checks the seeds and the starting model before anything is written
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".log.jsonl").unlink(missing_ok=True)
    arrived = queue.Queue()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"                      # the workers' (spawned processes read it at start)
    context = multiprocessing.get_context("spawn")
    grid = {"shape": args.shape} if args.shape else {}
    with context.Pool(args.workers, initializer=os.nice, initargs=(args.worker_nice,)) as workers:
        for seed in run.val_seeds + run.train_seeds:     # validation cases as drawn, training ones by the mix
            drawn = seed in run.val_seeds
            coverage = None if drawn else stream_coverage(seed, args.coverage_mix)
            hips = None if drawn else stream_hips(seed, args.mri_hips)
            oa, tha = (not drawn and f(seed, s) for f, s in ((stream_oa, args.oa_hips), (stream_tha, args.tha_hips)))
            workers.apply_async(case_slices, (seed, run.window, run.size, run.min_field, coverage, hips, run.offsets,
                                              oa, tha), grid,
                                callback=arrived.put,
                                error_callback=lambda exc: print(f"phantom failed: {exc!r}", flush=True))
        _train_until(run, arrived, started + 60.0 * args.minutes, out)
        workers.terminate()
    return run.log


def _shape(text: str) -> tuple:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three voxel counts K,J,I")
    return shape


def _offsets(text: str) -> tuple:
    try:
        return parse_offsets(text)
    except FemurUNetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a streaming run (``femurunet train-phantoms`` and ``python3 -m`` this module)."""
    p.add_argument("--init", required=True,
                   help="model to start from (its input size, window and, unless --base-filters, width)")
    p.add_argument("--out", required=True, help="best model (the weight average at its best validation)")
    p.add_argument("--minutes", type=positive_number, default=7.0, help="wall time of the whole run (default %(default)s)")
    p.add_argument("--max-steps", type=positive_int, help="end after this many steps, if --minutes has not passed "
                   "first (the learning rate then follows whichever end is nearer; default: none)")
    p.add_argument("--seeds", default="50000-59999", help="training phantom seeds A-B (default %(default)s)")
    p.add_argument("--val-seeds", default="49000-49011", help="validation phantom seeds (default %(default)s)")
    p.add_argument("--coverage-mix", type=parse_coverage_mix, help="coverages of the training phantoms, weighted: "
                   "e.g. knee_to_ankle=2,pelvis=1 (default: as the generator draws them; validation always so)")
    p.add_argument("--mri-hips", type=share, metavar="SHARE", help="share of the training phantoms with "
                   "MRI2PSM's hip bones (phantom2_hips; default: as the generator draws them, a third)")
    p.add_argument("--oa-hips", type=share, metavar="SHARE", help="share of the training phantoms with "
                   "osteoarthritic hips (phantom2_oa: sclerosis, cysts, osteophytes; default: none)")
    p.add_argument("--tha-hips", type=share, metavar="SHARE", help="share of the training phantoms with a total hip "
                   "arthroplasty (phantom2_arthroplasty: head resected, component labelled femur; default: as the "
                   "generator draws them, 12 %%)")
    p.add_argument("--workers", type=positive_int, default=max(1, (os.cpu_count() or 2) - 2), help="phantom processes")
    p.add_argument("--worker-nice", type=int, default=10, help="niceness of the phantom processes")
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads of the training process")
    p.add_argument("--min-cases", type=positive_int, default=8, help="training cases before the first step")
    p.add_argument("--capacity", type=positive_int, default=120000, help="slices kept in the pool on the device")
    p.add_argument("--slice-offsets-mm", type=_offsets, metavar="MM,MM,...", help="a 2.5-D model: the slices at "
                   "these distances (mm, 0 among them) as its input channels; a one-slice --init model gains them with "
                   "zero weights (default: the --init model's inputs; a leading minus needs the =: "
                   "--slice-offsets-mm=-24,-8,0,8,24)")
    p.add_argument("--base-filters", type=positive_int, help="widen the --init model to this multiple of its width "
                   "(same outputs to start from; default: its width)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_number, default=1e-4)
    p.add_argument("--min-lr", type=float, default=2e-6)
    p.add_argument("--input-lr-scale", type=positive_number, default=1.0, help="the first convolution's rate as "
                   "a multiple of the others' (e.g. 20 to let new --slice-offsets-mm channels grow; default 1)")
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--bce-weight", type=float, default=10.0)
    p.add_argument("--intensity-augment", action="store_true")
    p.add_argument("--amp", default="auto", choices=AMP_MODES)
    p.add_argument("--val-every", type=positive_number, default=60.0, help="seconds between validations")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--shape", type=_shape, help="K,J,I: every phantom on a grid of this shape (tests)")


def main(argv=None) -> int:
    """``python3 -m FemurUNetTrainLib.phantom_stream``: for machines without SimpleITK (the ``femurunet`` command
    needs it); errors as the command gives them."""
    prog = "python3 -m FemurUNetTrainLib.phantom_stream"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_arguments(p)
    try:
        summary(stream_train(p.parse_args(argv)))
    except FemurUNetError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def summary(log: list) -> None:
    best = [r for r in log if r.get("best")]
    if best:
        r = best[-1]
        print(f"best validation: loss {r['val_loss']:.4f}, Dice {r['val_dice']:.4f} at step {r['steps']}", flush=True)
    else:
        print("no validation finished: the validation phantoms did not all arrive in time", flush=True)


if __name__ == "__main__":       # run from the package, so the workers find case_slices by its module name
    from FemurUNetTrainLib import phantom_stream
    sys.exit(phantom_stream.main())
