"""Which model a caller means: a module, a ``.pt`` file, a Keras file (converted once), or None (the demo model).

Above both readers (``modelfile`` and ``keras_import``), so neither imports the other's caller."""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from .errors import FemurUNetError
from .gate import LevelGate, load_gate
from .keras_import import convert_keras_file
from .model import UNet2D
from .modelfile import load_model, model_metadata
from .paths import DEFAULT_GATE_PATH, DEFAULT_MODEL_PATH


def resolve_model(model=None, map_location="cpu") -> UNet2D:
    """A UNet2D from a module, a path, or None (the shipped demo model)."""
    if isinstance(model, UNet2D):
        if not hasattr(model, "metadata"):
            model.metadata = model_metadata(model)
        return model
    if model is None:
        if not DEFAULT_MODEL_PATH.is_file():
            raise FemurUNetError(f"{DEFAULT_MODEL_PATH}: the default demo model is not installed; pass a model file")
        model = DEFAULT_MODEL_PATH
    path = Path(model)
    if path.suffix.lower() in (".h5", ".hdf5", ".keras"):
        path = convert_keras_file(path)
    return load_model(path, map_location)


def resolve_gate(gate=None, model=None):
    """A LevelGate from a module or a file; None: the shipped gate when ``model`` (a loaded UNet2D) is the shipped
    demo model, else none; False: none. The gate was chosen on the demo model's labels (MODEL_HISTORY)."""
    if gate is False or (gate is None and not is_demo_model(model)):
        return None
    if isinstance(gate, LevelGate):
        return gate
    return load_gate(DEFAULT_GATE_PATH if gate is None else gate)


def is_demo_model(model) -> bool:
    """Whether a loaded model came from the shipped demo model's file or a copy of it (the same bytes)."""
    source = getattr(model, "source_file", None)
    if source is None or not os.path.isfile(source) or not DEFAULT_MODEL_PATH.is_file():
        return False
    mine, demo = os.stat(source), os.stat(DEFAULT_MODEL_PATH)
    return mine.st_size == demo.st_size and (
        _file_sha256(os.fspath(source), mine.st_size, mine.st_mtime_ns)
        == _file_sha256(os.fspath(DEFAULT_MODEL_PATH), demo.st_size, demo.st_mtime_ns))


def model_source(model) -> str:
    """A model argument as provenance text: its file (a loaded model's ``source_file``), the demo model's file for
    None, else '(a model in memory)'."""
    if model is None:
        return str(DEFAULT_MODEL_PATH)
    if isinstance(model, (str, os.PathLike)):
        return os.path.abspath(os.fspath(model))
    source = getattr(model, "source_file", None)
    return str(source) if source else "(a model in memory)"


def model_identity(model) -> dict:
    """The model as an output file names it: its file's name and the start of its SHA-256 (no folder: paths can
    name patients or users); a model in memory has neither."""
    source = model_source(model)
    if not os.path.isfile(source):
        return {"model": source}
    stat = os.stat(source)
    return {"model": os.path.basename(source), "model_sha256": _file_sha256(source, stat.st_size, stat.st_mtime_ns)}


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """The first 16 hex digits of a file's SHA-256, once per file version (a folder of CTs names one model)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
