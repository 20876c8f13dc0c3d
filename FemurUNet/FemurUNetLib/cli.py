"""``femurunet`` command: each subcommand lives in the module that owns the work (``register_cli``)."""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import FemurUNetError

SUBCOMMAND_MODULES = (
    "FemurUNetLib.cli_segment",      # segment
    "FemurUNetLib.evaluate",         # evaluate
    "FemurUNetLib.phantom",          # sample
    "FemurUNetTrainLib.cli",         # export, train
    "FemurUNetLib.keras_import",     # import-keras
    "FemurUNetLib.benchmark",        # benchmark
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="femurunet", description="Femur segmentation in CT with a 2D U-Net.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
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


if __name__ == "__main__":
    sys.exit(main())
