"""Export a CT + femur label as the seed's training folders: ``image/`` and ``label/`` PNG pairs + ``dataset.json``.

Slices are taken along the canonical (LPS) axial axis at native size, windowed with the engine's
``window_to_uint8`` (the function inference uses), so a model trained on them sees what it will see in use.
Every export is all-or-nothing: files are written into a temporary folder inside OUTDIR, moved into place,
and ``dataset.json`` is replaced atomically last; on any error nothing new remains in OUTDIR.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
from PIL import Image

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.geometry import CANONICAL_ORIENTATION, Geometry, Reorientation
from FemurUNetLib.fileio import atomic_write
from FemurUNetLib.preprocess import window_to_uint8
from FemurUNetLib.volume_io import read_label_image, read_volume

from .manifest import (CASE_PATTERN, IMAGE_DIR, LABEL_DIR, MANIFEST_NAME, new_manifest, read_manifest,  # noqa: F401
                       put_back, set_aside, slice_name, window_dict)
from .options import EMPTY_FRACTION

VOLUME_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def case_name_from_path(path) -> str:
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip("._-")
    return name or "case"


def _choose_slices(mask_c: np.ndarray, empty_fraction: float, seed: int):
    has_label = mask_c.reshape(mask_c.shape[0], -1).any(axis=1)
    positive = np.flatnonzero(has_label)
    empty = np.flatnonzero(~has_label)
    n_negative = int(round(empty_fraction * len(empty)))
    negative = np.sort(np.random.default_rng(seed).choice(empty, n_negative, replace=False)) if n_negative else empty[:0]
    return positive, negative


def _save_png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(pixels), mode="L").save(path, compress_level=3)


def _checked_arrays(ct, label, case, empty_fraction, negative: bool) -> tuple:
    """(ct, label) as arrays after checking the case name, shapes, fraction and that the label fits ``negative``."""
    if not isinstance(case, str) or not CASE_PATTERN.match(case):
        raise FemurUNetError(f"case name {case!r}: use letters, digits, '.', '_' or '-' (starting with a letter or digit)")
    ct, label = np.asarray(ct), np.asarray(label)
    if ct.ndim != 3:
        raise FemurUNetError(f"{case}: expected a 3-D CT, got an array of shape {ct.shape}")
    if label.shape != ct.shape:
        raise FemurUNetError(f"{case}: label shape {label.shape} differs from the CT shape {ct.shape}")
    if not 0.0 <= float(empty_fraction) <= 1.0:
        raise FemurUNetError(f"empty fraction must be within [0, 1], got {empty_fraction}")
    if np.any(label != 0) == negative:
        raise FemurUNetError(f"{case}: a negative case must have an empty label" if negative else
                             f"{case}: the label is empty (no femur voxels); nothing to export "
                             f"(a scan without femur is exported with --negative)")
    return ct, label


def _manifest_for(outdir: Path, win: dict, case: str, replace: bool = False) -> dict:
    """The folder's manifest (a new one for a new folder), checked to accept ``case`` with window ``win``."""
    manifest = read_manifest(outdir) if outdir.is_dir() else None
    if manifest is None:
        manifest = new_manifest(win)
    elif manifest["window"] != win:
        raise FemurUNetError(f"{outdir / MANIFEST_NAME}: window center {win['center']:g} / width {win['width']:g} "
                             f"disagrees with the dataset's center {manifest['window']['center']:g} / "
                             f"width {manifest['window']['width']:g}")
    if manifest.get("orientation") != CANONICAL_ORIENTATION:
        raise FemurUNetError(f"{outdir / MANIFEST_NAME}: orientation {manifest.get('orientation')!r} is not "
                             f"{CANONICAL_ORIENTATION}")
    if case in manifest["cases"] and not replace:
        raise FemurUNetError(f"{outdir / MANIFEST_NAME}: case {case!r} is already in this dataset; choose another "
                             "--case, or --replace it")
    return manifest


def export_arrays(ct, label, geometry: Optional[Geometry], outdir, case: str, *, window=None,
                  empty_fraction: float = EMPTY_FRACTION, seed: int = 0, source: Optional[dict] = None,
                  negative: bool = False, replace: bool = False) -> dict:
    """Export one case (numpy (k, j, i) HU + same-shape label, nonzero = femur) into OUTDIR.

    Writes ``image/<case>_<k:04d>.png`` (8-bit window) and ``label/<case>_<k:04d>.png`` (0/255) for every
    canonical axial slice k holding label, plus ``round(empty_fraction * label-free slices)`` label-free
    slices drawn with ``seed``; adds the case to ``dataset.json``. Touches nothing outside OUTDIR.
    ``negative``: the scan holds no femur (e.g. a chest CT); its label must be empty and only the label-free
    slices are exported (``empty_fraction`` of them), to teach the network what is not femur.
    ``replace``: a case of that name already in the dataset is replaced (its old slices go); without it, an error.
    All or nothing: on any error the dataset is as it was. Returns a summary dict: case, slices, positive,
    negative, slice_shape, spacing, outdir.
    """
    ct, label = _checked_arrays(ct, label, case, empty_fraction, negative)
    geometry = geometry or Geometry()
    win = window_dict(window)
    reorient = Reorientation.for_geometry(geometry)
    ct_c, mask_c = reorient.to_canonical(ct), reorient.to_canonical(label != 0)
    positive, negative = _choose_slices(mask_c, float(empty_fraction), seed)
    chosen = np.union1d(positive, negative)
    outdir = Path(outdir)
    manifest = _manifest_for(outdir, win, case, replace)
    old = [slice_name(case, int(k)) for k in manifest["cases"].get(case, {}).get("slices", [])]
    names = [slice_name(case, int(k)) for k in chosen]
    clashes = [n for n in names if n not in old and ((outdir / IMAGE_DIR / n).exists() or (outdir / LABEL_DIR / n).exists())]
    if clashes:
        raise FemurUNetError(f"{outdir}: {len(clashes)} slice file(s) already exist, e.g. {clashes[0]}")
    entry = {"slices": [int(k) for k in chosen], "positive": int(len(positive)), "negative": int(len(negative)),
             "slice_shape": [int(s) for s in ct_c.shape[1:]], "volume_shape": [int(s) for s in ct_c.shape],
             "spacing": [float(s) for s in reorient.canonical_spacing(geometry)],
             "empty_fraction": float(empty_fraction), "seed": int(seed), "source": source or {}}
    def pair(k):    # one slice at a time: never the whole volume as PNG pixels in memory
        return window_to_uint8(ct_c[k], win["center"], win["width"]), mask_c[k].astype(np.uint8) * 255

    _write_case(outdir, manifest, case, entry, [(name, int(k)) for k, name in zip(chosen, names)], pair, old)
    return {"case": case, "slices": len(chosen), "positive": len(positive), "negative": len(negative),
            "slice_shape": entry["slice_shape"], "spacing": entry["spacing"], "outdir": str(outdir)}


def _write_case(outdir: Path, manifest: dict, case: str, entry: dict, slices: list, pair, old: list) -> None:
    """Write the case's PNG pairs (``slices``: (file name, k), ``pair(k)``: image and mask pixels) and its manifest
    entry, all or nothing; ``old``: the replaced case's slice files, set aside first and put back on failure."""
    created, moved, kept, staging = [], [], [], None     # what this export made or set aside
    try:
        for folder in (outdir, outdir / IMAGE_DIR, outdir / LABEL_DIR):
            if not folder.exists():
                folder.mkdir(parents=folder == outdir)
                created.append(folder)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=outdir))
        for sub in (IMAGE_DIR, LABEL_DIR, "old"):
            (staging / sub).mkdir()
        for name, k in slices:
            image, mask = pair(k)
            _save_png(staging / IMAGE_DIR / name, image)
            _save_png(staging / LABEL_DIR / name, mask)
        kept = set_aside(outdir, old, staging / "old")
        for name, _ in slices:
            for sub in (IMAGE_DIR, LABEL_DIR):
                os.replace(staging / sub / name, outdir / sub / name)
                moved.append(outdir / sub / name)
        manifest["cases"][case] = entry
        text = json.dumps(manifest, indent=1)
        atomic_write(outdir / MANIFEST_NAME, lambda tmp: Path(tmp).write_text(text))
    except BaseException as exc:
        for path in moved:
            path.unlink(missing_ok=True)
        put_back(kept)                         # the replaced case comes back as it was
        for folder in reversed(created):       # folders made here hold only this export's files
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, OSError):           # disk full, file too large, read-only folder: one line
            raise FemurUNetError(f"{outdir}: cannot write: {exc.strerror or exc}; nothing was added") from None
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


# --- reading labels from files ----------------------------------------------------------------------

def _segment_table(image: sitk.Image) -> list:
    """Slicer .seg.nrrd segments: [{"index", "name", "value", "layer"}] from the Segment{n}_* header keys."""
    keys = set(image.GetMetaDataKeys())
    table, n = [], 0
    while f"Segment{n}_Name" in keys or f"Segment{n}_LabelValue" in keys:
        get = lambda field, default: image.GetMetaData(f"Segment{n}_{field}") if f"Segment{n}_{field}" in keys else default
        try:
            table.append({"index": n, "name": get("Name", f"Segment_{n}"), "value": int(get("LabelValue", "1")),
                          "layer": int(get("Layer", "0"))})
        except ValueError:
            raise FemurUNetError(f"segment {n}: unreadable LabelValue/Layer in the .seg.nrrd header") from None
        n += 1
    return table


def parse_list(text, kind=str) -> Optional[list]:
    """'1,2' / ['1', 2] / None -> [kind, ...] or None."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    out = [kind(str(t).strip()) if isinstance(t, str) else kind(t) for t in items if str(t).strip() != ""]
    return out or None


def read_label_mask(path, labels=None, segments=None):
    """(mask bool (k, j, i), Geometry, description dict) from a labelmap or a Slicer .seg.nrrd."""
    path = Path(path)
    if not path.is_file():
        raise FemurUNetError(f"{path}: no such label file")
    try:
        labels = parse_list(labels, int)
    except ValueError:
        raise FemurUNetError(f"labels must be integers like 1,2; got {labels!r}") from None
    segments = parse_list(segments, str)
    image = read_label_image(path)
    geometry = Geometry.from_sitk(image)
    array = sitk.GetArrayFromImage(image)            # (k, j, i) or (k, j, i, layer)
    layers = image.GetNumberOfComponentsPerPixel()
    table = _segment_table(image) if path.name.lower().endswith(".seg.nrrd") else []
    description = {"label_file": str(path)}

    if table:
        chosen = table
        if segments:
            by_name = {s["name"].lower(): s for s in table}
            unknown = [s for s in segments if s.lower() not in by_name]
            if unknown:
                raise FemurUNetError(f"{path}: no segment named {', '.join(map(repr, unknown))} "
                                     f"(segments: {', '.join(s['name'] for s in table)})")
            chosen = [by_name[s.lower()] for s in segments]
        if labels:
            chosen = [s for s in chosen if s["value"] in labels]
            if not chosen:
                raise FemurUNetError(f"{path}: no segment has label value {labels}")
        mask = np.zeros(array.shape[:3], dtype=bool)
        for seg in chosen:
            if seg["layer"] >= layers:
                raise FemurUNetError(f"{path}: segment {seg['name']!r} is on layer {seg['layer']} but the file "
                                     f"holds {layers} layer(s)")
            plane = array[..., seg["layer"]] if layers > 1 else array
            mask |= plane == seg["value"]
        description["segments"] = [s["name"] for s in chosen]
        return mask, geometry, description

    if segments:
        raise FemurUNetError(f"{path}: --segments needs a Slicer .seg.nrrd with named segments; "
                             f"this is a plain labelmap (use --labels)")
    if layers != 1:
        raise FemurUNetError(f"{path}: expected a scalar labelmap, got {layers} components per voxel")
    if labels:
        mask = np.isin(array, labels)
        description["labels"] = labels
    else:
        mask = array != 0
    return mask, geometry, description


def align_label(mask: np.ndarray, label_geometry: Geometry, ct_shape, ct_geometry: Geometry, *,
                resample: bool = False, label_path="label") -> np.ndarray:
    """(mask on the CT grid, how: "same" | "pasted" | "resampled").

    Same grid: as is. Same voxel lattice but another extent (e.g. a cropped .seg.nrrd): pasted exactly.
    Anything else: an error, or nearest-neighbour resampling when ``resample``.
    """
    ct_shape = tuple(ct_shape)
    if mask.shape == ct_shape and label_geometry == ct_geometry:
        return mask, "same"
    same_axes = (np.allclose(label_geometry.spacing, ct_geometry.spacing, rtol=1e-5, atol=1e-6)
                 and np.allclose(label_geometry.direction, ct_geometry.direction, atol=1e-6))
    if same_axes:
        to_index = np.linalg.inv(ct_geometry.direction @ np.diag(ct_geometry.spacing))
        offset_ijk = to_index @ (np.asarray(label_geometry.origin) - np.asarray(ct_geometry.origin))
        if np.allclose(offset_ijk, np.round(offset_ijk), atol=1e-3):
            offset = np.round(offset_ijk[::-1]).astype(int)          # (k, j, i)
            lo = np.maximum(offset, 0)
            hi = np.minimum(offset + mask.shape, ct_shape)
            inside = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offset))
            kept = int(mask[inside].sum()) if np.all(hi > lo) else 0
            if kept != int(mask.sum()) and not resample:
                raise FemurUNetError(f"{label_path}: {int(mask.sum()) - kept} label voxels lie outside the CT volume")
            out = np.zeros(ct_shape, dtype=bool)
            if np.all(hi > lo):
                out[tuple(slice(a, b) for a, b in zip(lo, hi))] = mask[inside]
            return out, "pasted"
    if not resample:
        raise FemurUNetError(
            f"{label_path}: label grid (size {mask.shape[::-1]}, spacing {_fmt(label_geometry.spacing)}, origin "
            f"{_fmt(label_geometry.origin)}) differs from the CT grid (size {ct_shape[::-1]}, spacing "
            f"{_fmt(ct_geometry.spacing)}, origin {_fmt(ct_geometry.origin)}); pass --resample-label to resample it "
            f"onto the CT grid with nearest neighbour")
    moving = sitk.GetImageFromArray(mask.astype(np.uint8))
    label_geometry.apply_to_sitk(moving)
    reference = sitk.Image([int(s) for s in ct_shape[::-1]], sitk.sitkUInt8)
    ct_geometry.apply_to_sitk(reference)
    resampled = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resampled) != 0, "resampled"


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def export_files(ct_path, label_path, outdir, case=None, labels=None, segments=None,
                 empty_fraction: float = EMPTY_FRACTION, resample_label: bool = False, window=None, seed: int = 0,
                 negative: bool = False, replace: bool = False) -> dict:
    """Export a CT file/DICOM folder + a labelmap or .seg.nrrd (segments chosen by name) into OUTDIR."""
    ct, ct_geometry = read_volume(ct_path)
    mask, label_geometry, description = read_label_mask(label_path, labels=labels, segments=segments)
    mask, placement = align_label(mask, label_geometry, ct.shape, ct_geometry, resample=resample_label,
                                  label_path=label_path)
    if mask.any() == negative:
        raise FemurUNetError(f"{label_path}: --negative needs an empty label, this one has femur voxels" if negative
                             else f"{label_path}: the label is empty on the CT grid (no femur voxels); nothing to "
                                  f"export (a scan without femur is exported with --negative)")
    case = case or case_name_from_path(ct_path)
    source = {"ct": str(ct_path), "label": str(label_path), **{k: v for k, v in description.items() if k != "label_file"},
              "label_placement": placement}
    return export_arrays(ct, mask, ct_geometry, outdir, case, window=window, empty_fraction=empty_fraction,
                         seed=seed, source=source, negative=negative, replace=replace)
