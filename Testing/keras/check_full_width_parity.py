"""Opt-in full-width (base 64) parity check against REAL Keras outputs (benchmark-style script, not a test).

1. Once, with TensorFlow in a separate venv (see make_keras_fixtures.py):
   TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python Testing/keras/make_keras_fixtures.py --full-width DIR
   (writes keras2_b64_full.hdf5 ~373 MB with Adam slots, keras2_b64_weights.h5 and keras2_b64.npz).
2. Then, without TensorFlow:  python3 Testing/keras/check_full_width_parity.py DIR
Prints the max abs differences and exits 1 if any exceeds 1e-5 (probabilities).
"""
import sys
from pathlib import Path

import numpy as np
import torch

from FemurUNetLib import count_parameters
from FemurUNetLib.keras_import import import_keras

TOLERANCE = 1e-5


def run_nhwc(model, inputs_nhwc):
    captured = {}
    hook = model.dec[3].register_forward_hook(lambda module, args, out: captured.update(features=out.clone()))
    with torch.no_grad():
        probs = model(torch.from_numpy(inputs_nhwc).permute(0, 3, 1, 2))
    hook.remove()
    return probs.permute(0, 2, 3, 1).numpy(), captured["features"].permute(0, 2, 3, 1).numpy()


def main(folder) -> int:
    folder = Path(folder)
    ref = np.load(folder / "keras2_b64.npz")
    ok = True
    for name in ("keras2_b64_full.hdf5", "keras2_b64_weights.h5"):
        model = import_keras(folder / name)
        assert model.base_filters == 64 and count_parameters(model) == 31_030_593
        probs, features = run_nhwc(model, ref["inputs"])
        d_prob = float(np.abs(probs - ref["outputs"]).max())
        d_feat = float(np.abs(features - ref["features"]).max())
        print(f"{name}: max |prob diff| {d_prob:.2e}, max |feature diff| {d_feat:.2e}")
        ok &= d_prob <= TOLERANCE
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
