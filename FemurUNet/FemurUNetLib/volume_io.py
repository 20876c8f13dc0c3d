"""Read CT volumes (NIfTI, NRRD, MHA, DICOM folders) and write labelmaps / Slicer .seg.nrrd files atomically."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .defaults import BONE_COLOR
from .errors import FemurUNetError
from .dicom_series import read_series
from .fileio import atomic_write
from .outputcheck import sitk_writer
from .geometry import Geometry
from .library_output import native_failure, native_stderr
from .volume_check import check_image_file

MIN_SPACING, MAX_SPACING, MAX_ORIGIN = 1e-4, 1e3, 1e7   # mm: a CT's voxels and position, generously
LABELMAP_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")   # .mhd: its data file cannot be swapped atomically
FEMUR_CODE = "SCT^71341001^Femur"
PROVENANCE_KEY = "FemurUNet_Provenance"   # a header key of .nrrd/.seg.nrrd/.mha outputs: JSON
SIDE_CODES = {"left": "SCT^7771000^Left", "right": "SCT^24028007^Right"}


def terminology_string(side=None) -> str:
    """Slicer terminology entry for the femur (DICOM master list), with an optional Left/Right modifier."""
    modifier = SIDE_CODES.get(side, "^^")
    return ("Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure~"
            f"{FEMUR_CODE}~{modifier}~Anatomic codes - DICOM master list~^^~^^")


def _native(path, what: str, read, check_output: bool = True):
    """``read()`` with native stderr captured (see library_output); Python warnings re-issued after, since
    they would otherwise be written into the capture; an ITK failure becomes one line naming the file."""
    failure = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with native_stderr() as captured:
            try:
                image = read()
            except RuntimeError as exc:
                failure = exc
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if failure is not None:
        raise FemurUNetError(f"{path}: cannot read {what} ({captured.reason() or _reason(failure)})")
    reported = native_failure(captured.text) if check_output else ""
    if reported:
        raise FemurUNetError(f"{path}: cannot read {what} (the reader reported: {reported})")
    return image


def _read_file(path: Path, what: str) -> sitk.Image:
    """One image file, checked for truncation first (see volume_check)."""
    check_image_file(path)

    def read():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        return reader.Execute()
    return _native(path, what, read)


def _read_image(path: Path, series_uid=None) -> sitk.Image:
    if not path.exists():
        raise FemurUNetError(f"{path}: no such file or folder")
    if path.is_dir():
        image = _native(path, "the DICOM series", lambda: read_series(path, series_uid), check_output=False)
    elif series_uid is not None:
        raise FemurUNetError(f"{path}: a series UID picks a series in a DICOM folder; this is a file")
    else:
        image = _read_file(path, "as an image")
    return _check_image(image, path, "volume")


def _reason(exc: Exception) -> str:
    lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
    return (lines[-1] if lines else "unreadable")[:160]


def _check_image(image: sitk.Image, path, what: str) -> sitk.Image:
    """A 3-D image with a usable grid: finite positive spacing, finite origin, orthonormal directions."""
    if image.GetDimension() != 3:
        raise FemurUNetError(f"{path}: expected a 3-D {what}, got {image.GetDimension()}-D")
    spacing, origin = np.array(image.GetSpacing()), np.array(image.GetOrigin())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if not (np.isfinite(spacing).all() and (spacing >= MIN_SPACING).all() and (spacing <= MAX_SPACING).all()):
        raise FemurUNetError(f"{path}: voxel spacing {tuple(float(s) for s in spacing)} mm is not three numbers "
                             f"from {MIN_SPACING} to {MAX_SPACING} mm (damaged header?)")
    if not (np.isfinite(origin).all() and np.isfinite(direction).all() and (np.abs(origin) <= MAX_ORIGIN).all()):
        raise FemurUNetError(f"{path}: origin {tuple(float(o) for o in origin)} or direction is not finite or "
                             f"beyond {MAX_ORIGIN:g} mm (damaged header?)")
    if not np.allclose(direction @ direction.T, np.eye(3), atol=1e-4):
        raise FemurUNetError(f"{path}: direction matrix is not orthonormal")
    if min(image.GetSize()) < 1:
        raise FemurUNetError(f"{path}: empty image (size {image.GetSize()})")
    return image


def read_label_image(path) -> sitk.Image:
    """A 3-D label file (labelmap or .seg.nrrd, possibly multi-layer) as a SimpleITK image."""
    path = Path(path)
    if not path.is_file():
        raise FemurUNetError(f"{path}: no such file")
    return _check_image(_read_file(path, "as a label image"), path, "label volume")


def read_volume(path, series_uid=None) -> tuple:
    """(array (k, j, i), Geometry) from an image file or a folder holding one DICOM series.

    Damaged input is refused with one line naming the file (truncated data, broken compression, a missing
    data file, damaged/duplicated/missing DICOM slices, several series without ``series_uid``, non-finite
    voxels or geometry); usable oddities (slightly uneven DICOM spacing) raise a ``FemurUNetWarning``."""
    image = _read_image(Path(path), series_uid)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise FemurUNetError(f"{path}: expected a scalar (grey-level) volume, got "
                             f"{image.GetNumberOfComponentsPerPixel()} components per voxel")
    array = sitk.GetArrayFromImage(image)
    if array.dtype.kind not in "iuf":
        raise FemurUNetError(f"{path}: voxel type {array.dtype} is not a grey-level number type")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise FemurUNetError(f"{path}: {int((~np.isfinite(array)).sum())} voxels are NaN or infinite")
    return array, Geometry.from_sitk(image)


def _image(array: np.ndarray, geometry: Geometry, provenance: Optional[dict] = None) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    geometry.apply_to_sitk(image)
    if provenance:
        image.SetMetaData(PROVENANCE_KEY, json.dumps(provenance, sort_keys=True, separators=(",", ":")))
    return image


def output_kind(path) -> str:
    name = str(path).lower()
    if name.endswith(".mhd"):
        raise FemurUNetError(f"{path}: a .mhd header and its data file cannot be replaced together safely; write .mha")
    for suffix in LABELMAP_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise FemurUNetError(f"{path}: unsupported output type (use one of {', '.join(LABELMAP_SUFFIXES)})")


def write_image(path, array: np.ndarray, geometry: Geometry, provenance: Optional[dict] = None) -> Path:
    suffix = output_kind(path)
    return atomic_write(path, sitk_writer(_image(array, geometry, provenance)), suffix)


def write_labelmap(path, labelmap: np.ndarray, geometry: Geometry, labels=None,
                   provenance: Optional[dict] = None) -> Path:
    """``.nii.gz``/``.nrrd``/``.mha`` labelmap, or a Slicer ``.seg.nrrd`` when the name ends so. ``provenance``
    (``inference.provenance``) goes into the header of a .nrrd, .seg.nrrd or .mha file (NIfTI has no place for it)."""
    if output_kind(path) == ".seg.nrrd":
        return write_seg_nrrd(path, labelmap, geometry, labels, provenance)
    return write_image(path, labelmap.astype(np.uint8, copy=False), geometry, provenance)


def read_provenance(path) -> Optional[dict]:
    """The provenance FemurUNet wrote into a labelmap file's header (None if it has none)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise FemurUNetError(f"{path}: not a readable image file") from None
    if not reader.HasMetaDataKey(PROVENANCE_KEY):
        return None
    return json.loads(reader.GetMetaData(PROVENANCE_KEY))


def write_seg_nrrd(path, labelmap: np.ndarray, geometry: Geometry, labels, provenance: Optional[dict] = None) -> Path:
    """A single-layer Slicer segmentation: one segment per label record, full reference extent."""
    image = _image(labelmap.astype(np.uint8, copy=False), geometry, provenance)
    nk, nj, ni = labelmap.shape
    extent = f"0 {ni - 1} 0 {nj - 1} 0 {nk - 1}"
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    for n, label in enumerate(labels or [{"value": 1, "name": "Femur"}]):
        color = label.get("color", BONE_COLOR)
        for key, value in (("ID", f"Segment_{label['value']}"), ("Name", label["name"]), ("NameAutoGenerated", "0"),
                           ("Color", " ".join(f"{c:.6g}" for c in color)), ("ColorAutoGenerated", "0"),
                           ("LabelValue", str(label["value"])), ("Layer", "0"), ("Extent", extent),
                           ("Tags", f"TerminologyEntry:{terminology_string(label.get('side'))}|")):
            image.SetMetaData(f"Segment{n}_{key}", value)
    return atomic_write(path, sitk_writer(image), ".seg.nrrd")
