"""Argument spellings shared by several subcommands."""
from __future__ import annotations

import sys

from FemurUNetLib.errors import FemurUNetError


def window_arg(text):
    """``--window CENTER,WIDTH`` (HU) -> (center, width), None when not given."""
    if text is None:
        return None
    try:
        center, width = (float(v) for v in text.split(","))
    except ValueError:
        raise FemurUNetError(f"--window {text!r}: expected CENTER,WIDTH in HU, e.g. 400,2000") from None
    return (center, width)


def window_args(values):
    """``--window CENTER,WIDTH``, or the older ``--window CENTER WIDTH`` of import-keras (still read, with a note)."""
    if values is None:
        return None
    if len(values) == 2:
        print("note: --window C W is deprecated; write --window C,W", file=sys.stderr)
        return window_arg(",".join(values))
    if len(values) != 1:
        raise FemurUNetError(f"--window {' '.join(values)}: expected CENTER,WIDTH in HU, e.g. 400,2000")
    return window_arg(values[0])
