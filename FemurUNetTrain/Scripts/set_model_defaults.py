"""Set a model's inference defaults in its metadata (the weights are kept bit for bit).

Usage: python FemurUNetTrain/Scripts/set_model_defaults.py MODEL.pt OUT.pt [--min-field MM] [--smooth-z MM]

--min-field: slices with a smaller field are padded with air to it before the resize (``min_field_mm``);
--smooth-z: each slice's probabilities averaged with its neighbours' along the slice axis (``smooth_z_mm``).
The shipped demo model's 300 mm (session 23) and 3 mm (session 43) were chosen on phantom seeds
(docs/MODEL_HISTORY.md); ``femurunet segment --min-field / --smooth-z`` override them per run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from FemurUNetLib.defaults import MODEL_SETTINGS_MM
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.modelfile import load_model, save_model
from FemurUNetLib.segment_options import field_mm, sigma_mm

FLAGS = {"min_field": "min_field_mm", "smooth_z": "smooth_z_mm"}     # option -> metadata key


def set_model_defaults(model_path, out_path, **settings) -> Path:
    """``settings``: metadata keys (``min_field_mm``, ``smooth_z_mm``) and their values; checked by save_model."""
    return save_model(load_model(model_path), out_path, **settings)


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="set_model_defaults.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--min-field", type=field_mm, metavar="MM")
    parser.add_argument("--smooth-z", type=sigma_mm, metavar="MM")
    args = parser.parse_args(argv[1:])
    settings = {key: getattr(args, name) for name, key in FLAGS.items() if getattr(args, name) is not None}
    if not settings:
        parser.error("name at least one of --min-field, --smooth-z")
    try:
        out = set_model_defaults(args.model, args.out, **settings)
    except FemurUNetError as exc:
        print(f"set_model_defaults: {exc}", file=sys.stderr)
        return 1
    for key, value in settings.items():
        print(f"{out}: {MODEL_SETTINGS_MM[key][1]} {value:g} mm")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
