"""One DICOM series from a folder, checked the way a careful reader would before trusting its geometry.

- No series: refused. Several series: refused with their UIDs listed, unless the caller names one
  (``series_uid``) -- picking "the largest" silently could segment the wrong scan.
- A DICOM file (``DICM`` magic or a .dcm/.dicom/.ima name) that no series holds and that cannot be read: refused (a damaged slice would
  otherwise vanish from the series unnoticed).
- Two slices at one position: refused (duplicated slices).
- Slice gaps that vary by more than half the smallest gap (missing slices, or a variable-spacing scan), or
  any slice more than half a mean gap away from its place on the regular grid: refused, because the volume
  is written on a regular grid and the slices past the gap would land in the wrong voxels. Smaller
  unevenness (over 1 %) keeps each slice within its own voxel: read with the mean spacing (as ITK does) and
  reported with a warning.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import FemurUNetError, FemurUNetWarning
from .library_output import kept_locale

POSITION, ORIENTATION = "0020|0032", "0020|0037"
MISSING_RATIO = 1.5      # largest gap / smallest gap above this: missing slices or variable spacing
UNEVEN_RATIO = 1.01      # above this (and not refused): a warning


DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def _dicom_files(folder: Path) -> list:
    """Files that claim to be DICOM: the ``DICM`` magic, or a DICOM name (an emptied slice has no magic)."""
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file() and entry.name.upper() != "DICOMDIR":
            with open(entry.path, "rb") as f:
                if f.read(132)[128:] == b"DICM" or entry.name.lower().endswith(DICOM_SUFFIXES):
                    found.append(Path(entry.path))
    return found


def _check_no_damaged_files(folder: Path, series_files: list) -> None:
    members = {Path(f).resolve() for f in series_files}
    for path in _dicom_files(folder):
        if path.resolve() in members:
            continue
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise FemurUNetError(f"{folder}: {path.name} is a damaged DICOM file (unreadable, truncated?); "
                                 f"the series would be incomplete") from None


def series_files(folder, series_uid=None) -> list:
    """The file names of the one series in ``folder`` (or of ``series_uid``), sorted by GDCM."""
    folder = Path(folder)
    reader = sitk.ImageSeriesReader()
    ids = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not ids:
        _check_no_damaged_files(folder, [])
        raise FemurUNetError(f"{folder}: folder holds no DICOM series")
    if series_uid is None and len(ids) > 1:
        listing = "; ".join(f"{uid} ({len(reader.GetGDCMSeriesFileNames(str(folder), uid))} files)" for uid in ids)
        raise FemurUNetError(f"{folder}: folder holds {len(ids)} DICOM series ({listing}); choose one with "
                             f"--series UID or give each series its own folder")
    if series_uid is not None and series_uid not in ids:
        raise FemurUNetError(f"{folder}: no DICOM series {series_uid} here (found: {', '.join(ids)})")
    files = list(reader.GetGDCMSeriesFileNames(str(folder), series_uid or ids[0]))
    if len(ids) == 1:
        _check_no_damaged_files(folder, files)
    return files


def _vector(text: str, n: int):
    try:
        values = np.array([float(v) for v in text.split("\\")])
    except ValueError:
        return None
    return values if values.shape == (n,) and np.isfinite(values).all() else None


def check_slice_positions(folder, files: list, positions: list, orientation: str) -> None:
    """Refuse duplicated / missing slices, warn about slightly uneven spacing (see the module text)."""
    if len(files) < 2:
        return
    cosines = _vector(orientation or "", 6)
    points = [_vector(p or "", 3) for p in positions]
    if cosines is None or any(p is None for p in points):
        warnings.warn(f"{folder}: slices carry no usable position/orientation; slice order and spacing "
                      f"are not verified", FemurUNetWarning, stacklevel=3)
        return
    normal = np.cross(cosines[:3], cosines[3:])
    gaps = np.diff([float(np.dot(p, normal)) for p in points])
    names = [Path(f).name for f in files]
    if np.abs(gaps).max() < 1e-6:
        raise FemurUNetError(f"{folder}: all {len(files)} slices lie at one position (duplicated slices)")
    tiny = np.abs(gaps) < 1e-3 * np.abs(gaps).max()
    if tiny.any():
        i = int(np.argmax(tiny))
        raise FemurUNetError(f"{folder}: duplicated slices: {names[i]} and {names[i + 1]} lie at the same "
                             f"position")
    if (gaps > 0).any() and (gaps < 0).any():
        raise FemurUNetError(f"{folder}: slices are not ordered along the slice axis (mixed stacks?)")
    size = np.abs(gaps)
    along = np.concatenate([[0.0], np.cumsum(size)])
    off_grid = np.abs(along - np.arange(len(along)) * size.mean()).max()   # mm from the regular grid
    if size.max() > MISSING_RATIO * size.min() or off_grid > 0.5 * size.mean():
        i = int(np.argmax(size))
        raise FemurUNetError(f"{folder}: slice spacing varies from {size.min():.3g} to {size.max():.3g} mm "
                             f"(gap between {names[i]} and {names[i + 1]}): missing slices or a variable-spacing "
                             f"scan; resample it to even spacing first")
    if size.max() > UNEVEN_RATIO * size.min():
        warnings.warn(f"{folder}: uneven slice spacing ({size.min():.3g} to {size.max():.3g} mm); read with the "
                      f"mean spacing {size.mean():.3g} mm (no slice more than {off_grid:.2g} mm from its place)",
                      FemurUNetWarning, stacklevel=3)


def read_series(folder, series_uid=None) -> sitk.Image:
    with kept_locale():
        files = series_files(folder, series_uid)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        reader.MetaDataDictionaryArrayUpdateOn()
        image = reader.Execute()

    def tag(i, key):
        return reader.GetMetaData(i, key) if reader.HasMetaDataKey(i, key) else ""

    check_slice_positions(folder, files, [tag(i, POSITION) for i in range(len(files))], tag(0, ORIENTATION))
    return image
