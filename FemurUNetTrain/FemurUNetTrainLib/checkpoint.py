"""The training checkpoint (model, optimiser, schedule, history, RNG; written atomically after every epoch) and how
a resumed run's options merge with the checkpoint's recipe."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch.torch_version import TorchVersion

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.fileio import atomic_write

from .options import EXTENDABLE_FIELDS, RECIPE_FIELDS, AugmentConfig, IntensityConfig, TrainConfig

CHECKPOINT_FORMAT = "femurunet-train-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp), ".pt")


def load_checkpoint(path: Path) -> dict:
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


def merge_resumed_config(config: TrainConfig, saved: dict, path: Path) -> TrainConfig:
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
