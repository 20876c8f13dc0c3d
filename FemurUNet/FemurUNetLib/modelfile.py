"""Model files: one ``.pt`` holding the weights and a versioned metadata record, loaded without pickle code."""
from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import torch

from .defaults import BONE_COLOR
from .errors import FemurUNetError
from .fileio import atomic_write
from .geometry import CANONICAL_ORIENTATION
from .model import ARCHITECTURE, UNet2D
from .paths import DEFAULT_MODEL_PATH  # noqa: F401  (re-exported; defined torch-free in paths.py)
from .preprocess import DEFAULT_INPUT_SIZE, DEFAULT_WINDOW

FORMAT_NAME = "femurunet-model"
FORMAT_VERSION = 1

REQUIRED_KEYS = ("architecture", "base_filters", "in_channels", "out_channels", "input_size", "window",
                 "orientation", "threshold", "labels")


def default_metadata(base_filters: int = 64, in_channels: int = 1, out_channels: int = 1) -> dict:
    labels = [{"value": 1, "name": "Femur", "color": BONE_COLOR}]
    if out_channels == 2:
        labels = [{"value": 1, "name": "Femur left", "color": BONE_COLOR, "side": "left"},
                  {"value": 2, "name": "Femur right", "color": [0.87, 0.75, 0.48], "side": "right"}]
    return {
        "format_version": FORMAT_VERSION,
        "architecture": ARCHITECTURE,
        "base_filters": base_filters,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "input_size": DEFAULT_INPUT_SIZE,
        "window": {"center": DEFAULT_WINDOW[0], "width": DEFAULT_WINDOW[1]},
        "orientation": CANONICAL_ORIENTATION,
        "threshold": 0.5,
        "labels": labels,
        "training": {},
    }


def model_metadata(model: UNet2D) -> dict:
    meta = default_metadata(model.base_filters, model.in_channels, model.out_channels)
    meta.update(copy.deepcopy(getattr(model, "metadata", None) or {}))
    return meta


def save_model(model: UNet2D, path, **metadata) -> Path:
    meta = model_metadata(model)
    meta.update(metadata)
    meta["format_version"] = FORMAT_VERSION
    _validate_metadata(meta, path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    record = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "metadata": json.dumps(meta),
              "state_dict": state}
    return atomic_write(path, lambda tmp: torch.save(record, tmp))


def _validate_metadata(meta: dict, path) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise FemurUNetError(f"{path}: model metadata lacks {', '.join(missing)}")
    if meta["architecture"] != ARCHITECTURE:
        raise FemurUNetError(f"{path}: unknown architecture {meta['architecture']!r} (expected {ARCHITECTURE!r})")
    if meta["input_size"] % 16:
        raise FemurUNetError(f"{path}: input_size {meta['input_size']} is not a multiple of 16")
    if float(meta["window"]["width"]) <= 0:
        raise FemurUNetError(f"{path}: window width must be positive")
    if len(meta["labels"]) != meta["out_channels"]:
        raise FemurUNetError(f"{path}: {len(meta['labels'])} labels for {meta['out_channels']} output channels")


def _why_unloadable(path: Path) -> str:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        return "not a FemurUNet model file (not a PyTorch archive)"
    if not zipfile.is_zipfile(path):
        return "model file is truncated or corrupt"
    return "model file holds Python objects other than weights (refused: weights-only loading)"


def load_model(path, map_location="cpu") -> UNet2D:
    """Load a FemurUNet ``.pt`` (weights_only): the network in eval mode with ``.metadata`` attached."""
    path = Path(path)
    if not path.is_file():
        raise FemurUNetError(f"{path}: model file not found")
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:
        raise FemurUNetError(f"{path}: {_why_unloadable(path)}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT_NAME:
        raise FemurUNetError(f"{path}: not a FemurUNet model file (no '{FORMAT_NAME}' record)")
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise FemurUNetError(f"{path}: model format version {version} is not supported (this FemurUNet reads {FORMAT_VERSION})")
    try:
        meta = json.loads(record["metadata"])
        state = record["state_dict"]
    except (KeyError, TypeError, ValueError):
        raise FemurUNetError(f"{path}: model metadata is missing or unreadable") from None
    _validate_metadata(meta, path)
    model = UNet2D(meta["in_channels"], meta["out_channels"], meta["base_filters"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise FemurUNetError(f"{path}: weights do not match a {ARCHITECTURE} with base_filters="
                             f"{meta['base_filters']}: {first}") from None
    model.metadata = meta
    return model.eval()
