"""The ``femurunet`` command: one module per subcommand, each with ``register(subparsers)``.

It lives in the training package, the top of the import graph (it may import the engine and the training;
the engine imports neither)."""
from __future__ import annotations

import argparse
import sys

from FemurUNetLib.errors import FemurUNetError

from . import benchmark, evaluate, export, import_keras, sample, segment, train

COMMANDS = (segment, evaluate, sample, export, train, import_keras, benchmark)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="femurunet", description="Femur segmentation in CT with a 2D U-Net.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FemurUNetError as exc:
        print(f"femurunet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"femurunet {args.command}: interrupted", file=sys.stderr)
        return 130
