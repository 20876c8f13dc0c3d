"""``femurunet train-phantoms``: training on phantom v2 cases generated while the network trains (a GPU machine
with many cores; ``FemurUNetTrainLib.phantom_stream``)."""
from __future__ import annotations

from .. import phantom_stream


def run_train_phantoms(args) -> int:
    phantom_stream.summary(phantom_stream.stream_train(args))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train-phantoms", help="fine-tune a model on phantoms made while it trains (GPU)",
                              description=phantom_stream.__doc__.split("\n\n")[0])
    phantom_stream.add_arguments(p)
    p.set_defaults(func=run_train_phantoms)
