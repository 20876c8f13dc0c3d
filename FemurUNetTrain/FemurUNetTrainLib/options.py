"""The training options, defined once and torch-free: ``TrainConfig`` with its augmentation parts.

The ``femurunet train`` arguments, the argument list of the background training process and the Slicer module's
parameters are all derived from these dataclasses (a field's ``option()`` metadata: flag, help, Slicer name and
range), so a default or a range is written in exactly one place. Defaults are the seed's recipe.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.defaults import DEFAULT_INPUT_SIZE

def option(default, flag=None, help=None, *, metavar=None, choices=None, type=None, gui=None, bounds=None,
           gui_choices=None, gui_default=None, required=False):
    """A dataclass field with its command-line ``flag`` (positional when it has no dashes), ``help`` ("{}" shows
    the default), and optionally its Slicer parameter name ``gui`` with its ``bounds`` (low, high) or
    ``gui_choices`` (default: the CLI's ``choices``) and ``gui_default`` (default: the field's).
    A bool field's flag switches it away from its default."""
    meta = {k: v for k, v in dict(flag=flag, help=help, metavar=metavar, choices=choices, type=type, gui=gui,
                                  bounds=bounds, gui_choices=gui_choices,
                                  gui_default=gui_default, required=required).items() if v is not None and v is not False}
    return field(default=default, metadata=meta)


def zoom_value(text: str):
    """``--zoom-range`` Z (for 1-Z..1+Z) or LOW,HIGH."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected Z (for 1-Z..1+Z) or LOW,HIGH") from None
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"{text!r}: expected Z (for 1-Z..1+Z) or LOW,HIGH")
    return values[0] if len(values) == 1 else tuple(values)


def seed_list(text: str) -> list:
    """Phantom seeds from ``A-B`` ranges and single seeds separated by commas (``90000-90039,25096``), in order."""
    seeds = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            seeds.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ranges like 90000-90039 or seeds like 25096") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least one seed, none negative")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: expected each seed once")
    return seeds


FILL_MODES = {"nearest": "border", "constant": "zeros", "reflect": "reflection"}


@dataclass
class AugmentConfig:
    """Defaults are the seed's ``data_gen_args``."""
    rotation_range: float = option(0.2, "--rotation-range", "rotation, uniform in +-DEG (default {})", metavar="DEG")
    width_shift_range: float = option(0.05, "--width-shift-range", "shift, fraction of the width (default {})",
                                      metavar="F")          # pixels if >= 1
    height_shift_range: float = option(0.05, "--height-shift-range", "shift, fraction of the height (default {})",
                                       metavar="F")
    shear_range: float = option(0.05, "--shear-range", "shear angle, uniform in +-DEG (default {})", metavar="DEG")
    zoom_range: tuple = option((0.95, 1.05), "--zoom-range", "zoom factors per axis (default 0.05: 0.95..1.05)",
                               metavar="Z|LOW,HIGH", type=zoom_value)     # Keras zoom_range=0.05
    horizontal_flip: bool = option(True, "--no-horizontal-flip", "no left-right flips (default: p = 0.5)")
    vertical_flip: bool = option(False, "--vertical-flip", "also flip up-down with p = 0.5 (default off)")
    fill_mode: str = option("nearest", "--fill-mode", "outside pixels (default {}: repeat the edge)",
                            choices=tuple(FILL_MODES))
    mask_threshold: float = 0.5
    enabled: bool = option(True, "--no-augment", "turn augmentation off")

    def __post_init__(self):
        z = self.zoom_range
        if isinstance(z, (int, float)):
            z = (1.0 - float(z), 1.0 + float(z))
        self.zoom_range = (float(z[0]), float(z[1]))
        if self.fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode must be one of {', '.join(FILL_MODES)}, got {self.fill_mode!r}")
        if min(self.rotation_range, self.width_shift_range, self.height_shift_range, self.shear_range) < 0:
            raise ValueError("augmentation ranges must not be negative")
        if not 0 < self.zoom_range[0] <= self.zoom_range[1]:
            raise ValueError(f"zoom range must be 0 < low <= high, got {self.zoom_range}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["zoom_range"] = list(self.zoom_range)
        return d

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "AugmentConfig":
        return cls(**(d or {}))


RANGE_FIELDS = ("scale", "contrast", "gamma")                  # (low, high), both > 0
MAX_SIGMA_PX, MAX_LOWRES = 10.0, 8.0


@dataclass
class IntensityConfig:
    """Off by default; ``enabled=True`` with the other defaults is the documented set (``--intensity-augment``)."""
    enabled: bool = option(False, "--intensity-augment",
                           "per sample, each with probability 0.3: blur sigma 0..1.5 px, low resolution 1..3x, noise "
                           "sd 0..40 HU, scale 0.9..1.1, shift +-50 HU, contrast 0.75..1.25 about the mean, gamma 0.7..1.5")
    p: float = option(0.3, "--intensity-p", "probability of each transform (default {})", metavar="P")
    scale: tuple = (0.9, 1.1)       # image x U(low, high)
    shift_hu: float = 50.0          # image + U(-shift, shift) HU
    contrast: tuple = (0.75, 1.25)  # (image - mean) x U(low, high) + mean
    gamma: tuple = (0.7, 1.5)       # image ** U(low, high)
    blur_sigma: float = option(1.5, "--blur-sigma", "largest blur sigma (default {}; 0: no blur; at most 10)",
                               metavar="PX")   # Gaussian blur, sigma U(0, max) px
    lowres_factor: float = option(3.0, "--lowres-factor", "largest downsampling factor (default {:g}; 1: none; at most 8)",
                                  metavar="F")   # low resolution, factor U(1, max)
    noise_sd_hu: float = option(40.0, "--noise-sd-hu", "largest noise sd (default {:g}; 0: no noise)",
                                metavar="HU")   # Gaussian noise, sd U(0, max) HU
    noise_corr: float = option(0.0, "--noise-corr", "largest smoothing sigma of the noise (default {:g}: white noise; "
                               "at most 10)", metavar="PX")

    def __post_init__(self):
        self.enabled = bool(self.enabled)
        for name in RANGE_FIELDS:
            low, high = (float(v) for v in getattr(self, name))
            if not 0 < low <= high < math.inf:
                raise ValueError(f"{name} range must be 0 < low <= high, got {low:g},{high:g}")
            setattr(self, name, (low, high))
        checks = {"p": (0.0, 1.0), "shift_hu": (0.0, math.inf), "noise_sd_hu": (0.0, math.inf),
                  "blur_sigma": (0.0, MAX_SIGMA_PX), "noise_corr": (0.0, MAX_SIGMA_PX),
                  "lowres_factor": (1.0, MAX_LOWRES)}
        for name, (low, high) in checks.items():
            value = float(getattr(self, name))
            if not low <= value <= high or math.isinf(value):
                bounds = f"{low:g} or more" if math.isinf(high) else f"in [{low:g}, {high:g}]"
                raise ValueError(f"{name} must be {bounds}, got {value:g}")
            setattr(self, name, value)

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in RANGE_FIELDS:
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "IntensityConfig":
        return cls(**(d or {}))


EMPTY_FRACTION = 0.1     # export: share of the label-free slices kept as negatives (the CLI, Slicer and API default)
LR_SCHEDULES = ("none", "plateau", "cosine")
AMP_MODES = ("auto", "bf16", "fp16", "off")
GUI_DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class TrainConfig:
    """Training options. Defaults are the seed's recipe; ``option()`` metadata makes the CLI and the Slicer GUI."""
    data: str = option("", "data", "exported folder (image/, label/, dataset.json)", metavar="DATADIR",
                       gui="datasetPath")
    out: str = option("femurunet.pt", "--out", "model file (best epoch)", metavar="MODEL.pt", required=True,
                      gui="outputModelPath", gui_default="")
    val: Optional[str] = option(None, "--val", "validation folder (monitored instead of the training loss)",
                                metavar="DATADIR2", type=str, gui="validationPath")
    val_cases: int = option(0, "--val-cases", "without --val: hold out this many whole cases of DATADIR, drawn "
                            "with --seed, as the validation set (default {}: none)", metavar="N", bounds=(0, 100000))
    epochs: int = option(300, "--epochs", "epochs (default {})", gui="epochs", bounds=(1, 100000))
    steps_per_epoch: int = option(100, "--steps-per-epoch", "steps per epoch (default {})", gui="stepsPerEpoch",
                                  bounds=(1, 100000))
    batch_size: int = option(20, "--batch-size", "global batch size, split across DDP processes (default {})",
                             gui="batchSize", bounds=(1, 1024))
    lr: float = option(1e-5, "--lr", "Adam learning rate (default {:g})", gui="learningRate", bounds=(1e-7, 1.0))
    base_filters: int = option(64, "--base-filters", "filters of the first level (default {}; with --init: the "
                               "model's, or a multiple of it to widen that model with the same outputs)",
                               gui="baseFilters", bounds=(1, 128))
    input_size: int = option(DEFAULT_INPUT_SIZE, "--input-size", "model input side in pixels, multiple of 16 "
                             "(default {}; with --init: the model's)")
    seed: int = option(1, "--seed", "random seed (default {}: the seed's trainGenerator(seed=1))", gui="seed",
                       bounds=(0, 2147483647))
    init: Optional[str] = option(None, "--init", "fine-tune: start from this model's weights (e.g. the demo "
                                 "model); its width and input size are the defaults", metavar="MODEL.pt", type=str)
    resume: bool = option(False, "--resume", "continue from <out>.checkpoint.pt", gui="resume")
    device: str = option("auto", "--device", "auto (default), cpu, cuda, cuda:N, mps", gui="device",
                         gui_choices=GUI_DEVICES)
    amp: str = option("auto", "--amp", "mixed precision (default auto: bf16/fp16 on CUDA, bf16 on a CPU with "
                      "native bf16, else off)", choices=AMP_MODES)
    channels_last: bool = True
    lr_schedule: str = option("none", "--lr-schedule", "learning-rate schedule (default {}, like the seed)",
                              choices=LR_SCHEDULES)
    lr_patience: int = option(10, "--lr-patience", "plateau schedule: epochs without improvement before the rate "
                              "is cut (default {})")
    lr_factor: float = option(0.5, "--lr-factor", "plateau schedule: rate multiplier (default {})")
    min_lr: float = option(0.0, "--min-lr", "lower bound of the scheduled rate (default {:g})")
    warmup_epochs: int = option(0, "--warmup-epochs", "raise the rate linearly over the first N epochs' steps "
                                "(default {}: the seed has none)", metavar="N")
    early_stopping: int = option(0, "--early-stopping", "stop after this many epochs without improvement "
                                 "(default {}: off)", metavar="PATIENCE")
    bce_weight: float = option(0.0, "--bce-weight", "minimise 1 - Dice + W x mean binary cross-entropy (default "
                               "{:g}: the seed's 1 - Dice); the monitored loss stays 1 - Dice", metavar="W")
    ema: float = option(0.0, "--ema", "validate and save an exponential moving average of the weights, updated "
                        "after every step with this decay, e.g. 0.998 (default {:g}: off, like the seed)",
                        metavar="DECAY")
    dropout: bool = True              # the seed's dropout layers (False only for equivalence tests/ablations)
    deterministic: bool = True
    threads: Optional[int] = option(None, "--threads", "CPU threads (default: all, split between DDP processes)",
                                    type=int)
    val_batch_size: Optional[int] = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    intensity: IntensityConfig = field(default_factory=IntensityConfig)     # off: the seed's recipe

    def recipe(self) -> dict:
        d = {k: getattr(self, k) for k in RECIPE_FIELDS}
        d["augment"] = self.augment.to_dict()
        d["intensity"] = self.intensity.to_dict()
        return d


# Recipe fields: on --resume they come from the checkpoint unless explicitly changed (then: error).
RECIPE_FIELDS = ("epochs", "steps_per_epoch", "batch_size", "lr", "base_filters", "input_size", "seed", "amp",
                 "lr_schedule", "lr_patience", "lr_factor", "min_lr", "warmup_epochs", "early_stopping", "dropout",
                 "augment", "init", "bce_weight", "intensity", "val_cases", "ema")
EXTENDABLE_FIELDS = ("epochs", "early_stopping")
# Recipes: defaults under the user's own flags. "seed": the original work's. "finetune": the run that fine-tuned the
# demo model on 40 added cases (held-out phantom Dice 0.937 -> 0.953; docs/MODEL_HISTORY.md), plus early stopping
# for a small dataset; it starts from the demo model unless --init names another.
RECIPES = {
    "seed": {},
    "finetune": {"epochs": 20, "steps_per_epoch": 75, "batch_size": 8, "lr": 1e-4, "warmup_epochs": 1,
                 "lr_schedule": "cosine", "min_lr": 1e-5, "bce_weight": 10.0, "early_stopping": 5,
                 "intensity.enabled": True},
}
GROUPS = (("", TrainConfig, None),
          ("augment.", AugmentConfig, "augmentation (defaults: the seed's ImageDataGenerator arguments)"),
          ("intensity.", IntensityConfig,
           "intensity augmentation (domain randomisation; off by default, after the geometric one)"))


def _cli_fields(cls) -> list:
    return [f for f in dataclasses.fields(cls) if "flag" in f.metadata]


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every CLI option of the training (defaults left out of the namespace: ``config_from_args`` fills them)."""
    for prefix, cls, title in GROUPS:
        group = parser.add_argument_group(title) if title else parser
        for f in _cli_fields(cls):
            m = f.metadata
            text = m.get("help", "").format(f.default)
            if not m["flag"].startswith("-"):
                group.add_argument(prefix + f.name, metavar=m.get("metavar"), help=text)
                continue
            kwargs = {"dest": prefix + f.name, "help": text, "default": argparse.SUPPRESS}
            if isinstance(f.default, bool):
                kwargs["action"] = "store_false" if f.default else "store_true"
            else:
                kwargs.update(type=m.get("type", type(f.default)), metavar=m.get("metavar"), choices=m.get("choices"))
            if m.get("required"):
                kwargs.update(required=True)
                kwargs.pop("default")
            group.add_argument(m["flag"], **kwargs)


def config_from_args(args, model_defaults: Optional[dict] = None, recipe: str = "seed") -> TrainConfig:
    """The TrainConfig of parsed ``add_train_arguments`` options; fields not given take the ``recipe``'s values
    (RECIPES), then ``model_defaults`` (the --init model's width and input size), then the dataclass defaults.
    Bad values: FemurUNetError."""
    given = {**RECIPES[recipe], **vars(args)}
    parts = {prefix: {k[len(prefix):]: v for k, v in given.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
             for prefix in ("augment.", "intensity.")}
    top = {f.name: given[f.name] for f in _cli_fields(TrainConfig) if f.name in given}
    extra = [k for k in parts["intensity."] if k != "enabled"]
    if extra and not parts["intensity."].get("enabled"):
        flags = {f.name: f.metadata["flag"] for f in _cli_fields(IntensityConfig)}
        raise FemurUNetError(", ".join(flags[k] for k in extra) + ": needs --intensity-augment")
    try:
        augment = AugmentConfig(**parts["augment."])
    except (ValueError, TypeError, IndexError) as exc:
        raise FemurUNetError(f"augmentation: {exc}") from None
    try:
        intensity = IntensityConfig(**parts["intensity."])
    except ValueError as exc:
        raise FemurUNetError(f"intensity augmentation: {exc}") from None
    for name, value in (model_defaults or {}).items():
        top.setdefault(name, value)
    return TrainConfig(**top, augment=augment, intensity=intensity)


def _text(value) -> str:
    if isinstance(value, tuple):
        return ",".join(repr(float(v)) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def train_arguments(config: TrainConfig) -> list:
    """``femurunet train`` arguments that reproduce ``config`` (options at their default are left out)."""
    arguments = []
    for prefix, cls, _ in GROUPS:
        part = config if not prefix else getattr(config, prefix[:-1])
        if part is config.intensity and not part.enabled:
            continue
        for f in _cli_fields(cls):
            value, flag = getattr(part, f.name), f.metadata["flag"]
            if not flag.startswith("-"):
                arguments.append(str(value))
            elif value != f.default and value is not None:
                arguments += [flag] if isinstance(f.default, bool) else [flag, _text(value)]
    return arguments


def gui_parameters() -> list:
    """(Slicer parameter name, config field, type, default, bounds or None, choices or None) of the training GUI."""
    rows = []
    for f in dataclasses.fields(TrainConfig):
        m = f.metadata
        if "gui" in m:
            kind = m.get("type", type(f.default))
            default = m.get("gui_default", "" if f.default is None else f.default)
            choices = m.get("gui_choices", m.get("choices"))
            rows.append((m["gui"], f.name, kind, default, m.get("bounds"), choices))
    return rows


def config_from_gui(values: dict, **overrides) -> TrainConfig:
    """A TrainConfig from Slicer parameter values by name (an empty path is None); ``overrides`` by field."""
    fields = {}
    for gui, name, _, _, _, _ in gui_parameters():
        if gui in values:
            value = values[gui]
            fields[name] = None if value == "" and name == "val" else value
    fields.update(overrides)
    return TrainConfig(**fields)


def output_model_file(path: str) -> str:
    """The model file a training writes for an output field: '.pt' is added to a name without a suffix."""
    return path + ".pt" if path and not os.path.splitext(path)[1] else path


def export_path_problem(dataset: str) -> str:
    """Why pairs cannot be exported into this folder (one line), or "" (a missing folder is created)."""
    if not dataset:
        return "Choose the dataset folder to export into"
    if os.path.exists(dataset) and not os.path.isdir(dataset):
        return f"The dataset folder is a file: {dataset}"
    return ""


def training_paths_problem(dataset: str, validation: str, output_model: str) -> str:
    """Why these paths (the training module's fields) cannot start a training (one line), or "" when they can."""
    if not dataset:
        return "Choose the dataset folder (export pairs into it first)"
    if not os.path.isdir(dataset):
        return f"Dataset folder not found: {dataset}"
    if validation and not os.path.isdir(validation):
        return f"Validation folder not found: {validation}"
    if not output_model:
        return "Choose the output model file (.pt)"
    out = output_model_file(output_model)
    if not out.endswith(".pt"):
        return f"The output model must be a .pt file: {output_model}"
    if os.path.isdir(out):
        return f"The output model is a folder: {out}"
    return ""
