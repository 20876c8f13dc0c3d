"""What several subcommands share: argument types and spellings, the one-line error parser, the terminal line."""
from __future__ import annotations

import argparse
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
