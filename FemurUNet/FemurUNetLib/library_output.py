"""Where the native libraries' own messages go (ITK/GDCM/MetaIO warnings, VTK's output window).

ITK, GDCM and MetaIO print straight to the process's stderr (file descriptor 2), around Python. A command-line
tool whose errors are one line must keep them off the terminal: ``set_verbose(False)`` turns off the ITK (and,
when already loaded, VTK) warning display, and ``native_stderr()`` captures file descriptor 2 while a native
reader runs, so its text can explain a failure (and is replayed when verbose). The default (verbose) leaves
everything as the libraries do it, as a host such as Slicer expects.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

_state = {"verbose": True}


def set_verbose(verbose: bool) -> None:
    """Show (True) or silence (False) the native libraries' warnings for the rest of the process."""
    import SimpleITK as sitk

    _state["verbose"] = bool(verbose)
    sitk.ProcessObject.SetGlobalWarningDisplay(bool(verbose))
    vtk = sys.modules.get("vtkmodules.vtkCommonCore") or sys.modules.get("vtk")
    if vtk is not None and hasattr(vtk, "vtkObject"):
        vtk.vtkObject.SetGlobalWarningDisplay(int(bool(verbose)))


def is_verbose() -> bool:
    return _state["verbose"]


class Captured:
    text = ""

    def reason(self) -> str:
        """The most telling line the native code printed ('' if none): its last line that is not a location."""
        lines = [l.strip() for l in self.text.splitlines() if l.strip() and not l.startswith("WARNING: In ")]
        return lines[-1][:160] if lines else ""


@contextlib.contextmanager
def native_stderr():
    """Capture what native code writes to file descriptor 2 while the block runs; replayed when verbose."""
    captured = Captured()
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError):
        pass
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf8", "replace")
            if _state["verbose"] and captured.text:
                os.write(2, captured.text.encode("utf8", "replace"))


def native_failure(text: str) -> str:
    """The first line in which a native reader reports a failure it did not raise ('' if none); MetaIO, for
    one, prints "Uncompress failed" and returns a half-filled image."""
    for line in text.splitlines():
        if not line.startswith("WARNING") and re.search(r"\b(fail(ed|s)?|error|not read completely)\b", line, re.I):
            return line.strip()[:160]
    return ""


@contextlib.contextmanager
def kept_locale():
    """GDCM's DICOM writer sets the C locale to "C" and leaves it so (Python's default file encoding becomes
    ASCII afterwards); restore the caller's locale around DICOM work."""
    import locale

    saved = locale.setlocale(locale.LC_ALL, None)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)
