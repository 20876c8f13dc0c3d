"""The ``femurunet`` command: one module per subcommand, each with ``register(subparsers)``.

It lives in the training package, the top of the import graph (it may import the engine and the training;
the engine imports neither)."""
from __future__ import annotations

import argparse
import sys

from FemurUNetLib.errors import FemurUNetError

from . import benchmark, evaluate, export, import_keras, sample, segment, segment_folder, train, train_phantoms
from .common import OneLineParser, TerminalLine
from .messages import add_verbose_argument, library_messages

COMMANDS = (segment, segment_folder, evaluate, sample, export, train, train_phantoms, import_keras, benchmark)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="femurunet", description="Femur segmentation in CT with a 2D U-Net.")
    parser.add_argument("--version", action="version", version=f"femurunet {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(sub)
    add_verbose_argument(parser)
    for command_parser in sub.choices.values():
        add_verbose_argument(command_parser, default=argparse.SUPPRESS)
    return parser


def version() -> str:
    """The installed distribution's version (the source tree's when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version as installed
    try:
        return installed("femurunet")
    except PackageNotFoundError:
        from FemurUNetLib import __version__
        return __version__


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with library_messages(args.verbose):
            return int(args.func(args) or 0)
    except FemurUNetError as exc:
        TerminalLine.close(sys.stderr)
        print(f"femurunet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:                  # a file system failure outside the writers' own checks: still one line
        TerminalLine.close(sys.stderr)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"femurunet {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        TerminalLine.close(sys.stderr)      # not on the progress bar's line
        print(f"femurunet {args.command}: interrupted", file=sys.stderr)
        return 130
