"""Model files: one ``.pt`` holding the weights and a versioned metadata record, loaded without pickle code."""
from __future__ import annotations

import copy
import json
import math
import zipfile
from pathlib import Path

import torch

from .defaults import BONE_COLOR, MODEL_SETTINGS_MM
from .errors import FemurUNetError
from .fileio import atomic_write
from .geometry import CANONICAL_ORIENTATION
from .model import ARCHITECTURE, UNet2D
from .neighbours import offsets_problem
from .defaults import DEFAULT_INPUT_SIZE, DEFAULT_WINDOW

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


def _number(value) -> float:
    """A real number (not a bool, not text), else NaN, so that the range checks below refuse it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _whole(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_labels(meta: dict, path) -> None:
    labels = meta["labels"]
    if not isinstance(labels, list) or not all(isinstance(l, dict) for l in labels):
        raise FemurUNetError(f"{path}: model metadata 'labels' must be a list of label records")
    if len(labels) != meta["out_channels"]:
        raise FemurUNetError(f"{path}: {len(labels)} labels for {meta['out_channels']} output channels")
    values = [l.get("value") for l in labels]
    if not all(_whole(v, 1, 255) for v in values) or len(set(values)) != len(values):
        raise FemurUNetError(f"{path}: label values {values} must be distinct whole numbers 1..255")
    for label in labels:
        if not isinstance(label.get("name"), str):
            raise FemurUNetError(f"{path}: label {label.get('value')} has no name")
        color = label.get("color", [0.5, 0.5, 0.5])
        if not (isinstance(color, list) and len(color) == 3 and all(0 <= _number(c) <= 1 for c in color)):
            raise FemurUNetError(f"{path}: label {label['value']} colour {color!r} is not three numbers 0..1")
        if label.get("side") not in (None, "left", "right"):
            raise FemurUNetError(f"{path}: label {label['value']} side {label.get('side')!r} is not left or right")


def _validate_metadata(meta: dict, path) -> None:
    """Refuse metadata the engine could not run correctly with (each check one line naming the field)."""
    if not isinstance(meta, dict):
        raise FemurUNetError(f"{path}: model metadata is not a record")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise FemurUNetError(f"{path}: model metadata lacks {', '.join(missing)}")
    if meta["architecture"] != ARCHITECTURE:
        raise FemurUNetError(f"{path}: unknown architecture {meta['architecture']!r} (expected {ARCHITECTURE!r})")
    for key, low, high in (("base_filters", 1, 1024), ("in_channels", 1, 64), ("out_channels", 1, 2)):
        if not _whole(meta[key], low, high):
            raise FemurUNetError(f"{path}: {key} {meta[key]!r} is not a whole number {low}..{high}")
    if not _whole(meta["input_size"], 16, 8192) or meta["input_size"] % 16:
        raise FemurUNetError(f"{path}: input_size {meta['input_size']!r} is not a multiple of 16 (16..8192)")
    window = meta["window"] if isinstance(meta["window"], dict) else {}
    center, width = _number(window.get("center")), _number(window.get("width"))
    if not (math.isfinite(center) and math.isfinite(width) and width > 0):
        raise FemurUNetError(f"{path}: window {meta['window']!r}: width must be positive and center and width "
                             f"finite numbers")
    if not 0 < _number(meta["threshold"]) < 1:
        raise FemurUNetError(f"{path}: threshold {meta['threshold']!r} must lie strictly between 0 and 1")
    for key, (most, _) in MODEL_SETTINGS_MM.items():
        if not 0 <= _number(meta.get(key, 0.0)) <= most:
            raise FemurUNetError(f"{path}: {key} {meta[key]!r} must be a number of mm, 0..{most:g}")
    problem = offsets_problem(meta)
    if problem:
        raise FemurUNetError(f"{path}: {problem}")
    if meta["orientation"] != CANONICAL_ORIENTATION:
        raise FemurUNetError(f"{path}: orientation {meta['orientation']!r} is not supported "
                             f"(expected {CANONICAL_ORIENTATION!r})")
    _check_labels(meta, path)


def _why_unloadable(path: Path) -> str:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        return "not a FemurUNet model file (not a PyTorch archive)"
    if not zipfile.is_zipfile(path):
        return "model file is truncated or corrupt"
    return "model file holds Python objects other than weights (refused: weights-only loading)"


def _check_archive(path: Path) -> None:
    """torch.load does not check the zip members' CRC-32s, so a damaged weight loads silently: check them."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, RuntimeError,
            NotImplementedError):
        return                      # torch.load refuses it; _why_unloadable says why
    if damaged is not None:
        raise FemurUNetError(f"{path}: model file is corrupt (checksum mismatch in {damaged.split('/', 1)[-1]})")


def load_model(path, map_location="cpu") -> UNet2D:
    """Load a FemurUNet ``.pt`` (weights_only): the network in eval mode with ``.metadata`` and ``.source_file``
    (the file's resolved path) attached."""
    path = Path(path)
    if not path.is_file():
        raise FemurUNetError(f"{path}: model file not found")
    _check_archive(path)
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
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FemurUNetError(f"{path}: model weights are not a table of tensors")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise FemurUNetError(f"{path}: model weights hold NaN or Inf ({bad[0]}{' and more' if len(bad) > 1 else ''})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise FemurUNetError(f"{path}: weights do not match a {ARCHITECTURE} with base_filters="
                             f"{meta['base_filters']}: {first}") from None
    model.metadata = meta
    model.source_file = path.resolve()
    return model.eval()
