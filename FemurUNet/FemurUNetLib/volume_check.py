"""Is an image file whole? Compare the voxel bytes its header promises with the bytes the file really holds.

SimpleITK fills the missing part of a truncated NIfTI with zeros and reads on, and its NRRD/MetaImage errors
name the wrong cause ("No such file or directory"), so these checks run before it: NIfTI-1/2 (``.nii``,
``.nii.gz``), NRRD (attached or detached, raw or gzip) and MetaImage (``.mha``/``.mhd`` with a ``.raw`` or
compressed data file). Raw data costs one ``stat``; gzip/zlib data one streaming decompression that keeps no
voxels. A check only refuses what it is sure of (data shorter than the header promises, a broken compressed
stream, a missing data file); a header it cannot follow is left to SimpleITK, which refuses or reads it.
"""
from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

from .errors import FemurUNetError

CHUNK = 1 << 20
MAX_OUT = 1 << 24


class _Unknown(Exception):
    """The header uses something this check does not follow: leave the file to SimpleITK."""


def _product(values) -> int:
    total = 1
    for v in values:
        total *= int(v)
    return total


def _inflate(path, f, wbits: int, expected: int, offset: int = 0) -> int:
    """Decompressed byte count of the (possibly multi-member) stream in ``f`` from ``offset`` (nothing kept)."""
    f.seek(offset)
    d, total, data = zlib.decompressobj(wbits), 0, b""
    while True:
        if not data:
            data = f.read(CHUNK)
            if not data:
                break
        try:
            total += len(d.decompress(data, MAX_OUT))
        except zlib.error as exc:
            raise FemurUNetError(f"{path}: compressed data is corrupt ({exc})") from None
        data = d.unconsumed_tail
        if d.eof:
            data = d.unused_data or f.read(CHUNK)
            while data and not data.strip(b"\0"):          # zero padding after the last member
                data = f.read(CHUNK)
            if not data:
                return total
            d = zlib.decompressobj(wbits)                 # a further gzip member
        if total > expected + MAX_OUT:
            return total
    if not d.eof and total < expected:
        raise FemurUNetError(f"{path}: file is truncated (the compressed stream ends after {total} of "
                             f"{expected} bytes)")
    if not d.eof:
        raise FemurUNetError(f"{path}: compressed stream is truncated (no end marker)")
    return total


def _label(path: Path, data_path: Path) -> str:
    """How an error names the file: the header, and the data file when it is a separate one."""
    return str(path) if data_path == path else f"{path} (data file {data_path.name})"


def _compare(path, have: int, expected: int, what: str = "voxel data") -> None:
    if have < expected:
        raise FemurUNetError(f"{path}: file is truncated or damaged: the header promises {expected} bytes of "
                             f"{what}, the file holds {max(have, 0)}")


# ---------------------------------------------------------------- NIfTI

def _nifti_layout(path, head: bytes) -> tuple:
    """(bytes of voxel data, voxel offset) from a NIfTI-1 or NIfTI-2 header."""
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0] if len(head) >= 4 else 0
        if size == 348 and len(head) >= 348:
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix = struct.unpack(order + "h", head[72:74])[0]
            offset = struct.unpack(order + "f", head[108:112])[0]
            break
        if size == 540 and len(head) >= 540:
            bitpix = struct.unpack(order + "h", head[14:16])[0]
            dims = struct.unpack(order + "8q", head[16:80])
            offset = struct.unpack(order + "q", head[168:176])[0]
            break
    else:
        if len(head) < 348:
            raise FemurUNetError(f"{path}: file is truncated ({len(head)} bytes, shorter than a NIfTI header)")
        raise _Unknown()
    if not 1 <= dims[0] <= 7 or min(dims[1:dims[0] + 1]) < 1 or bitpix <= 0 or bitpix % 8 or not offset >= 0:
        raise FemurUNetError(f"{path}: NIfTI header is corrupt (dim {list(dims)}, bitpix {bitpix}, "
                             f"vox_offset {offset})")
    return _product(dims[1:dims[0] + 1]) * (bitpix // 8), max(int(offset), 348 if size == 348 else 540)


def check_nifti(path: Path, gz: bool) -> None:
    with open(path, "rb") as f:
        if not gz:
            expected, offset = _nifti_layout(path, f.read(540))
            _compare(path, path.stat().st_size - offset, expected)
            return
        d = zlib.decompressobj(31)
        try:
            head = d.decompress(f.read(CHUNK), 540)
        except zlib.error as exc:
            raise FemurUNetError(f"{path}: cannot read as an image (not a gzip file: {exc})") from None
        expected, offset = _nifti_layout(path, head)
        _compare(path, _inflate(path, f, 31, expected + offset) - offset, expected)


# ---------------------------------------------------------------- NRRD

NRRD_TYPES = {1: ("signed char", "int8", "int8_t", "char", "uchar", "unsigned char", "uint8", "uint8_t"),
              2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                  "unsigned short", "unsigned short int", "uint16", "uint16_t"),
              4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
              8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
                  "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
                  "double")}


def _text_header(path, f, first: bytes, stop, may_end_at_eof: str = "") -> tuple:
    """({key: value}, byte offset after the header) of a line-based header; ``stop(fields, line)`` ends it,
    and so does the end of the file once the field ``may_end_at_eof`` is read (a detached NRRD header)."""
    fields, offset = {}, 0
    f.seek(0)
    for number, line in enumerate(iter(lambda: f.readline(65536), b"")):
        offset += len(line)
        if number > 4096 or len(line) == 65536:
            raise _Unknown()
        text = line.decode("latin-1").rstrip("\r\n")
        if number == 0 and not text.startswith(first.decode()):
            raise _Unknown()
        if stop(fields, text):
            return fields, offset
    if may_end_at_eof and may_end_at_eof in fields:
        return fields, offset
    raise FemurUNetError(f"{path}: file is truncated (the header has no end)")


def _nrrd_stop(fields: dict, text: str) -> bool:
    if text == "":
        return True
    if ":" in text and not text.startswith("#"):
        key, _, value = text.partition(":")
        fields[key.strip().lower().replace(" ", "")] = value.lstrip("=").strip()
    return False


def check_nrrd(path: Path) -> None:
    with open(path, "rb") as f:
        fields, offset = _text_header(path, f, b"NRRD", _nrrd_stop, "datafile")
    typesize = next((n for n, names in NRRD_TYPES.items() if fields.get("type", "").lower() in names), None)
    try:
        sizes = [int(s) for s in fields["sizes"].split()]
    except (KeyError, ValueError):
        raise _Unknown() from None
    encoding = fields.get("encoding", "").lower()
    if typesize is None or min(sizes, default=0) < 1 or encoding not in ("raw", "gzip", "gz"):
        raise _Unknown()
    data_file = fields.get("datafile")
    if data_file is not None:
        if " " in data_file or data_file.upper().startswith("LIST") or "%" in data_file:
            raise _Unknown()
        data_path, offset = path.parent / data_file, 0
        if not data_path.is_file():
            raise FemurUNetError(f"{path}: data file {data_path} (named in the header) not found")
    else:
        data_path = path
    skip = int(fields.get("byteskip", "0") or 0)
    if int(fields.get("lineskip", "0") or 0) or skip < 0 or (skip and encoding != "raw"):
        raise _Unknown()
    expected, label = _product(sizes) * typesize, _label(path, data_path)
    if encoding == "raw":
        _compare(label, data_path.stat().st_size - offset - skip, expected)
        return
    with open(data_path, "rb") as f:
        _compare(label, _inflate(label, f, 47, expected, offset), expected)


# ---------------------------------------------------------------- MetaImage

MET_SIZES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
             "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
             "MET_DOUBLE": 8}


def _meta_stop(fields: dict, text: str) -> bool:
    key, sep, value = text.partition("=")
    if sep:
        fields[key.strip().lower()] = value.strip()
    return bool(sep) and key.strip().lower() == "elementdatafile"


def _check_meta_direction(path, fields: dict, ndims: int) -> None:
    """A direction matrix must hold direction cosines: ITK 5.4 hangs on a TransformMatrix entry of 1e308."""
    for key in ("transformmatrix", "rotation", "orientation"):
        if key in fields:
            try:
                values = [float(v) for v in fields[key].split()]
            except ValueError:
                values = [math.nan]
            if len(values) != ndims * ndims or not all(abs(v) <= 1.01 for v in values):
                raise FemurUNetError(f"{path}: MetaImage header is corrupt ({key} {fields[key][:60]!r} is not a "
                                     f"{ndims}x{ndims} direction matrix)")


def check_metaimage(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(64)
        if b"=" not in head:
            raise _Unknown()
        fields, offset = _text_header(path, f, b"", _meta_stop)
    try:
        dims = [int(v) for v in fields["dimsize"].split()]
        typesize = MET_SIZES[fields["elementtype"].upper()] * int(fields.get("elementnumberofchannels", "1"))
    except (KeyError, ValueError):
        raise _Unknown() from None
    _check_meta_direction(path, fields, len(dims))
    data_file, header_size = fields["elementdatafile"], int(fields.get("headersize", "0") or 0)
    if min(dims, default=0) < 1 or header_size < 0 or " " in data_file or data_file.upper() == "LIST":
        raise _Unknown()
    if data_file.upper() == "LOCAL":
        data_path = path
    else:
        data_path, offset = path.parent / data_file, header_size
        if not data_path.is_file():
            raise FemurUNetError(f"{path}: data file {data_path} (named in the header) not found")
    expected, label = _product(dims) * typesize, _label(path, data_path)
    if fields.get("compresseddata", "false").lower() != "true":
        _compare(label, data_path.stat().st_size - offset, expected)
        return
    stored = int(fields.get("compresseddatasize", "-1") or -1)
    if stored >= 0 and stored != data_path.stat().st_size - offset:
        raise FemurUNetError(f"{label}: file is truncated or damaged: CompressedDataSize is {stored} bytes, the "
                             f"file holds {data_path.stat().st_size - offset}")
    with open(data_path, "rb") as f:
        _compare(label, _inflate(label, f, 47, expected, offset), expected)


def check_image_file(path) -> None:
    """Raise FemurUNetError if the file is visibly truncated or damaged; silent for formats it does not know."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(".nii") or name.endswith(".nii.gz"):
            check_nifti(path, name.endswith(".gz"))
        elif name.endswith(".nrrd") or name.endswith(".nhdr"):
            check_nrrd(path)
        elif name.endswith(".mha") or name.endswith(".mhd"):
            check_metaimage(path)
    except (_Unknown, KeyError, ValueError, OverflowError, struct.error):
        return   # a header field this check cannot follow: SimpleITK decides
    except OSError as exc:
        raise FemurUNetError(f"{path}: cannot read ({exc.strerror or exc})") from None
