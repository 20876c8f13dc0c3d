"""What several subcommands share: argument types and spellings, the one-line error parser, the terminal line."""
from __future__ import annotations

import argparse
import math
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


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors ("femurunet segment: error: ...; see --help"), exit 2, like FemurUNetError's."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def probability(text: str) -> float:
    """A threshold strictly between 0 and 1."""
    value = _number(text, float)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1 (exclusive)")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number of at least 1")
    return value


def _number(text: str, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


class TerminalLine:
    """Whether a progress bar left the terminal's last line open (no newline yet): a message then starts a new line."""
    open = False

    @classmethod
    def write(cls, stream, text: str) -> None:
        stream.write(text)
        stream.flush()
        cls.open = not text.endswith("\n")

    @classmethod
    def close(cls, stream) -> None:
        if cls.open:
            stream.write("\n")
            cls.open = False
