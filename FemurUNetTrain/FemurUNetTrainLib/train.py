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
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.torch_version import TorchVersion

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.inference import cpu_supports_bf16, pick_device
from FemurUNetLib.model import UNet2D, dice_coefficient
from FemurUNetLib.modelfile import atomic_write, load_model, save_model
from FemurUNetLib.preprocess import DEFAULT_INPUT_SIZE

from .augment import AugmentConfig, apply_augmentation, draw_params, select
from .dataset import SliceDataset, load_dataset
from .intensity import IntensityConfig, apply_intensity, draw_intensity

CHECKPOINT_FORMAT = "femurunet-train-checkpoint"
CHECKPOINT_VERSION = 1
ADAM_EPSILON = 1e-7   # Keras' default (PyTorch's is 1e-8)
SMOOTH = 1.0
BCE_CLAMP = 1e-6      # probabilities are clamped to [BCE_CLAMP, 1 - BCE_CLAMP] inside the cross-entropy
# Recipe fields: on --resume they come from the checkpoint unless explicitly changed (then: error).
RECIPE_FIELDS = ("epochs", "steps_per_epoch", "batch_size", "lr", "base_filters", "input_size", "seed", "amp",
                 "lr_schedule", "lr_patience", "lr_factor", "min_lr", "warmup_epochs", "early_stopping", "dropout",
                 "augment", "init", "bce_weight", "intensity")
EXTENDABLE_FIELDS = ("epochs", "early_stopping")


@dataclass
class TrainConfig:
    """Training options (the CLI mirrors them). Defaults are the seed's recipe."""
    data: str = ""
    out: str = "femurunet.pt"
    val: Optional[str] = None
    epochs: int = 300
    steps_per_epoch: int = 100
    batch_size: int = 20              # global batch (split across DDP processes)
    lr: float = 1e-5
    base_filters: int = 64
    input_size: int = DEFAULT_INPUT_SIZE
    seed: int = 1                     # the seed's trainGenerator(seed=1)
    init: Optional[str] = None        # start from this model's weights (fine-tuning) instead of random ones
    resume: bool = False
    device: str = "auto"
    amp: str = "auto"                 # auto (CUDA, or a CPU with native bf16: on), bf16, fp16, off
    channels_last: bool = True
    lr_schedule: str = "none"         # none, plateau (ReduceLROnPlateau on the monitor), cosine
    lr_patience: int = 10
    lr_factor: float = 0.5
    min_lr: float = 0.0
    warmup_epochs: int = 0            # linear per-step warm-up of the rate over the first N epochs; 0 = off
    early_stopping: int = 0           # patience in epochs without improvement; 0 = off
    bce_weight: float = 0.0           # loss = 1 - Dice + bce_weight * mean BCE; 0 = the seed's loss
    dropout: bool = True              # the seed's dropout layers (False only for equivalence tests/ablations)
    deterministic: bool = True
    threads: Optional[int] = None
    val_batch_size: Optional[int] = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    intensity: IntensityConfig = field(default_factory=IntensityConfig)     # off: the seed's recipe

    def recipe(self) -> dict:
        d = {k: getattr(self, k) for k in RECIPE_FIELDS}
        d["augment"] = self.augment.to_dict()
        d["intensity"] = self.intensity.to_dict()
        return d


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


def _stem(out) -> Path:
    out = Path(out)
    return out.with_suffix("") if out.suffix == ".pt" else out


def checkpoint_path(out) -> Path:
    return _stem(out).with_name(_stem(out).name + ".checkpoint.pt")


def log_path(out) -> Path:
    return _stem(out).with_name(_stem(out).name + ".log.jsonl")


def curve_path(out) -> Path:
    return _stem(out).with_name(_stem(out).name + ".curve.png")


def epoch_seed(seed: int, epoch: int, stream: int, rank: int = 0) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch), int(stream), int(rank)]).generate_state(1, np.uint64)[0])


def epoch_indices(generator: torch.Generator, n: int, count: int) -> torch.Tensor:
    """``count`` sample indices: shuffled passes over the data, concatenated (every batch is full)."""
    passes = [torch.randperm(n, generator=generator) for _ in range(math.ceil(count / n))]
    return torch.cat(passes)[:count]


# --- distributed ---------------------------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool, device) -> bool:
        if self.world == 1:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _init_distributed(device_name: str) -> tuple:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), pick_device(device_name)
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(rank, world, local_rank, owns), device


# --- loss and evaluation ---------------------------------------------------------------------------------------
def batch_dice_loss(y_true: torch.Tensor, y_pred: torch.Tensor, ctx: _Dist) -> tuple:
    """(loss to backpropagate, Dice loss value of the global batch).

    One process: the engine's ``1 - dice_coefficient``. DDP: each process holds part of the batch; the loss
    is linearised at the all-reduced sums so that DDP's gradient averaging yields the global batch's gradient.
    """
    if ctx.world == 1:
        loss = 1.0 - dice_coefficient(y_true, y_pred, SMOOTH)
        return loss, float(loss.detach())
    t, p = y_true.reshape(-1).to(y_pred.dtype), y_pred.reshape(-1)
    inter, total = (t * p).sum(), t.sum() + p.sum()
    sums = ctx.all_reduce(torch.stack([inter.detach(), total.detach()]).double())
    big_i, big_s = sums[0], sums[1]
    d_inter = -2.0 / (big_s + SMOOTH)
    d_total = (2.0 * big_i + SMOOTH) / (big_s + SMOOTH) ** 2
    surrogate = ctx.world * (d_inter.float() * inter + d_total.float() * total)
    return surrogate, float(1.0 - (2.0 * big_i + SMOOTH) / (big_s + SMOOTH))


def training_loss(y_true: torch.Tensor, y_pred: torch.Tensor, ctx: _Dist, bce_weight: float = 0.0) -> tuple:
    """(loss to backpropagate, Dice loss value of the global batch): 1 - Dice, plus ``bce_weight`` x the mean
    binary cross-entropy (per process: DDP's gradient averaging makes it the global batch's mean)."""
    loss, dice_value = batch_dice_loss(y_true, y_pred, ctx)
    if bce_weight:
        bce = F.binary_cross_entropy(y_pred.clamp(BCE_CLAMP, 1.0 - BCE_CLAMP), y_true.to(y_pred.dtype))
        loss = loss + bce_weight * bce
    return loss, dice_value


def _amp_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    mode = (mode or "auto").lower()
    if mode == "off":
        return None
    if mode == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_supports_bf16() else None
    if mode in ("bf16", "bfloat16"):
        return torch.bfloat16
    if mode in ("fp16", "float16"):
        if device.type == "cpu":
            raise FemurUNetError("amp fp16 needs CUDA; use bf16 or off on the CPU")
        return torch.float16
    raise FemurUNetError(f"amp {mode!r}: use auto, bf16, fp16 or off")


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: SliceDataset, device: torch.device, amp: Optional[torch.dtype] = None,
             batch_size: int = 16, ctx: Optional[_Dist] = None, channels_last: bool = True) -> tuple:
    """(val_loss, val_dice) over the whole set: 1 - soft Dice (smooth 1), and the Dice of predictions > 0.5."""
    ctx = ctx or _Dist()
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)
    mine = torch.arange(ctx.rank, len(data), ctx.world)
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        x = data.images[idx].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = data.masks[idx].to(device, torch.float32)
        with _autocast(device, amp):
            p = model(x)
        p = p.float()
        hard = (p > 0.5).float()
        sums += torch.stack([(y * p).sum(), y.sum() + p.sum(), (y * hard).sum(), y.sum() + hard.sum()]).double().cpu()
    sums = ctx.all_reduce(sums.to(device)).cpu() if ctx.world > 1 else sums
    model.train(was_training)
    val_loss = 1.0 - (2.0 * sums[0] + SMOOTH) / (sums[1] + SMOOTH)
    val_dice = 2.0 * sums[2] / sums[3] if sums[3] > 0 else torch.tensor(1.0)
    return float(val_loss), float(val_dice)


# --- files -----------------------------------------------------------------------------------------------------
def _write_log(path: Path, history: list) -> None:
    text = "".join(json.dumps(r) + "\n" for r in history)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _append_log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def plot_curve(history: list, path) -> Path:
    """Loss (train, val) and validation Dice per epoch, as a PNG."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot(111)
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["loss"] for r in history], label="loss (train)", color="tab:blue")
    if any(r.get("val_loss") is not None for r in history):
        ax.plot(epochs, [r.get("val_loss") for r in history], label="loss (val)", color="tab:orange")
    ax.set_xlabel("epoch")
    ax.set_ylabel("1 - Dice")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if any(r.get("val_dice") is not None for r in history):
        ax2 = ax.twinx()
        ax2.plot(epochs, [r.get("val_dice") for r in history], label="Dice (val)", color="tab:green")
        ax2.set_ylabel("validation Dice")
        ax2.set_ylim(0, 1)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="center right")
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), ".png")


def _save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp), ".pt")


def _load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise FemurUNetError(f"{path}: no checkpoint to resume from (train without --resume first)")
    try:
        with torch.serialization.safe_globals([TorchVersion]):     # written by an earlier FemurUNet
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FemurUNetError(f"{path}: unreadable checkpoint ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise FemurUNetError(f"{path}: not a FemurUNet training checkpoint")
    if state.get("format_version") != CHECKPOINT_VERSION:
        raise FemurUNetError(f"{path}: checkpoint version {state.get('format_version')} is not supported")
    return state


def _merge_resumed_config(config: TrainConfig, saved: dict, path: Path) -> TrainConfig:
    """The checkpoint's recipe, except fields the caller changed on purpose (epochs/early stopping only)."""
    defaults = TrainConfig().recipe()
    mine = config.recipe()
    merged = {}
    for key in RECIPE_FIELDS:
        value = saved.get(key, defaults[key])     # a field the checkpoint predates: it trained with the default
        if mine[key] != value and mine[key] != defaults[key]:
            if key not in EXTENDABLE_FIELDS:
                raise FemurUNetError(f"{path}: --resume with {key}={mine[key]!r}, but the checkpoint was trained with "
                                     f"{key}={value!r} (only epochs and early stopping can change)")
            value = mine[key]
        merged[key] = value
    merged["augment"] = AugmentConfig.from_dict(merged["augment"])
    merged["intensity"] = IntensityConfig.from_dict(merged["intensity"])
    return dataclasses.replace(config, **merged)


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
    if config.lr_schedule not in ("none", "plateau", "cosine"):
        raise FemurUNetError(f"lr schedule {config.lr_schedule!r}: use none, plateau or cosine")
    if not str(config.out).endswith(".pt"):
        raise FemurUNetError(f"{config.out}: the model file name must end in .pt")


def initial_model(config: TrainConfig, window: dict) -> UNet2D:
    """The ``--init`` model, after checking that it fits this run (channels, width, input size, window)."""
    model = load_model(config.init)
    meta, name = model.metadata, config.init
    found = {"channels": (model.in_channels, model.out_channels), "base_filters": model.base_filters,
             "input_size": int(meta["input_size"]), "window": meta["window"]}
    wanted = {"channels": (1, 1), "base_filters": config.base_filters, "input_size": config.input_size,
              "window": window}
    for key in found:
        if found[key] != wanted[key]:
            raise FemurUNetError(f"{name}: --init model has {key} {found[key]}, but this run needs {wanted[key]}")
    return model


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


COLLAPSE_EPOCHS, COLLAPSE_DICE = 3, 0.01


def collapsed(history: list) -> bool:
    """Learned (training Dice > 0.5), then empty output for COLLAPSE_EPOCHS epochs: sigmoid saturated, dead ReLUs.

    Seen with Adam at lr 1e-3 (no normalisation layers in the seed's U-Net); nothing brings such a net back.
    """
    if len(history) <= COLLAPSE_EPOCHS:
        return False
    learned = max(r["dice"] for r in history[:-COLLAPSE_EPOCHS]) > 0.5
    return learned and all(r["dice"] < COLLAPSE_DICE for r in history[-COLLAPSE_EPOCHS:])


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


# --- training --------------------------------------------------------------------------------------------------
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
    out = Path(config.out)
    ckpt_path, jsonl_path, png_path = checkpoint_path(out), log_path(out), curve_path(out)
    ctx, device = _init_distributed(config.device)
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

        saved = None
        if config.resume:
            saved = _load_checkpoint(ckpt_path)
            config = _merge_resumed_config(config, saved["config"], ckpt_path)
        _check_config(config)
        if config.batch_size % ctx.world:
            raise FemurUNetError(f"batch size {config.batch_size} is not divisible by the {ctx.world} processes")

        train_data = load_dataset(config.data, config.input_size)
        val_data = load_dataset(config.val, config.input_size) if config.val else None
        window, orientation = train_data.manifest["window"], train_data.manifest["orientation"]
        if val_data is not None and (val_data.window != window or val_data.manifest["orientation"] != orientation):
            raise FemurUNetError(f"{config.val}: validation window/orientation {val_data.window} differs from the "
                                 f"training data's {window}")
        amp = _amp_dtype(config.amp, device)
        scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None

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
            init_training = start.metadata.get("training") or None
        net.to(device)
        if config.channels_last:
            net.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=ADAM_EPSILON)
        scheduler = _make_scheduler(config, optimizer)
        history, best, best_epoch, bad_epochs, start_epoch = [], math.inf, 0, 0, 0
        if saved is not None:
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None and saved.get("scheduler"):
                scheduler.load_state_dict(saved["scheduler"])
            if scheduler is not None and config.lr_schedule == "cosine":
                scheduler.T_max = config.epochs
            if scaler is not None and saved.get("scaler"):
                scaler.load_state_dict(saved["scaler"])
            history = list(saved["history"])
            best, best_epoch, bad_epochs = float(saved["best"]), int(saved["best_epoch"]), int(saved["bad_epochs"])
            start_epoch = int(saved["epoch"])
            torch.set_rng_state(saved["torch_rng"])
            if ctx.main:
                _write_log(jsonl_path, history)       # drop lines of an epoch that never reached its checkpoint
        elif ctx.main:
            for stale in (jsonl_path, ckpt_path):
                stale.unlink(missing_ok=True)
        model = net
        if ctx.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None)

        monitor_name = "val_loss" if val_data is not None else "loss"
        local = config.batch_size // ctx.world
        n_train = len(train_data)
        provenance_base = {
            "recipe": "seed (Keras U-Net, 1 - Dice, Adam, ImageDataGenerator)",
            "data": str(config.data), "val": str(config.val) if config.val else None,
            "cases": train_data.cases, "train_slices": n_train,
            "val_cases": val_data.cases if val_data is not None else [],
            "val_slices": len(val_data) if val_data is not None else 0,
            "epochs": config.epochs, "steps_per_epoch": config.steps_per_epoch, "batch_size": config.batch_size,
            "lr": config.lr, "optimizer": f"Adam(betas=(0.9, 0.999), eps={ADAM_EPSILON:g})",
            "lr_schedule": config.lr_schedule, "warmup_epochs": config.warmup_epochs, "init": config.init,
            "init_training": init_training,
            "loss_function": "1 - Dice (smooth 1, flattened batch)"
                             + (f" + {config.bce_weight:g} x mean binary cross-entropy" if config.bce_weight else ""),
            "seed": config.seed, "augment": config.augment.to_dict(), "intensity": config.intensity.to_dict(),
            "monitor": monitor_name,
            "amp": str(amp).replace("torch.", "") if amp else "off", "world_size": ctx.world,
            "device": device.type, "torch": str(torch.__version__), "dropout": config.dropout,
        }
        stopped = early_stopped = False
        for epoch in range(start_epoch, config.epochs):
            if config.early_stopping and bad_epochs >= config.early_stopping:
                early_stopped = True
                break
            epoch_started = time.perf_counter()
            gen = torch.Generator().manual_seed(epoch_seed(config.seed, epoch, 0))
            intensity_gen = torch.Generator().manual_seed(epoch_seed(config.seed, epoch, 2))
            torch.manual_seed(epoch_seed(config.seed, epoch, 1, ctx.rank))     # dropout
            order = epoch_indices(gen, n_train, config.steps_per_epoch * config.batch_size)
            model.train()
            loss_sum, dice_sum = 0.0, 0.0
            for step in range(config.steps_per_epoch):
                if ctx.any(should_stop is not None and ctx.main and bool(should_stop()), device):
                    stopped = True
                    break
                batch = order[step * config.batch_size:(step + 1) * config.batch_size]
                params = draw_params(config.batch_size, config.input_size, config.input_size, config.augment, gen)
                mine = slice(ctx.rank * local, (ctx.rank + 1) * local)
                x = train_data.images[batch[mine]].to(device, non_blocking=True)
                y = train_data.masks[batch[mine]].to(device, non_blocking=True)
                x, y = apply_augmentation(x, y, select(params, mine), config.augment)
                if config.intensity.enabled:
                    drawn = draw_intensity(config.batch_size, config.intensity, intensity_gen)
                    x = apply_intensity(x, select(drawn, mine), float(window["width"]))
                if config.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with _autocast(device, amp):
                    p = model(x)
                loss, loss_value = training_loss(y, p.float(), ctx, config.bce_weight)
                optimizer.zero_grad(set_to_none=True)
                scheduled = [group["lr"] for group in optimizer.param_groups]
                for group in optimizer.param_groups:     # the scheduler keeps seeing the unscaled rate
                    group["lr"] *= warmup_factor(config, epoch, step)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                for group, lr in zip(optimizer.param_groups, scheduled):
                    group["lr"] = lr
                loss_sum += loss_value
                dice_sum += 1.0 - loss_value
                if progress is not None and ctx.main:
                    progress(TrainProgress(epoch + 1, config.epochs, step + 1, config.steps_per_epoch,
                                           loss_sum / (step + 1)))
            if stopped:
                break
            train_loss = loss_sum / config.steps_per_epoch
            val_loss = val_dice = None
            if val_data is not None:
                val_loss, val_dice = evaluate(net, val_data, device, amp, config.val_batch_size or local, ctx,
                                              config.channels_last)
            current = val_loss if val_data is not None else train_loss
            improved = current < best
            lr_now = optimizer.param_groups[0]["lr"]
            if improved:
                best, best_epoch, bad_epochs = current, epoch + 1, 0
            else:
                bad_epochs += 1
            if scheduler is not None:
                scheduler.step(current) if config.lr_schedule == "plateau" else scheduler.step()
            record = {"epoch": epoch + 1, "loss": train_loss, "dice": dice_sum / config.steps_per_epoch,
                      "val_loss": val_loss, "val_dice": val_dice, "lr": lr_now,
                      "seconds": round(time.perf_counter() - epoch_started, 3), "best": improved}
            history.append(record)
            if ctx.main:
                if improved:
                    provenance = dict(provenance_base, epoch=epoch + 1, best_monitor=current,
                                      loss=train_loss, val_loss=val_loss, val_dice=val_dice)
                    save_model(net, out, window=window, orientation=orientation, input_size=config.input_size,
                               training=provenance)
                _save_checkpoint(ckpt_path, {
                    "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "epoch": epoch + 1,
                    "config": config.recipe(), "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "history": history, "best": best, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                    "torch_rng": torch.get_rng_state(), "torch_version": str(torch.__version__),
                    "init_training": init_training,
                })
                _append_log(jsonl_path, record)
                plot_curve(history, png_path)
            if collapsed(history):
                raise FemurUNetError(
                    f"training collapsed at epoch {epoch + 1}: the network predicts no femur anywhere (training Dice "
                    f"< {COLLAPSE_DICE} for {COLLAPSE_EPOCHS} epochs); {out} keeps epoch {best_epoch}; "
                    f"start again with a lower --lr or more --warmup-epochs")
            ctx.barrier()
            if progress is not None and ctx.main:
                progress(TrainProgress(epoch + 1, config.epochs, config.steps_per_epoch, config.steps_per_epoch,
                                       train_loss, record))
            if config.early_stopping and bad_epochs >= config.early_stopping and epoch + 1 < config.epochs:
                early_stopped = True
                break
        net.to(memory_format=torch.contiguous_format)
        return TrainResult(model_path=out, checkpoint_path=ckpt_path, log_path=jsonl_path, curve_path=png_path,
                           history=history, best_epoch=best_epoch, best_monitor=best, monitor=monitor_name,
                           epochs_completed=len(history), stopped=stopped, early_stopped=early_stopped,
                           seconds=time.perf_counter() - started, model=net.cpu().eval())
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)
        if ctx.owns_group and dist.is_initialized():
            dist.destroy_process_group()
