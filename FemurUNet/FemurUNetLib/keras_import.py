"""Import the seed's Keras U-Net (.hdf5 / .h5 / .keras) into ``UNet2D`` with h5py only (no TensorFlow).

Layouts read:
- Keras 2 full model (``model.save('x.hdf5')``): weights under ``model_weights/``, order in its ``layer_names``;
  optimizer slots (``optimizer_weights/``) are ignored.
- Keras 2 weights only (``model.save_weights('x.h5')``): the same tree on the root.
- Keras 3 ``model.save('x.h5')``: the Keras 2 tree with dataset names without ``:0``.
- Keras 3 ``.keras`` archive: layer order from ``config.json``, weights from ``model.weights.h5``.

The 23 Conv2D layers of the seed form a chain (each one consumes the previous one's output), so every
topological layer order lists them in the same order as ``_expected_convs``; every kernel is checked against it.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import FemurUNetError
from .model import UNet2D
from .modelfile import default_metadata, load_model, save_model
from .defaults import DEFAULT_WINDOW

DAMAGED_FILE_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError, AttributeError,
                       EOFError, zipfile.BadZipFile, UnicodeDecodeError)
SEED_INPUT_SIZE = 256
SEED_CONV_COUNT = 23
KERAS3_VAR_NAMES = {"0": "kernel", "1": "bias"}


@dataclass
class KerasConv:
    layer: str
    kernel: np.ndarray  # HWIO
    bias: np.ndarray


@dataclass
class KerasWeights:
    layout: str
    convs: list
    keras_version: str = ""
    backend: str = ""
    input_size: int | None = None


# ---------------------------------------------------------------- reading

def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf8")
    return str(value)


def _attr_list(group, name: str):
    """A string-list attribute (None if absent); Keras splits long ones into ``name0``, ``name1``, ..."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in group.attrs:
            chunks.append(group.attrs[f"{name}{len(chunks)}"])
        if not chunks:
            return None
    return [_text(v) for chunk in chunks for v in np.atleast_1d(chunk) if np.size(chunk)]


def _base_name(weight_name: str) -> str:
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


def _conv_from_arrays(path, layer: str, named: list) -> KerasConv:
    """``named``: [(weight name, array)] of one layer; must be a Conv2D's kernel and bias."""
    by_kind = {_base_name(n): a for n, a in named}
    kernel, bias = by_kind.get("kernel"), by_kind.get("bias")
    if len(named) != 2 or kernel is None or bias is None or kernel.ndim != 4 or bias.ndim != 1:
        found = ", ".join(f"{n} {tuple(a.shape)}" for n, a in named)
        raise FemurUNetError(f"{path}: layer '{layer}' holds [{found}], not a Conv2D kernel and bias: "
                             f"not the seed U-Net")
    return KerasConv(layer, kernel, bias)


def _read_dataset(path, group, layer: str, weight_name: str) -> np.ndarray:
    try:
        return np.asarray(group[weight_name][()])
    except KeyError:
        pass
    base = _base_name(weight_name)
    hits = []
    group.visititems(lambda name, obj: hits.append(obj) if hasattr(obj, "shape") and _base_name(name) == base else None)
    if len(hits) != 1:
        raise FemurUNetError(f"{path}: layer '{layer}': weight '{weight_name}' is missing")
    return np.asarray(hits[0][()])


def _input_size_from_config(config: dict) -> int | None:
    """The square input size of the model's InputLayer, if the saved config fixes one."""
    layers = (config.get("config") or {}).get("layers") or []
    for layer in layers:
        if layer.get("class_name") == "InputLayer":
            cfg = layer.get("config") or {}
            shape = cfg.get("batch_input_shape") or cfg.get("batch_shape") or []
            if len(shape) == 4 and shape[1] and shape[1] == shape[2]:
                return int(shape[1])
    return None


def _read_legacy_h5(path, f) -> KerasWeights:
    if "model_weights" in f:
        root, kind = f["model_weights"], "full-model"
    elif _attr_list(f, "layer_names") is not None:
        root, kind = f, "weights-only"
    elif "layers" in f and "vars" in f:
        raise FemurUNetError(f"{path}: a Keras 3 '.weights.h5' file stores no layer order; import the model's "
                             f".keras file or re-save it with model.save('model.h5')")
    else:
        raise FemurUNetError(f"{path}: HDF5 file holds no Keras weights (no 'layer_names' attribute)")
    layer_names = _attr_list(root, "layer_names") or []
    keras_version = _text(root.attrs.get("keras_version", f.attrs.get("keras_version", "")))
    backend = _text(root.attrs.get("backend", f.attrs.get("backend", "")))
    layout = f"keras{3 if keras_version.startswith('3') else 2}-{kind}"
    input_size = None
    if "model_config" in f.attrs:
        try:
            input_size = _input_size_from_config(json.loads(_text(f.attrs["model_config"])))
        except ValueError:
            pass
    convs = []
    for layer in layer_names:
        if layer not in root:
            raise FemurUNetError(f"{path}: layer '{layer}' is listed in layer_names but has no weights group")
        group = root[layer]
        weight_names = _attr_list(group, "weight_names") or []
        if not weight_names:
            continue
        named = [(n, _read_dataset(path, group, layer, n)) for n in weight_names]
        convs.append(_conv_from_arrays(path, layer, named))
    return KerasWeights(layout, convs, keras_version, backend, input_size)


def _read_keras_archive(path) -> KerasWeights:
    import h5py

    try:
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                raise FemurUNetError(f"{path}: zip archive without config.json: not a Keras .keras model "
                                     f"(a FemurUNet .pt needs no import)")
            config = json.loads(archive.read("config.json"))
            metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in archive.namelist() else {}
            weights = archive.read("model.weights.h5")
    except (KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise FemurUNetError(f"{path}: not a readable Keras .keras archive ({exc})") from None
    layers = (config.get("config") or {}).get("layers") or []
    convs = []
    with h5py.File(io.BytesIO(weights), "r") as f:
        for layer in layers:
            name = (layer.get("config") or {}).get("name") or layer.get("name")
            group = f.get(f"layers/{name}/vars")
            if group is None or not len(group):
                continue
            named = [(KERAS3_VAR_NAMES.get(k, k), np.asarray(group[k][()])) for k in sorted(group, key=int)]
            convs.append(_conv_from_arrays(path, name, named))
    return KerasWeights("keras3-archive", convs, _text(metadata.get("keras_version", "")), "",
                        _input_size_from_config(config))


def read_keras_weights(path) -> KerasWeights:
    """The weighted layers of a Keras file in model order (no TensorFlow needed)."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise FemurUNetError(f"{path}: no such file")
    if not path.is_file():
        raise FemurUNetError(f"{path}: not a file")
    try:
        if zipfile.is_zipfile(path):
            return _read_keras_archive(path)
        if not h5py.is_hdf5(path):
            raise FemurUNetError(f"{path}: not an HDF5 file (expected a Keras .hdf5/.h5 model or weights file)")
        with h5py.File(path, "r") as f:
            return _read_legacy_h5(path, f)
    except FemurUNetError:
        raise
    except DAMAGED_FILE_ERRORS as exc:   # h5py/zipfile/json on a damaged file: KeyError, OSError, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise FemurUNetError(f"{path}: unreadable or damaged Keras file ({reason})") from None


# ---------------------------------------------------------------- mapping

def _expected_convs(base_filters: int, in_channels: int, out_channels: int) -> list:
    """(UNet2D module name, Keras HWIO kernel shape) of the seed's Conv2D chain, in model order."""
    w = [base_filters * m for m in (1, 2, 4, 8, 16)]
    convs, previous = [], in_channels
    for i in range(5):
        convs += [(f"enc.{i}.0", (3, 3, previous, w[i])), (f"enc.{i}.2", (3, 3, w[i], w[i]))]
        previous = w[i]
    for j, level in enumerate((3, 2, 1, 0)):
        convs += [(f"up.{j}.conv", (2, 2, w[level + 1], w[level])),
                  (f"dec.{j}.0", (3, 3, 2 * w[level], w[level])),
                  (f"dec.{j}.2", (3, 3, w[level], w[level]))]
    convs.append(("head", (1, 1, w[0], out_channels)))
    return convs


def _likely_base_filters(convs: list) -> int:
    """The base width most layers agree on (one odd kernel must not shift the blame onto its neighbours)."""
    votes = Counter()
    for conv, (module, unit_shape) in zip(convs, _expected_convs(1, 1, 1)):
        if module != "head" and conv.kernel.shape[3] % unit_shape[3] == 0:
            votes[conv.kernel.shape[3] // unit_shape[3]] += 1
    return votes.most_common(1)[0][0] if votes else int(convs[0].kernel.shape[3])


def _shape_text(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def map_to_unet(path, convs: list) -> tuple:
    """(base_filters, in_channels, out_channels, {UNet2D parameter name: tensor})."""
    if len(convs) != SEED_CONV_COUNT:
        raise FemurUNetError(f"{path}: {len(convs)} Conv2D layers with weights, the seed U-Net has "
                             f"{SEED_CONV_COUNT}: not this architecture")
    base = _likely_base_filters(convs)
    in_channels, out_channels = int(convs[0].kernel.shape[2]), int(convs[-1].kernel.shape[3])
    if out_channels not in (1, 2):
        raise FemurUNetError(f"{path}: head layer '{convs[-1].layer}' has {out_channels} output channels; "
                             f"FemurUNet models have 1 (femur) or 2 (left, right)")
    expected = _expected_convs(base, in_channels, out_channels)
    arch = f"base_filters={base}, in_channels={in_channels}"
    for index, (conv, (module, shape)) in enumerate(zip(convs, expected)):
        if tuple(conv.kernel.shape) != shape:
            raise FemurUNetError(f"{path}: layer '{conv.layer}' (Conv2D {index + 1} of {SEED_CONV_COUNT}, {module}) "
                                 f"has kernel {_shape_text(conv.kernel.shape)}, expected {_shape_text(shape)} "
                                 f"(HWIO) for the seed U-Net with {arch}")
        if tuple(conv.bias.shape) != (shape[3],):
            raise FemurUNetError(f"{path}: layer '{conv.layer}' ({module}) has bias {_shape_text(conv.bias.shape)}, "
                                 f"expected {shape[3]}")
    state = {}
    for conv, (module, _) in zip(convs, expected):
        for kind, array in (("weight", conv.kernel.transpose(3, 2, 0, 1)), ("bias", conv.bias)):
            if not np.isfinite(array).all():
                raise FemurUNetError(f"{path}: layer '{conv.layer}' {kind} holds NaN or Inf")
            state[f"{module}.{kind}"] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return base, in_channels, out_channels, state


# ---------------------------------------------------------------- public API

def _check_window(path, window) -> tuple:
    if window is None:
        return tuple(float(v) for v in DEFAULT_WINDOW)
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise FemurUNetError(f"{path}: window must be (center, width), got {window!r}") from None
    if not (np.isfinite(center) and np.isfinite(width) and width > 0):
        raise FemurUNetError(f"{path}: window width must be positive and finite, got {window!r}")
    return center, width


def _check_threshold(path, threshold) -> float:
    if threshold is None:
        return 0.5
    threshold = float(threshold)
    if not 0.0 < threshold < 1.0:
        raise FemurUNetError(f"{path}: threshold must lie strictly between 0 and 1, got {threshold}")
    return threshold


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_keras(path, window=None, threshold=None) -> UNet2D:
    """A seed-style Keras U-Net file as a ``UNet2D`` in eval mode, with ``.metadata`` (window default: the engine's)."""
    path = Path(path)
    center, width = _check_window(path, window)
    threshold = _check_threshold(path, threshold)
    weights = read_keras_weights(path)
    base, in_channels, out_channels, state = map_to_unet(path, weights.convs)
    model = UNet2D(in_channels, out_channels, base)
    model.load_state_dict(state, strict=True)
    input_size = weights.input_size if weights.input_size and weights.input_size % 16 == 0 else SEED_INPUT_SIZE
    model.metadata = default_metadata(base, in_channels, out_channels)
    model.metadata.update({
        "input_size": input_size,
        "window": {"center": center, "width": width},
        "threshold": threshold,
        "training": {"source": "keras-import", "file": path.name, "sha256": _sha256(path),
                     "layout": weights.layout, "keras_version": weights.keras_version,
                     "backend": weights.backend},
    })
    return model.eval()


def _cached_settings_match(out: Path, window, threshold) -> bool:
    if window is None and threshold is None:
        return True
    try:
        meta = load_model(out).metadata
    except FemurUNetError:
        return False
    if window is not None:
        center, width = (float(v) for v in window)
        if (float(meta["window"]["center"]), float(meta["window"]["width"])) != (center, width):
            return False
    return threshold is None or float(meta["threshold"]) == float(threshold)


def default_output_path(path) -> Path:
    return Path(path).with_suffix(".pt")


def convert_keras_file(path, out_path=None, window=None, threshold=None) -> Path:
    """Write the imported model as a FemurUNet ``.pt`` (atomically); reuse an output newer than the source."""
    path = Path(path)
    out = Path(out_path) if out_path is not None else default_output_path(path)
    if path.is_file() and out.is_file() and out.stat().st_mtime_ns > path.stat().st_mtime_ns \
            and _cached_settings_match(out, window, threshold):
        return out
    if out.resolve() == path.resolve():
        raise FemurUNetError(f"{path}: output path is the source file")
    return Path(save_model(import_keras(path, window=window, threshold=threshold), out))
