"""``femurunet import-keras``: the seed's Keras .hdf5/.h5/.keras U-Net to a FemurUNet .pt."""
from __future__ import annotations

from pathlib import Path

from FemurUNetLib.keras_import import default_output_path, import_keras
from FemurUNetLib.model import ARCHITECTURE
from FemurUNetLib.modelfile import save_model
from FemurUNetLib.defaults import DEFAULT_WINDOW

from .common import window_args


def run_import_keras(args) -> int:
    out = Path(args.output) if args.output else default_output_path(args.model)
    model = import_keras(args.model, window=window_args(args.window), threshold=args.threshold)
    save_model(model, out)
    meta = model.metadata
    params = sum(p.numel() for p in model.parameters())
    print(f"{out}: {ARCHITECTURE} base_filters={meta['base_filters']} in_channels={meta['in_channels']} "
          f"({params:,} parameters) from {meta['training']['layout']} '{args.model}'; "
          f"window {meta['window']['center']:g}/{meta['window']['width']:g} HU, threshold {meta['threshold']:g}, "
          f"input {meta['input_size']}x{meta['input_size']}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("import-keras", help="convert the seed's Keras .hdf5/.h5 U-Net to a FemurUNet .pt",
                              description="Convert a seed-style Keras U-Net (Keras 2 full-model checkpoint or "
                                          "weights file, Keras 3 .h5 or .keras) to a FemurUNet model file. "
                                          "Needs no TensorFlow; optimizer slots are dropped.")
    p.add_argument("model", metavar="MODEL.hdf5", help="Keras model or weights file")
    p.add_argument("output", metavar="OUT.pt", nargs="?", help="output model file (default: MODEL with .pt)")
    center, width = DEFAULT_WINDOW
    p.add_argument("--window", nargs="+", metavar="CENTER,WIDTH",
                   help=f"HU window the Keras model was trained with (default {center:g},{width:g})")
    p.add_argument("--threshold", type=float, metavar="T", help="probability threshold to record (default 0.5)")
    p.set_defaults(func=run_import_keras)
