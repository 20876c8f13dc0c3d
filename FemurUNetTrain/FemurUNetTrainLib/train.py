"""Train the seed's U-Net on exported PNG slices: the seed's recipe by default, resumable, optionally DDP.

Seed recipe (the defaults): Adam lr 1e-5 (Keras' Adam: betas 0.9/0.999, epsilon 1e-7), batch 20,
100 steps per epoch, 300 epochs, loss 1 - Dice (smooth 1) over the flattened batch, 256x256 input,
base_filters 64, the seed's ImageDataGenerator augmentation, and ModelCheckpoint(save_best_only): the
model file is rewritten whenever the monitored loss (validation loss when --val is given, else the
epoch's mean training loss) strictly improves. ``bce_weight`` > 0 adds that many times the mean binary
cross-entropy to the loss that is minimised; the logged and monitored losses stay 1 - Dice. ``intensity``
(off by default) adds domain randomisation of the image intensities after the geometric augmentation.

Randomness is a pure function of (seed, epoch): each epoch reseeds the batch sampler, the augmentation, the
intensity randomisation (a stream of its own) and dropout, so a run resumed from its last checkpoint continues
exactly as the uninterrupted run would.
Under torchrun (WORLD_SIZE > 1) every process draws the same global batch and augmentation, takes its
share, and the Dice of the whole global batch is all-reduced: the gradient is the single-process one.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.model import UNet2D
from FemurUNetLib.modelfile import load_model, save_model

from .augment import draw_params, select
from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, merge_resumed_config, save_checkpoint
from .dataset import SliceDataset, hold_out_cases, load_dataset
from .distributed import Dist, init_distributed
from .history import COLLAPSE_DICE, COLLAPSE_EPOCHS, append_log, checkpoint_path, collapsed, curve_path, log_path, \
    plot_curve, write_log
from .intensity import draw_intensity
from .loss import evaluate
from .options import TrainConfig
from .step import ADAM_EPSILON, WeightAverage, amp_dtype, augment, load_batch, make_optimizer, optimise
from .widen import widened_start

# names other modules and scripts import from here
__all__ = ["TrainConfig", "TrainProgress", "TrainResult", "train", "checkpoint_path", "log_path", "curve_path",
           "collapsed", "warmup_factor", "epoch_seed", "epoch_indices", "initial_model", "evaluate", "Dist",
           "amp_dtype"]


@dataclass
class TrainProgress:
    """What a GUI needs: called after every step (record None) and once per epoch (record = the log line)."""
    epoch: int          # 1-based
    epochs: int
    step: int
    steps: int
    loss: float         # running mean over the epoch so far
    record: Optional[dict] = None


@dataclass
class TrainResult:
    model_path: Path
    checkpoint_path: Path
    log_path: Path
    curve_path: Path
    history: list
    best_epoch: int
    best_monitor: float
    monitor: str
    epochs_completed: int
    stopped: bool = False            # should_stop() ended it; the unfinished epoch was discarded
    early_stopped: bool = False
    seconds: float = 0.0
    model: Optional[UNet2D] = None   # the final (last-epoch) weights, in memory


def epoch_seed(seed: int, epoch: int, stream: int, rank: int = 0) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch), int(stream), int(rank)]).generate_state(1, np.uint64)[0])


def epoch_indices(generator: torch.Generator, n: int, count: int) -> torch.Tensor:
    """``count`` sample indices: shuffled passes over the data, concatenated (every batch is full)."""
    passes = [torch.randperm(n, generator=generator) for _ in range(math.ceil(count / n))]
    return torch.cat(passes)[:count]


def _check_config(config: TrainConfig) -> None:
    if not config.data:
        raise FemurUNetError("no training data folder given")
    for name in ("epochs", "steps_per_epoch", "batch_size", "base_filters"):
        if int(getattr(config, name)) < 1:
            raise FemurUNetError(f"{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.input_size % 16 or config.input_size < 16:
        raise FemurUNetError(f"input size must be a positive multiple of 16, got {config.input_size}")
    if int(config.warmup_epochs) < 0:
        raise FemurUNetError(f"warmup-epochs must be 0 or more, got {config.warmup_epochs}")
    if not config.lr > 0:
        raise FemurUNetError(f"learning rate must be positive, got {config.lr}")
    if not 0.0 <= config.bce_weight < math.inf:
        raise FemurUNetError(f"bce-weight must be 0 or more, got {config.bce_weight}")
    if not 0.0 <= config.ema < 1.0:
        raise FemurUNetError(f"ema decay must be at least 0 and below 1, got {config.ema}")
    if config.lr_schedule not in ("none", "plateau", "cosine"):
        raise FemurUNetError(f"lr schedule {config.lr_schedule!r}: use none, plateau or cosine")
    if not str(config.out).endswith(".pt"):
        raise FemurUNetError(f"{config.out}: the model file name must end in .pt")


def initial_model(config: TrainConfig, window: dict) -> UNet2D:
    """The ``--init`` model, after checking that it fits this run (channels, input size, window); widened to the
    run's ``base_filters`` when that is a multiple of the model's (same outputs, ``widen``)."""
    model = load_model(config.init)
    meta, name = model.metadata, config.init
    if "slice_offsets_mm" in meta and model.in_channels > 1:
        raise FemurUNetError(f"{name}: --init model reads {model.in_channels} neighbouring slices, but a PNG slice "
                             f"folder holds one slice per image: train it with femurunet train-phantoms")
    found = {"channels": (model.in_channels, model.out_channels), "input_size": int(meta["input_size"]),
             "window": meta["window"]}
    wanted = {"channels": (1, 1), "input_size": config.input_size, "window": window}
    for key in found:
        if found[key] != wanted[key]:
            raise FemurUNetError(f"{name}: --init model has {key} {found[key]}, but this run needs {wanted[key]}")
    return widened_start(model, config.base_filters, config.seed, name)


def _make_scheduler(config: TrainConfig, optimizer):
    if config.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=config.lr_factor,
                                                          patience=config.lr_patience, min_lr=config.min_lr)
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.min_lr)
    return None


def warmup_factor(config: TrainConfig, epoch: int, step: int) -> float:
    """Multiplier of the scheduled rate at (epoch, step): (n + 1) / warm-up steps, then 1."""
    total = int(config.warmup_epochs) * config.steps_per_epoch
    done = epoch * config.steps_per_epoch + step + 1
    return 1.0 if done >= total else done / total


@dataclass
class _Run:
    """Everything one training run holds between its epochs."""
    config: TrainConfig
    ctx: Dist
    device: torch.device
    train_data: SliceDataset
    val_data: Optional[SliceDataset]
    amp: Optional[torch.dtype]
    scaler: object
    net: UNet2D
    model: torch.nn.Module          # net, or net in DistributedDataParallel
    optimizer: torch.optim.Optimizer
    scheduler: object
    init_training: Optional[dict]
    provenance: dict
    history: list
    best: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    start_epoch: int = 0
    average: Optional[WeightAverage] = None     # --ema: the averaged weights, validated and saved

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def kept(self) -> UNet2D:
        """The network that is validated and saved: the weight average with --ema, else the trained one."""
        return self.average.net if self.average is not None else self.net

    @property
    def window(self) -> dict:
        return self.train_data.manifest["window"]


@contextlib.contextmanager
def _process_settings(config: TrainConfig, ctx: Dist, device: torch.device):
    """Threads and determinism for the run; restored afterwards (and the process group of torchrun closed)."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        if config.threads:
            torch.set_num_threads(int(config.threads))
        elif ctx.world > 1 and device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world))))
        if config.deterministic:
            if device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)
        if ctx.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _load_data(config: TrainConfig) -> tuple:
    train_data = load_dataset(config.data, config.input_size)
    val_data = load_dataset(config.val, config.input_size) if config.val else None
    if val_data is None and config.val_cases:
        return hold_out_cases(train_data, config.val_cases, config.seed)
    window, orientation = train_data.manifest["window"], train_data.manifest["orientation"]
    if val_data is not None and (val_data.window != window or val_data.manifest["orientation"] != orientation):
        raise FemurUNetError(f"{config.val}: validation window/orientation {val_data.window} differs from the "
                             f"training data's {window}")
    return train_data, val_data


def start_provenance(metadata: dict) -> Optional[dict]:
    """The --init model's training record, with its ``blend`` record when it is a blend of two runs."""
    training = metadata.get("training") or None
    if metadata.get("blend"):
        training = {**(training or {}), "blend": metadata["blend"]}
    return training


def _build_net(config: TrainConfig, saved: Optional[dict], window: dict, device: torch.device) -> tuple:
    """(net on the device, the provenance of the weights it starts from)."""
    torch.manual_seed(config.seed)
    net = UNet2D(1, 1, config.base_filters)
    if not config.dropout:
        net.drop4.p = net.drop5.p = 0.0
    init_training = None            # the --init model's own provenance, kept so a chain of runs stays traceable
    if saved is not None:
        net.load_state_dict(saved["model"])
        init_training = saved.get("init_training")
    elif config.init:
        start = initial_model(config, window)
        net.load_state_dict(start.state_dict())
        init_training = start_provenance(start.metadata)
    net.to(device)
    if config.channels_last:
        net.to(memory_format=torch.channels_last)
    return net, init_training


def _provenance(run: _Run) -> dict:
    """What the model file records about the training (besides the epoch's figures)."""
    c, ctx, train_data, val_data = run.config, run.ctx, run.train_data, run.val_data
    return {
        "recipe": "seed (Keras U-Net, 1 - Dice, Adam, ImageDataGenerator)",
        "data": str(c.data), "val": str(c.val) if c.val else None,
        "cases": train_data.cases, "train_slices": len(train_data),
        "val_cases": val_data.cases if val_data is not None else [],
        "val_slices": len(val_data) if val_data is not None else 0,
        "epochs": c.epochs, "steps_per_epoch": c.steps_per_epoch, "batch_size": c.batch_size,
        "lr": c.lr, "optimizer": f"Adam(betas=(0.9, 0.999), eps={ADAM_EPSILON:g})",
        "lr_schedule": c.lr_schedule, "warmup_epochs": c.warmup_epochs, "init": c.init,
        "init_training": run.init_training,
        "loss_function": "1 - Dice (smooth 1, flattened batch)"
                         + (f" + {c.bce_weight:g} x mean binary cross-entropy" if c.bce_weight else ""),
        "seed": c.seed, "augment": c.augment.to_dict(), "intensity": c.intensity.to_dict(),
        "monitor": _monitor(run),
        "amp": str(run.amp).replace("torch.", "") if run.amp else "off", "world_size": ctx.world,
        "device": run.device.type, "torch": str(torch.__version__), "dropout": c.dropout, "ema": c.ema,
    }


def _monitor(run: _Run) -> str:
    return "val_loss" if run.val_data is not None else "loss"


def _restore(run: _Run, saved: Optional[dict]) -> None:
    """Continue the checkpoint's optimiser, schedule, history and RNG; or, for a fresh run, drop old files."""
    jsonl_path, ckpt_path = log_path(run.out), checkpoint_path(run.out)
    if saved is None:
        if run.ctx.main:
            for stale in (jsonl_path, ckpt_path):
                stale.unlink(missing_ok=True)
        return
    run.optimizer.load_state_dict(saved["optimizer"])
    if run.average is not None:
        run.average.net.load_state_dict(saved["average"])
    if run.scheduler is not None and saved.get("scheduler"):
        run.scheduler.load_state_dict(saved["scheduler"])
    if run.scheduler is not None and run.config.lr_schedule == "cosine":
        run.scheduler.T_max = run.config.epochs
    if run.scaler is not None and saved.get("scaler"):
        run.scaler.load_state_dict(saved["scaler"])
    run.history = list(saved["history"])
    run.best, run.best_epoch = float(saved["best"]), int(saved["best_epoch"])
    run.bad_epochs, run.start_epoch = int(saved["bad_epochs"]), int(saved["epoch"])
    torch.set_rng_state(saved["torch_rng"])
    if run.ctx.main:
        write_log(jsonl_path, run.history)       # drop lines of an epoch that never reached its checkpoint


def _prepare(config: TrainConfig, ctx: Dist, device: torch.device) -> _Run:
    saved = None
    if config.resume:
        saved = load_checkpoint(checkpoint_path(config.out))
        config = merge_resumed_config(config, saved["config"], checkpoint_path(config.out))
    _check_config(config)
    if config.batch_size % ctx.world:
        raise FemurUNetError(f"batch size {config.batch_size} is not divisible by the {ctx.world} processes")
    train_data, val_data = _load_data(config)
    amp = amp_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    net, init_training = _build_net(config, saved, train_data.manifest["window"], device)
    optimizer = make_optimizer(net, config.lr)
    run = _Run(config, ctx, device, train_data, val_data, amp, scaler, net, net, optimizer,
               _make_scheduler(config, optimizer), init_training, {}, [])
    run.average = WeightAverage(net, config.ema) if config.ema else None
    _restore(run, saved)
    if ctx.world > 1:
        run.model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    run.provenance = _provenance(run)
    return run


def _train_epoch(run: _Run, epoch: int, progress, should_stop) -> Optional[tuple]:
    """(sum of the steps' Dice losses, sum of their Dice) of one epoch; None when ``should_stop()`` ended it."""
    c, ctx = run.config, run.ctx
    gen = torch.Generator().manual_seed(epoch_seed(c.seed, epoch, 0))
    intensity_gen = torch.Generator().manual_seed(epoch_seed(c.seed, epoch, 2))
    torch.manual_seed(epoch_seed(c.seed, epoch, 1, ctx.rank))     # dropout
    order = epoch_indices(gen, len(run.train_data), c.steps_per_epoch * c.batch_size)
    local = c.batch_size // ctx.world
    mine = slice(ctx.rank * local, (ctx.rank + 1) * local)
    run.model.train()
    loss_sum, dice_sum = 0.0, 0.0
    for step in range(c.steps_per_epoch):
        if ctx.any(should_stop is not None and ctx.main and bool(should_stop()), run.device):
            return None
        batch = order[step * c.batch_size:(step + 1) * c.batch_size]
        params = draw_params(c.batch_size, c.input_size, c.input_size, c.augment, gen)
        x, y = load_batch(run.train_data, batch[mine], run.device)
        drawn = select(draw_intensity(c.batch_size, c.intensity, intensity_gen), mine) if c.intensity.enabled else None
        x, y = augment(x, y, select(params, mine), drawn, c, float(run.window["width"]))
        loss_value = optimise(run.model, x, y, run.optimizer, run.scaler, ctx, run.amp, c.bce_weight,
                              warmup_factor(c, epoch, step))
        if run.average is not None:
            run.average.update(run.net)
        loss_sum += loss_value
        dice_sum += 1.0 - loss_value
        if progress is not None and ctx.main:
            progress(TrainProgress(epoch + 1, c.epochs, step + 1, c.steps_per_epoch, loss_sum / (step + 1)))
    return loss_sum, dice_sum


def _end_epoch(run: _Run, epoch: int, loss_sum: float, dice_sum: float, started: float) -> dict:
    """Validate, keep the best model, step the schedule, write checkpoint/log/curve; returns the epoch record."""
    c = run.config
    train_loss = loss_sum / c.steps_per_epoch
    val_loss = val_dice = None
    if run.val_data is not None:
        val_loss, val_dice = evaluate(run.kept, run.val_data, run.device, run.amp,
                                      c.val_batch_size or c.batch_size // run.ctx.world, run.ctx, c.channels_last)
    current = val_loss if run.val_data is not None else train_loss
    improved = current < run.best
    lr_now = run.optimizer.param_groups[0]["lr"]
    if improved:
        run.best, run.best_epoch, run.bad_epochs = current, epoch + 1, 0
    else:
        run.bad_epochs += 1
    if run.scheduler is not None:
        run.scheduler.step(current) if c.lr_schedule == "plateau" else run.scheduler.step()
    record = {"epoch": epoch + 1, "loss": train_loss, "dice": dice_sum / c.steps_per_epoch,
              "val_loss": val_loss, "val_dice": val_dice, "lr": lr_now,
              "seconds": round(time.perf_counter() - started, 3), "best": improved}
    run.history.append(record)
    if run.ctx.main:
        _write_epoch_files(run, epoch, record, current, improved)
    return record


def _write_epoch_files(run: _Run, epoch: int, record: dict, current: float, improved: bool) -> None:
    c, net = run.config, run.kept
    if improved:
        provenance = dict(run.provenance, epoch=epoch + 1, best_monitor=current, loss=record["loss"],
                          val_loss=record["val_loss"], val_dice=record["val_dice"])
        save_model(net, run.out, window=run.window, orientation=run.train_data.manifest["orientation"],
                   input_size=c.input_size, min_field_mm=0.0, smooth_z_mm=0.0,         # PNG slices: never padded
                   training=provenance)
    save_checkpoint(checkpoint_path(run.out), {
        "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "epoch": epoch + 1,
        "config": c.recipe(), "model": _cpu_state(run.net),
        "average": None if run.average is None else _cpu_state(run.average.net),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "history": run.history, "best": run.best, "best_epoch": run.best_epoch, "bad_epochs": run.bad_epochs,
        "torch_rng": torch.get_rng_state(), "torch_version": str(torch.__version__),
        "init_training": run.init_training,
    })
    append_log(log_path(run.out), record)
    plot_curve(run.history, curve_path(run.out))


def _cpu_state(net: torch.nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


def _epochs(run: _Run, progress, should_stop) -> tuple:
    """Run the remaining epochs; returns (stopped, early_stopped)."""
    c = run.config
    for epoch in range(run.start_epoch, c.epochs):
        if c.early_stopping and run.bad_epochs >= c.early_stopping:
            return False, True
        started = time.perf_counter()
        sums = _train_epoch(run, epoch, progress, should_stop)
        if sums is None:
            return True, False
        record = _end_epoch(run, epoch, *sums, started)
        if collapsed(run.history):
            raise FemurUNetError(
                f"training collapsed at epoch {epoch + 1}: the network predicts no femur anywhere (training Dice "
                f"< {COLLAPSE_DICE} for {COLLAPSE_EPOCHS} epochs); {run.out} keeps epoch {run.best_epoch}; "
                f"start again with a lower --lr or more --warmup-epochs")
        run.ctx.barrier()
        if progress is not None and run.ctx.main:
            progress(TrainProgress(epoch + 1, c.epochs, c.steps_per_epoch, c.steps_per_epoch, record["loss"], record))
        if c.early_stopping and run.bad_epochs >= c.early_stopping and epoch + 1 < c.epochs:
            return False, True
    return False, False


def train(config: TrainConfig, progress: Optional[Callable[[TrainProgress], None]] = None,
          should_stop: Optional[Callable[[], bool]] = None) -> TrainResult:
    """Train (or resume) per ``config``; returns when the epochs are done, early stopping fires, or
    ``should_stop()`` returns True (checked every step; the unfinished epoch is discarded, as if killed).

    Writes (process 0 only): the best model ``config.out`` (engine model file carrying the data's window,
    orientation and the training provenance), ``<out stem>.checkpoint.pt`` after every epoch (atomic),
    ``<out stem>.log.jsonl`` (one JSON line per epoch: epoch, loss, dice, val_loss, val_dice, lr, seconds,
    best) and ``<out stem>.curve.png``.
    """
    started = time.perf_counter()
    _check_config(config)
    ctx, device = init_distributed(config.device)
    with _process_settings(config, ctx, device):
        run = _prepare(config, ctx, device)
        stopped, early_stopped = _epochs(run, progress, should_stop)
        run.kept.to(memory_format=torch.contiguous_format)
        out = run.out
        return TrainResult(model_path=out, checkpoint_path=checkpoint_path(out), log_path=log_path(out),
                           curve_path=curve_path(out), history=run.history, best_epoch=run.best_epoch,
                           best_monitor=run.best, monitor=_monitor(run), epochs_completed=len(run.history),
                           stopped=stopped, early_stopped=early_stopped, seconds=time.perf_counter() - started,
                           model=run.kept.cpu().eval())
