"""Blend two models of one architecture: every weight w x TUNED + (1 - w) x START (WiSE-FT, Wortsman et al. 2022).

Usage: python FemurUNetTrain/Scripts/blend_models.py W TUNED.pt START.pt OUT.pt

The result keeps TUNED's metadata (its training record) and adds ``blend`` naming both files and the weight.
The shipped demo model is such a blend (train_demo_model.sh, stage 6).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.modelfile import load_model, save_model


def blend(weight: float, tuned_path, start_path, out_path) -> Path:
    if not 0.0 <= weight <= 1.0:
        raise FemurUNetError(f"blend weight must lie in 0..1, got {weight}")
    tuned, start = load_model(tuned_path), load_model(start_path)
    a, b = tuned.state_dict(), start.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise FemurUNetError(f"{start_path}: not the same network as {tuned_path} (layers or widths differ)")
    with torch.no_grad():
        tuned.load_state_dict({k: (weight * a[k].double() + (1.0 - weight) * b[k].double()).to(a[k].dtype)
                               if a[k].is_floating_point() else a[k] for k in a})
    return save_model(tuned, out_path,         # save_model keeps the model's own metadata
                      blend={"weight": weight, "tuned": Path(tuned_path).name, "start": Path(start_path).name})


def main(argv) -> int:
    if len(argv) != 5:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        out = blend(float(argv[1]), argv[2], argv[3], argv[4])
    except (FemurUNetError, ValueError) as exc:
        print(f"blend_models: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
