"""Paired PNG slices (``image/`` + ``label/``, identical names) -> model-size tensors, like the seed's adjustData.

Images: 8-bit grey / 255, brought to the model size with the engine's ``to_model_input`` (pad to square +
resize, the function inference uses). Labels: / 255, the same ``to_model_input``, then > 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.defaults import DEFAULT_INPUT_SIZE
from FemurUNetLib.preprocess import to_model_input

from .manifest import IMAGE_DIR, LABEL_DIR, MANIFEST_NAME, read_manifest

MAX_LISTED = 8
GREY_MODES = ("L", "P", "RGB", "RGBA", "LA", "1")
READ_CHUNK = 2048     # slices read and converted at a time by load_dataset (peak memory: the tensors + one chunk)


@dataclass
class SliceDataset:
    images: torch.Tensor      # (N, 1, S, S) float32 in [0, 1]
    masks: torch.Tensor       # (N, 1, S, S) bool
    names: list
    manifest: dict
    root: Path

    def __len__(self) -> int:
        return len(self.names)

    @property
    def window(self) -> dict:
        return self.manifest["window"]

    @property
    def cases(self) -> list:
        return sorted(self.manifest.get("cases", {}))


def _listing(items, what: str) -> str:
    shown = ", ".join(str(i) for i in items[:MAX_LISTED])
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"{len(items)} {what}: {shown}{more}"


def paired_names(datadir) -> list:
    """Sorted PNG names present in both ``image/`` and ``label/``; missing partners are an error listing them."""
    root = Path(datadir)
    for sub in (IMAGE_DIR, LABEL_DIR):
        if not (root / sub).is_dir():
            raise FemurUNetError(f"{root}: no '{sub}' folder (expected {IMAGE_DIR}/ and {LABEL_DIR}/ with PNG pairs)")
    listed = {sub: {p.name for p in (root / sub).iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")}
              for sub in (IMAGE_DIR, LABEL_DIR)}
    only_image = sorted(listed[IMAGE_DIR] - listed[LABEL_DIR])
    only_label = sorted(listed[LABEL_DIR] - listed[IMAGE_DIR])
    problems = []
    if only_image:
        problems.append(_listing([f"{IMAGE_DIR}/{n}" for n in only_image], f"image(s) without a {LABEL_DIR}/ partner"))
    if only_label:
        problems.append(_listing([f"{LABEL_DIR}/{n}" for n in only_label], f"label(s) without an {IMAGE_DIR}/ partner"))
    if problems:
        raise FemurUNetError(f"{root}: " + "; ".join(problems))
    names = sorted(listed[IMAGE_DIR])
    if not names:
        raise FemurUNetError(f"{root}: no PNG pairs in {IMAGE_DIR}/ and {LABEL_DIR}/")
    return names


def _read_grey(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode not in GREY_MODES:
            raise ValueError(f"{im.mode} pixels (expected 8-bit grey)")
        if im.mode != "L":
            im = im.convert("L")
        return np.asarray(im, dtype=np.uint8)


def read_pairs(datadir, names) -> tuple:
    """(images, labels) lists of uint8 arrays; unreadable files and size mismatches are one error listing them."""
    root = Path(datadir)
    images, labels, unreadable, mismatched = [], [], [], []
    for name in names:
        pair = []
        for sub in (IMAGE_DIR, LABEL_DIR):
            try:
                pair.append(_read_grey(root / sub / name))
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
                unreadable.append(f"{sub}/{name} ({str(exc).splitlines()[0][:60] if str(exc) else 'unreadable'})")
                pair.append(None)
        if pair[0] is not None and pair[1] is not None and pair[0].shape != pair[1].shape:
            mismatched.append(f"{name} (image {pair[0].shape[1]}x{pair[0].shape[0]}, "
                              f"label {pair[1].shape[1]}x{pair[1].shape[0]})")
        images.append(pair[0])
        labels.append(pair[1])
    problems = []
    if unreadable:
        problems.append(_listing(unreadable, "unreadable PNG(s)"))
    if mismatched:
        problems.append(_listing(mismatched, "pair(s) of different size"))
    if problems:
        raise FemurUNetError(f"{root}: " + "; ".join(problems))
    return images, labels


def to_model_tensors(images, labels, input_size: int = DEFAULT_INPUT_SIZE, chunk: int = 64,
                     min_side: int = 0) -> tuple:
    """uint8 slice lists -> (images (N,1,S,S) float32, masks (N,1,S,S) bool), grouped by native size; ``min_side``:
    ``to_model_input``'s (slices padded to at least that square)."""
    n = len(images)
    out_images = torch.empty((n, 1, input_size, input_size), dtype=torch.float32)
    out_masks = torch.empty((n, 1, input_size, input_size), dtype=torch.bool)
    by_shape = {}
    for i, im in enumerate(images):
        by_shape.setdefault(im.shape, []).append(i)
    for indices in by_shape.values():
        for start in range(0, len(indices), chunk):
            part = indices[start:start + chunk]
            img = torch.from_numpy(np.stack([images[i] for i in part])).float().div_(255.0)
            lab = torch.from_numpy(np.stack([labels[i] for i in part])).float().div_(255.0)
            out_images[part] = to_model_input(img, input_size, min_side)
            out_masks[part] = to_model_input(lab, input_size, min_side) > 0.5
    return out_images, out_masks


def slice_case(name: str) -> str:
    """The case of a slice file ``<case>_<k:04d>.png``."""
    return name.rsplit("_", 1)[0]


def subset(data: SliceDataset, cases) -> SliceDataset:
    """The slices of ``cases`` only (the manifest keeps just their entries)."""
    cases = set(cases)
    keep = [i for i, n in enumerate(data.names) if slice_case(n) in cases]
    manifest = {**data.manifest, "cases": {c: v for c, v in data.manifest.get("cases", {}).items() if c in cases}}
    return SliceDataset(images=data.images[keep], masks=data.masks[keep], names=[data.names[i] for i in keep],
                        manifest=manifest, root=data.root)


def hold_out_cases(data: SliceDataset, count: int, seed: int) -> tuple:
    """(training, validation) split of whole cases: ``count`` cases drawn with ``seed`` go to validation."""
    cases = sorted({slice_case(n) for n in data.names})
    if count >= len(cases):
        raise FemurUNetError(f"{data.root}: --val-cases {count} leaves no training case (the folder has "
                             f"{len(cases)} case(s))")
    held = set(np.random.default_rng(seed).choice(cases, size=count, replace=False).tolist())
    return subset(data, [c for c in cases if c not in held]), subset(data, held)


def load_dataset(datadir, input_size: int = DEFAULT_INPUT_SIZE) -> SliceDataset:
    """Read an exported folder (``dataset.json`` + PNG pairs) into memory at the model's input size."""
    root = Path(datadir)
    if not root.is_dir():
        raise FemurUNetError(f"{root}: no such data folder")
    manifest = read_manifest(root)
    if manifest is None:
        raise FemurUNetError(f"{root}: no {MANIFEST_NAME} (create training data with 'femurunet export')")
    names = paired_names(root)
    unlisted = sorted({slice_case(n) for n in names} - set(manifest.get("cases", {})))
    if unlisted:
        listing = _listing(unlisted, f"case(s) with slice files but no entry in {MANIFEST_NAME}")
        raise FemurUNetError(f"{root}: {listing} (export them with 'femurunet export', or move their files out)")
    x = torch.empty((len(names), 1, input_size, input_size), dtype=torch.float32)
    y = torch.empty((len(names), 1, input_size, input_size), dtype=torch.bool)
    for start in range(0, len(names), READ_CHUNK):      # a chunk at a time: the PNGs' pixels never all in memory
        part = slice(start, start + READ_CHUNK)
        x[part], y[part] = to_model_tensors(*read_pairs(root, names[part]), input_size)
    return SliceDataset(images=x, masks=y, names=names, manifest=manifest, root=root)
