"""What reaches the terminal besides a command's own output: one line per warning, library chatter only on
``--verbose`` (issue 15 item 7: an error is exactly one line, not an ITK warning block and then the error)."""
from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

from FemurUNetLib.errors import FemurUNetWarning
from FemurUNetLib.library_output import set_verbose

OUR_PACKAGES = tuple(str(Path(p).resolve().parents[1]) for p in
                     (__import__("FemurUNetLib").__file__, __file__))


def add_verbose_argument(parser, default=False) -> None:
    """On the top-level parser and (default suppressed, so either place works) on each command's."""
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="also show the libraries' own warnings (ITK, GDCM, VTK, torch); default: hidden")


def _ours(category, filename: str) -> bool:
    return issubclass(category, FemurUNetWarning) or str(Path(filename).resolve()).startswith(OUR_PACKAGES)


def print_warnings(lines) -> None:
    """The plausibility check's warnings, one ``warning: ...`` line each on stderr (the result is still written and
    the exit code stays 0)."""
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


@contextlib.contextmanager
def library_messages(verbose: bool):
    """Native library warnings off (unless verbose); Python warnings as one ``warning: ...`` line each --
    FemurUNet's always, other libraries' only when verbose."""
    def show(message, category, filename, lineno, file=None, line=None):
        if verbose or _ours(category, filename):
            text = " ".join(str(message).split())
            print(f"warning: {text}", file=sys.stderr)

    set_verbose(verbose)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.simplefilter("always", FemurUNetWarning)
            warnings.showwarning = show
            yield
    finally:
        set_verbose(True)
