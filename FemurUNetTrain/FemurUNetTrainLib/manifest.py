"""The dataset folder format: ``image/`` and ``label/`` PNG pairs named ``<case>_<k:04d>.png`` and ``dataset.json``
(window, orientation, and per case its slices and provenance). The exporter writes it; the loader reads it."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

from FemurUNetLib.defaults import DEFAULT_WINDOW
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.geometry import CANONICAL_ORIENTATION

MANIFEST_NAME = "dataset.json"
MANIFEST_FORMAT = "femurunet-dataset"
MANIFEST_VERSION = 1
IMAGE_DIR, LABEL_DIR = "image", "label"
CASE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def window_dict(window=None) -> dict:
    """``None`` (engine default), ``(center, width)`` or ``{"center", "width"}`` -> ``{"center", "width"}`` floats."""
    if window is None:
        window = DEFAULT_WINDOW
    if isinstance(window, dict):
        center, width = window.get("center"), window.get("width")
    else:
        try:
            center, width = window
        except (TypeError, ValueError):
            raise FemurUNetError(f"window must be (center, width), got {window!r}") from None
    try:
        center, width = float(center), float(width)
    except (TypeError, ValueError):
        raise FemurUNetError(f"window must be two numbers (center, width), got {window!r}") from None
    if not width > 0:
        raise FemurUNetError(f"window width must be positive, got {width}")
    return {"center": center, "width": width}


def slice_name(case: str, k: int) -> str:
    return f"{case}_{k:04d}.png"


def read_manifest(outdir) -> Optional[dict]:
    """The folder's ``dataset.json``, or None when there is none."""
    path = Path(outdir) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FemurUNetError(f"{path}: unreadable dataset manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise FemurUNetError(f"{path}: not a FemurUNet dataset manifest (no '{MANIFEST_FORMAT}' format)")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise FemurUNetError(f"{path}: dataset manifest version {manifest.get('format_version')} is not supported")
    return manifest


def new_manifest(window: dict) -> dict:
    return {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "window": window,
            "orientation": CANONICAL_ORIENTATION, "image_folder": IMAGE_DIR, "label_folder": LABEL_DIR,
            "cases": {}}


def set_aside(folder: Path, names, staging: Path) -> list:
    """Move the image/label files of the slices ``names`` out of ``folder`` into ``staging``; returns the
    (backup, original) pairs for ``put_back``. On an error what was moved goes back before it is raised."""
    kept = []
    try:
        for name in names:
            for sub in (IMAGE_DIR, LABEL_DIR):
                original = Path(folder) / sub / name
                if original.exists():
                    os.replace(original, Path(staging) / f"{sub}_{name}")
                    kept.append((Path(staging) / f"{sub}_{name}", original))
    except BaseException:
        put_back(kept)
        raise
    return kept


def put_back(kept) -> None:
    """Undo ``set_aside``."""
    for backup, original in kept:
        os.replace(backup, original)
