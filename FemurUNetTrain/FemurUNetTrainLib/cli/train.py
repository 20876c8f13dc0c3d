"""``femurunet train``: the seed's recipe by default, resumable, optionally DDP (torchrun).

Its options come from ``options.TrainConfig`` (one definition for the CLI, the background process and Slicer).
``--progress json`` prints one JSON object per step and per epoch on stdout, for a program that runs the
training in the background (``process.TrainingRun``).
"""
from __future__ import annotations

import json
import os
import sys
import time

from FemurUNetLib.modelfile import load_model
from FemurUNetLib.paths import DEFAULT_MODEL_PATH

from ..options import RECIPES, add_train_arguments, config_from_args
from ..train import TrainProgress, train
from .common import TerminalLine


class TrainProgressBar:
    """One line per epoch on stderr, redrawn per step."""

    def __init__(self, stream=None, width: int = 24):
        self._stream, self.width, self.started = stream, width, time.perf_counter()

    @property
    def stream(self):
        return self._stream or sys.stderr       # the stream at the time of writing (redirected or not)

    def __call__(self, p: TrainProgress) -> None:
        if p.record is None:
            if p.step == 1:
                self.started = time.perf_counter()
            filled = self.width * p.step // max(p.steps, 1)
            rate = f" ({(p.step - 1) / (time.perf_counter() - self.started):.2f} steps/s)" if p.step > 1 else ""
            TerminalLine.write(self.stream, f"\repoch {p.epoch}/{p.epochs} [{'#' * filled}{'.' * (self.width - filled)}] "
                                            f"{p.step}/{p.steps} loss {p.loss:.4f}{rate}")
        else:
            r = p.record
            val = f" val_loss {r['val_loss']:.4f} val_dice {r['val_dice']:.4f}" if r.get("val_loss") is not None else ""
            TerminalLine.write(self.stream, f"\repoch {p.epoch}/{p.epochs} loss {r['loss']:.4f}{val} lr {r['lr']:.3g} "
                                            f"{r['seconds']:.1f} s{' *best*' if r['best'] else ''}\033[K\n")


class JsonProgress:
    """One JSON line per step ({"step", "steps", "epoch", "epochs", "loss"}) and per epoch ({"epoch", "epochs",
    "record"}), flushed at once."""

    def __init__(self, stream=sys.stdout):
        self.stream = stream

    def __call__(self, p: TrainProgress) -> None:
        if p.record is None:
            line = {"epoch": p.epoch, "epochs": p.epochs, "step": p.step, "steps": p.steps, "loss": p.loss}
        else:
            line = {"epoch": p.epoch, "epochs": p.epochs, "record": p.record}
        self.stream.write(json.dumps(line) + "\n")
        self.stream.flush()


PROGRESS = {"bar": TrainProgressBar, "json": JsonProgress, "none": lambda: None}


def _model_defaults(args) -> dict:
    """Fine-tuning: the --init model's width and input size are the defaults (not on --resume: the checkpoint's)."""
    init = getattr(args, "init", None)
    if not init or getattr(args, "resume", False):
        return {}
    meta = load_model(init).metadata
    return {"base_filters": int(meta["base_filters"]), "input_size": int(meta["input_size"])}


def run_train(args) -> int:
    if args.recipe == "finetune" and not getattr(args, "init", None) and not getattr(args, "resume", False):
        args.init = str(DEFAULT_MODEL_PATH)
    config = config_from_args(args, _model_defaults(args), args.recipe)
    main_process = int(os.environ.get("RANK", "0")) == 0          # torchrun: only process 0 reports
    progress = PROGRESS["none" if args.quiet or not main_process else args.progress]()
    result = train(config, progress=progress)
    if not main_process:
        return 0
    how = "stopped" if result.stopped else "early stopping" if result.early_stopped else "done"
    epochs = f"{result.epochs_completed} epoch{'' if result.epochs_completed == 1 else 's'}"
    print(f"{how}: {epochs} in {result.seconds:.0f} s; best {result.monitor} "
          f"{result.best_monitor:.4f} at epoch {result.best_epoch} -> {result.model_path} "
          f"(log {result.log_path.name}, curve {result.curve_path.name})")
    return 0


def register(subparsers) -> None:
    t = subparsers.add_parser("train", help="train the U-Net on exported PNG pairs (the seed's recipe)",
                              description="Train the seed's U-Net. Defaults are the seed's recipe: Adam lr 1e-5, "
                                          "batch 20, 100 steps/epoch, 300 epochs, 1 - Dice, 256x256, 64 filters.")
    add_train_arguments(t)
    t.add_argument("--recipe", choices=tuple(RECIPES), default="seed",
                   help="defaults for the options not given: seed (the original work's, above) or finetune (from the "
                        "demo model unless --init: 20 epochs of 75 steps, batch 8, lr 1e-4 with 1 warm-up epoch and "
                        "cosine decay, --bce-weight 10, --intensity-augment, early stopping after 5 epochs)")
    t.add_argument("--progress", choices=tuple(PROGRESS), default="bar",
                   help="bar (default: one line per epoch on stderr), json (a JSON line per step and epoch on "
                        "stdout) or none")
    t.add_argument("--quiet", action="store_true", help="no progress output (--progress none)")
    t.set_defaults(func=run_train)
