"""Check that a written image file is complete: every byte its own header describes is there.

ITK and VTK writers ignore failed writes: on a full disk or past the file size limit (``RLIMIT_FSIZE``) they
leave a truncated file and report success. :func:`check_image_file` reads the file back at the byte level
(NIfTI ``.nii``/``.nii.gz``, attached NRRD incl. ``.seg.nrrd`` raw or gzip, MetaImage ``.mha`` raw or zlib) and
raises :class:`~FemurUNetLib.fileio.WriteFailed` when the data is short or a compressed stream does not end
with its checksum. :func:`sitk_writer` is the write function for :func:`~FemurUNetLib.fileio.atomic_write`.
"""
from __future__ import annotations

import contextlib
import os
import struct
import sys
import threading
import zlib

import numpy as np

from .fileio import WriteFailed

CHUNK = 1 << 20
INCOMPLETE = "the file came out incomplete (disk full or file size limit reached?)"
NRRD_TYPES = {"signed char": 1, "int8": 1, "int8_t": 1, "uchar": 1, "unsigned char": 1, "uint8": 1, "uint8_t": 1,
              "short": 2, "int16": 2, "int16_t": 2, "ushort": 2, "unsigned short": 2, "uint16": 2, "uint16_t": 2,
              "int": 4, "int32": 4, "int32_t": 4, "uint": 4, "unsigned int": 4, "uint32": 4, "uint32_t": 4,
              "long long": 8, "int64": 8, "int64_t": 8, "unsigned long long": 8, "uint64": 8, "uint64_t": 8,
              "float": 4, "double": 8}
MET_TYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
             "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def sitk_writer(image):
    """``write_fn`` for atomic_write: SimpleITK writes ``image`` compressed, then the file is checked.

    What the native writer prints on file descriptor 2 (e.g. NIfTI's "NWAD: wrote only 4096 of 32768 bytes") is
    held back: on failure the one-line error replaces it, on success it is passed on."""
    import SimpleITK as sitk

    def write(tmp):
        with _native_stderr() as printed:
            try:
                sitk.WriteImage(image, str(tmp), True)
                failure = None
            except RuntimeError as exc:
                failure = exc
        if failure is not None:
            lines = [line.strip() for line in str(failure).splitlines() if line.strip()]
            raise WriteFailed(lines[-1][:160] if lines else "the image writer failed")
        check_image_file(tmp)
        if printed:
            sys.stderr.write(b"".join(printed).decode("utf8", "replace"))
    return write


@contextlib.contextmanager
def _native_stderr():
    """Collect what native code writes to file descriptor 2 meanwhile, through a pipe (a full disk cannot stop it)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_end, write_end = os.pipe()
    except (OSError, ValueError, AttributeError):
        yield []
        return
    printed = []
    drain = threading.Thread(target=lambda: printed.extend(iter(lambda: os.read(read_end, 65536), b"")), daemon=True)
    drain.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield printed
    finally:
        os.dup2(saved, 2)      # the pipe's last write end closes: the drain reads to its end
        os.close(saved)
        drain.join()
        os.close(read_end)


def check_image_file(path) -> None:
    """Raise WriteFailed unless ``path`` (.nii/.nii.gz/.nrrd/.seg.nrrd/.mha) holds all the data its header declares."""
    name = str(path).lower()
    with open(path, "rb") as f:
        if name.endswith(".nii.gz"):
            head, length = _inflated(_chunks(f), 31)
            _check_nifti(head, length)
        elif name.endswith(".nii"):
            _check_nifti(f.read(540), os.fstat(f.fileno()).st_size)
        elif name.endswith(".nrrd"):
            fields, payload = _header(f, b"\n\n", ":")
            if "data file" in fields or "datafile" in fields:
                raise WriteFailed("a detached NRRD data file is not supported")
            encoding = fields.get("encoding", "raw")
            _check_payload(payload, _count(fields.get("sizes", ""), NRRD_TYPES.get(fields.get("type", ""), 0)),
                           31 if encoding in ("gzip", "gz") else None)
        elif name.endswith(".mha"):
            fields, payload = _header(f, b"ElementDataFile = LOCAL\n", "=")
            element = MET_TYPES.get(fields.get("elementtype", ""), 0) * int(fields.get("elementnumberofchannels", "1"))
            compressed = fields.get("compresseddata", "False").lower() == "true"
            _check_payload(payload, _count(fields.get("dimsize", ""), element), 15 if compressed else None)


def _chunks(f, first: bytes = b""):
    if first:
        yield first
    yield from iter(lambda: f.read(CHUNK), b"")


def _inflated(chunks, wbits: int) -> tuple:
    """(first 540 bytes, length) of a zlib (wbits 15) or gzip (31) stream; WriteFailed unless it ends with its checksum."""
    inflater, head, length = zlib.decompressobj(wbits), b"", 0
    try:
        for chunk in chunks:
            while chunk and not inflater.eof:
                out = inflater.decompress(chunk, CHUNK)   # bounded: a run of zeros inflates a thousandfold
                head += out[:max(540 - len(head), 0)]
                length += len(out)
                chunk = inflater.unconsumed_tail
            if inflater.eof:
                break
    except zlib.error:   # a gzip trailer with the wrong CRC or length, or damaged data
        raise WriteFailed(INCOMPLETE) from None
    if not inflater.eof:
        raise WriteFailed(INCOMPLETE)
    return head, length


def _check_nifti(head: bytes, length: int) -> None:
    if len(head) < 348:
        raise WriteFailed(INCOMPLETE)
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348:   # NIfTI-1: dim int16[8] at 40, bitpix at 72, vox_offset float32 at 108
            dims, bitpix = struct.unpack(endian + "8h", head[40:56]), struct.unpack(endian + "h", head[72:74])[0]
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            break
        if size == 540 and len(head) >= 540:   # NIfTI-2: bitpix at 14, dim int64[8] at 16, vox_offset int64 at 168
            dims, bitpix = struct.unpack(endian + "8q", head[16:80]), struct.unpack(endian + "h", head[14:16])[0]
            offset = struct.unpack(endian + "q", head[168:176])[0]
            break
    else:
        raise WriteFailed(INCOMPLETE)
    if not 1 <= dims[0] <= 7:
        raise WriteFailed(INCOMPLETE)
    if length != offset + int(np.prod([max(d, 1) for d in dims[1:dims[0] + 1]], dtype=np.int64)) * bitpix // 8:
        raise WriteFailed(INCOMPLETE)


def _header(f, end: bytes, sep: str) -> tuple:
    """(fields {lowercase key: value}, payload chunks) of a NRRD (``key: value``) or MetaImage (``Key = value``)."""
    first = f.read(1 << 16)
    stop = first.find(end)
    if stop < 0:
        raise WriteFailed(INCOMPLETE)
    stop += len(end)
    fields = {}
    for line in first[:stop].decode("latin-1").splitlines():
        key, found, value = line.partition(sep)
        if found and not line.startswith("#"):
            fields[key.strip().lower()] = value.strip()
    return fields, _chunks(f, first[stop:])


def _count(sizes: str, element: int):
    """Bytes of data for the header's sizes and element size (None: an element type this check does not know)."""
    try:
        return int(np.prod([int(s) for s in sizes.split()], dtype=np.int64)) * element if element and sizes else None
    except ValueError:
        raise WriteFailed(INCOMPLETE) from None


def _check_payload(chunks, expected, wbits) -> None:
    length = _inflated(chunks, wbits)[1] if wbits else sum(len(c) for c in chunks)
    if expected is not None and length != expected:
        raise WriteFailed(INCOMPLETE)
