"""File helpers shared by every writer: atomic replacement of an output file, and all-or-nothing groups of outputs.

A result is written to a hidden temporary file beside it (``.NAME.XXXXXXXX.partial<suffix>``: the writer
libraries choose the format by the suffix), flushed to disk, checked, and only then renamed over ``NAME``. So a
failed or killed write never leaves a half-written file under the final name and never touches a previous one.
Any failure is one :class:`FemurUNetError` naming the output and the reason (disk full, file too large, read-only
folder, ...). While it is written the temporary file is locked; a later write of the same output removes the
unlocked leftovers of killed writers (SIGKILL cannot be cleaned up after), never another live writer's file.
"""
from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import threading
from pathlib import Path

from .errors import FemurUNetError

try:
    import fcntl
except ImportError:   # Windows: no leftover detection, everything else works
    fcntl = None

PARTIAL = ".partial"
_group = threading.local()


class WriteFailed(Exception):
    """Raised by a write or check function: the temporary file is unusable (the reason is the message)."""


def atomic_write(path, write_fn, suffix: str = "", check=None) -> Path:
    """Call ``write_fn(tmp_path)`` on a temporary file beside ``path``, ``check(tmp_path)``, then rename it into place.

    Inside :func:`atomic_outputs` the rename waits until every output of the group is written and checked.
    """
    path = Path(path)
    staged = _stage(path, write_fn, suffix, check)
    pending = getattr(_group, "pending", None)
    if pending is not None:
        pending.append(staged)
    else:
        _commit([staged])
    return path


@contextlib.contextmanager
def atomic_outputs():
    """Outputs written by :func:`atomic_write` inside the block appear together at its end, or none of them."""
    if getattr(_group, "pending", None) is not None:   # nested: the outer group decides
        yield
        return
    _group.pending = pending = []
    try:
        yield
    except BaseException:
        _group.pending = None
        for tmp, _, fd, _ in pending:
            _discard(tmp, fd)
        raise
    _group.pending = None
    _commit(pending)


def _stage(path: Path, write_fn, suffix: str, check) -> tuple:
    """(tmp, path, lock fd, suffix): ``path``'s content written, flushed and checked in a locked temporary file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL + suffix, dir=path.parent)
    except OSError as exc:
        raise FemurUNetError(failure_message(path, exc)) from None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; the result should be an ordinary file
        write_fn(tmp)
        _flush(tmp)
        if check is not None:
            check(tmp)
    except BaseException as exc:
        _discard(tmp, fd)
        if isinstance(exc, (OSError, WriteFailed)):
            raise FemurUNetError(failure_message(path, exc)) from None
        raise
    return tmp, path, fd, suffix


def failure_message(path, exc) -> str:
    """One line: the output, why it could not be written, and what became of a previous file of that name."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    kept = "the existing file is unchanged" if Path(path).is_file() else "nothing was written"
    return f"{path}: cannot write: {reason}; {kept}"


def _flush(tmp: str) -> None:
    """fsync the written file: a full disk can show only here, and the rename must not land before the data."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(staged: list) -> None:
    try:
        for i, (tmp, path, fd, suffix) in enumerate(staged):
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise FemurUNetError(failure_message(path, exc)) from None
            os.close(fd)
            staged[i] = (None, path, None, suffix)
            _remove_leftovers(path, suffix)
    finally:
        for tmp, _, fd, _ in staged:
            if tmp is not None:
                _discard(tmp, fd)


def _discard(tmp, fd) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    with contextlib.suppress(OSError, TypeError):
        os.close(fd)


def _remove_leftovers(path: Path, suffix: str) -> None:
    """Delete temporary files of earlier writes of ``path`` that nobody holds locked (their writer was killed)."""
    if fcntl is None:
        return
    pattern = os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*{PARTIAL}{glob.escape(suffix)}")
    for name in glob.glob(pattern):
        try:
            fd = os.open(name, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue   # a live writer
        else:
            with contextlib.suppress(OSError):
                os.unlink(name)
        finally:
            os.close(fd)
