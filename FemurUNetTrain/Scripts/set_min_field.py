"""Set a model's minimum field of view (``min_field_mm`` in its metadata; the weights are kept bit for bit).

Usage: python FemurUNetTrain/Scripts/set_min_field.py MODEL.pt MM OUT.pt

Slices with a smaller field are padded with air to it before the resize (``segment_volume``'s ``min_field_mm``).
The shipped demo model's 300 mm were chosen on phantom validation seeds (docs/MODEL_HISTORY.md, session 23).
"""
from __future__ import annotations

import sys
from pathlib import Path

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.modelfile import load_model, save_model


def set_min_field(model_path, field_mm: float, out_path) -> Path:
    return save_model(load_model(model_path), out_path, min_field_mm=float(field_mm))   # checked by save_model


def main(argv) -> int:
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        out = set_min_field(argv[1], float(argv[2]), argv[3])
    except (FemurUNetError, ValueError) as exc:
        print(f"set_min_field: {exc}", file=sys.stderr)
        return 1
    print(f"{out}: minimum field of view {float(argv[2]):g} mm")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
