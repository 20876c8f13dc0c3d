"""``femurunet export`` and ``femurunet train``."""
from __future__ import annotations

import dataclasses
import os
import sys
import time

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.modelfile import load_model

from .augment import AugmentConfig
from .export import export_files
from .intensity import IntensityConfig
from .train import TrainConfig, TrainProgress, train


def _window_arg(text):
    if text is None:
        return None
    try:
        center, width = (float(v) for v in text.split(","))
    except ValueError:
        raise FemurUNetError(f"--window {text!r}: expected CENTER,WIDTH in HU, e.g. 400,2000") from None
    return (center, width)


def run_export(args) -> int:
    summary = export_files(args.ct, args.label, args.outdir, case=args.case, labels=args.labels,
                           segments=args.segments, empty_fraction=args.empty_fraction,
                           resample_label=args.resample_label, window=_window_arg(args.window), seed=args.seed,
                           negative=args.negative)
    print(f"{summary['case']}: {summary['slices']} slices ({summary['positive']} with femur, "
          f"{summary['negative']} without), {summary['slice_shape'][1]}x{summary['slice_shape'][0]} pixels "
          f"-> {args.outdir}")
    return 0


class TrainProgressBar:
    """One line per epoch on stderr, redrawn per step."""

    def __init__(self, stream=sys.stderr, width: int = 24):
        self.stream, self.width, self.started = stream, width, time.perf_counter()

    def __call__(self, p: TrainProgress) -> None:
        if p.record is None:
            if p.step == 1:
                self.started = time.perf_counter()
            filled = self.width * p.step // max(p.steps, 1)
            rate = f" ({(p.step - 1) / (time.perf_counter() - self.started):.2f} steps/s)" if p.step > 1 else ""
            self.stream.write(f"\repoch {p.epoch}/{p.epochs} [{'#' * filled}{'.' * (self.width - filled)}] "
                              f"{p.step}/{p.steps} loss {p.loss:.4f}{rate}")
        else:
            r = p.record
            val = f" val_loss {r['val_loss']:.4f} val_dice {r['val_dice']:.4f}" if r.get("val_loss") is not None else ""
            self.stream.write(f"\repoch {p.epoch}/{p.epochs} loss {r['loss']:.4f}{val} lr {r['lr']:.3g} "
                              f"{r['seconds']:.1f} s{' *best*' if r['best'] else ''}\033[K\n")
        self.stream.flush()


def _augment_config(args) -> AugmentConfig:
    seed = AugmentConfig()
    zoom = seed.zoom_range
    if args.zoom_range is not None:
        try:
            values = [float(v) for v in args.zoom_range.split(",")]
            zoom = values[0] if len(values) == 1 else tuple(values)
        except ValueError:
            raise FemurUNetError(f"--zoom-range {args.zoom_range!r}: expected Z (for 1-Z..1+Z) or LOW,HIGH") from None
    pick = lambda value, default: default if value is None else value
    try:
        return AugmentConfig(rotation_range=pick(args.rotation_range, seed.rotation_range),
                             width_shift_range=pick(args.width_shift_range, seed.width_shift_range),
                             height_shift_range=pick(args.height_shift_range, seed.height_shift_range),
                             shear_range=pick(args.shear_range, seed.shear_range), zoom_range=zoom,
                             horizontal_flip=not args.no_horizontal_flip, vertical_flip=args.vertical_flip,
                             fill_mode=args.fill_mode, enabled=not args.no_augment)
    except (ValueError, TypeError, IndexError) as exc:
        raise FemurUNetError(f"augmentation: {exc}") from None


INTENSITY_FLAGS = {"intensity_p": "p", "noise_sd_hu": "noise_sd_hu", "noise_corr": "noise_corr",
                   "blur_sigma": "blur_sigma", "lowres_factor": "lowres_factor"}     # option -> IntensityConfig field


def _intensity_config(args) -> IntensityConfig:
    given = {flag: getattr(args, flag) for flag in INTENSITY_FLAGS if getattr(args, flag) is not None}
    if given and not args.intensity_augment:
        raise FemurUNetError(", ".join("--" + f.replace("_", "-") for f in given) + ": needs --intensity-augment")
    try:
        return IntensityConfig(enabled=args.intensity_augment, **{INTENSITY_FLAGS[f]: v for f, v in given.items()})
    except ValueError as exc:
        raise FemurUNetError(f"intensity augmentation: {exc}") from None


def run_train(args) -> int:
    d = TrainConfig()
    if args.init and not args.resume:     # fine-tuning: width and input size follow the model unless given
        meta = load_model(args.init).metadata
        d = dataclasses.replace(d, base_filters=int(meta["base_filters"]), input_size=int(meta["input_size"]))
    augment, intensity = _augment_config(args), _intensity_config(args)
    config = TrainConfig(
        data=args.data, val=args.val, out=args.out, resume=args.resume, device=args.device, amp=args.amp,
        epochs=d.epochs if args.epochs is None else args.epochs,
        steps_per_epoch=d.steps_per_epoch if args.steps_per_epoch is None else args.steps_per_epoch,
        batch_size=d.batch_size if args.batch_size is None else args.batch_size,
        lr=d.lr if args.lr is None else args.lr,
        base_filters=d.base_filters if args.base_filters is None else args.base_filters,
        input_size=d.input_size if args.input_size is None else args.input_size,
        seed=d.seed if args.seed is None else args.seed, init=args.init,
        lr_schedule=args.lr_schedule, lr_patience=args.lr_patience, lr_factor=args.lr_factor, min_lr=args.min_lr,
        warmup_epochs=args.warmup_epochs, bce_weight=args.bce_weight,
        early_stopping=args.early_stopping, threads=args.threads,
        augment=augment, intensity=intensity)
    main_process = int(os.environ.get("RANK", "0")) == 0          # torchrun: only process 0 reports
    result = train(config, progress=None if args.quiet or not main_process else TrainProgressBar())
    if not main_process:
        return 0
    how = "stopped" if result.stopped else "early stopping" if result.early_stopped else "done"
    print(f"{how}: {result.epochs_completed} epochs in {result.seconds:.0f} s; best {result.monitor} "
          f"{result.best_monitor:.4f} at epoch {result.best_epoch} -> {result.model_path} "
          f"(log {result.log_path.name}, curve {result.curve_path.name})")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a CT + femur label as PNG training pairs",
                              description="Export a CT and its femur label as the seed's training folders "
                                          "(OUTDIR/image, OUTDIR/label, OUTDIR/dataset.json); appends to OUTDIR.")
    p.add_argument("ct", metavar="CT", help="CT volume file or DICOM folder")
    p.add_argument("label", metavar="LABEL", help="labelmap (.nii.gz/.nrrd/...) or Slicer .seg.nrrd")
    p.add_argument("outdir", metavar="OUTDIR", help="dataset folder (created or appended to)")
    p.add_argument("--case", help="case name (slice files are <case>_<k>.png; default: from the CT file name)")
    p.add_argument("--labels", help="label values that are femur, e.g. 1,2 (default: every nonzero value)")
    p.add_argument("--segments", help="segment names of a .seg.nrrd, comma-separated (default: all)")
    p.add_argument("--empty-fraction", type=float, default=0.1,
                   help="fraction of the label-free slices to include as negatives (default 0.1)")
    p.add_argument("--resample-label", action="store_true",
                   help="resample a label on another grid onto the CT grid (nearest neighbour)")
    p.add_argument("--window", metavar="CENTER,WIDTH", help="HU window (default: the engine's 400,2000)")
    p.add_argument("--seed", type=int, default=0, help="seed for choosing the label-free slices (default 0)")
    p.add_argument("--negative", action="store_true",
                   help="the scan has no femur (its LABEL is empty): export --empty-fraction of its slices as negatives")
    p.set_defaults(func=run_export)

    t = subparsers.add_parser("train", help="train the U-Net on exported PNG pairs (the seed's recipe)",
                              description="Train the seed's U-Net. Defaults are the seed's recipe: Adam lr 1e-5, "
                                          "batch 20, 100 steps/epoch, 300 epochs, 1 - Dice, 256x256, 64 filters.")
    t.add_argument("data", metavar="DATADIR", help="exported folder (image/, label/, dataset.json)")
    t.add_argument("--val", metavar="DATADIR2", help="validation folder (monitored instead of the training loss)")
    t.add_argument("--out", required=True, metavar="MODEL.pt", help="model file (best epoch)")
    t.add_argument("--epochs", type=int, help="epochs (default 300)")
    t.add_argument("--steps-per-epoch", type=int, help="steps per epoch (default 100)")
    t.add_argument("--batch-size", type=int, help="global batch size (default 20)")
    t.add_argument("--lr", type=float, help="Adam learning rate (default 1e-5)")
    t.add_argument("--base-filters", type=int, help="filters of the first level (default 64)")
    t.add_argument("--input-size", type=int, help="model input side in pixels, multiple of 16 (default 256)")
    t.add_argument("--seed", type=int, help="random seed (default 1)")
    t.add_argument("--init", metavar="MODEL.pt",
                   help="fine-tune: start from this model's weights (e.g. the demo model); its width and input size "
                        "are the defaults")
    t.add_argument("--resume", action="store_true", help="continue from <out>.checkpoint.pt")
    t.add_argument("--lr-schedule", default="none", choices=("none", "plateau", "cosine"),
                   help="learning-rate schedule (default none, like the seed)")
    t.add_argument("--lr-patience", type=int, default=10, help="plateau schedule: epochs without improvement "
                   "before the rate is cut (default 10)")
    t.add_argument("--lr-factor", type=float, default=0.5, help="plateau schedule: rate multiplier (default 0.5)")
    t.add_argument("--min-lr", type=float, default=0.0, help="lower bound of the scheduled rate (default 0)")
    t.add_argument("--warmup-epochs", type=int, default=0, metavar="N",
                   help="raise the rate linearly over the first N epochs' steps (default 0: the seed has none)")
    t.add_argument("--bce-weight", type=float, default=0.0, metavar="W",
                   help="minimise 1 - Dice + W x mean binary cross-entropy (default 0: the seed's 1 - Dice); "
                        "the monitored loss stays 1 - Dice")
    t.add_argument("--early-stopping", type=int, default=0, metavar="PATIENCE",
                   help="stop after this many epochs without improvement (default 0: off)")
    a = t.add_argument_group("augmentation (defaults: the seed's ImageDataGenerator arguments)")
    a.add_argument("--rotation-range", type=float, metavar="DEG", help="rotation, uniform in +-DEG (default 0.2)")
    a.add_argument("--width-shift-range", type=float, metavar="F", help="shift, fraction of the width (default 0.05)")
    a.add_argument("--height-shift-range", type=float, metavar="F", help="shift, fraction of the height (default 0.05)")
    a.add_argument("--shear-range", type=float, metavar="DEG", help="shear angle, uniform in +-DEG (default 0.05)")
    a.add_argument("--zoom-range", metavar="Z|LOW,HIGH", help="zoom factors per axis (default 0.05: 0.95..1.05)")
    a.add_argument("--no-horizontal-flip", action="store_true", help="no left-right flips (default: p = 0.5)")
    a.add_argument("--vertical-flip", action="store_true", help="also flip up-down with p = 0.5 (default off)")
    a.add_argument("--fill-mode", default="nearest", choices=("nearest", "constant", "reflect"),
                   help="outside pixels (default nearest: repeat the edge)")
    a.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    i = t.add_argument_group("intensity augmentation (domain randomisation; off by default, after the geometric one)")
    i.add_argument("--intensity-augment", action="store_true",
                   help="per sample, each with probability 0.3: blur sigma 0..1.5 px, low resolution 1..3x, noise sd "
                        "0..40 HU, scale 0.9..1.1, shift +-50 HU, contrast 0.75..1.25 about the mean, gamma 0.7..1.5")
    i.add_argument("--intensity-p", type=float, metavar="P", help="probability of each transform (default 0.3)")
    i.add_argument("--noise-sd-hu", type=float, metavar="HU", help="largest noise sd (default 40; 0: no noise)")
    i.add_argument("--noise-corr", type=float, metavar="PX",
                   help="largest smoothing sigma of the noise (default 0: white noise; at most 10)")
    i.add_argument("--blur-sigma", type=float, metavar="PX",
                   help="largest blur sigma (default 1.5; 0: no blur; at most 10)")
    i.add_argument("--lowres-factor", type=float, metavar="F",
                   help="largest downsampling factor (default 3; 1: none; at most 8)")
    t.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    t.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                   help="mixed precision (default auto: bf16/fp16 on CUDA, bf16 on a CPU with native bf16, else off)")
    t.add_argument("--threads", type=int, help="CPU threads (default: all, split between DDP processes)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=run_train)
