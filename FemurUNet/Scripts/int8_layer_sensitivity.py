"""How much each U-Net block adds to int8's label disagreement with fp32 (docs/BENCHMARKS.md, int8 section).

Quantizes the demo model as ``--precision int8`` does (torchao PT2E, the fixed calibration), once with the
shipped float blocks and once more with each other block kept float too, and runs the converted model eagerly
(no compile: the same quantize/dequantize numerics) on 96 slices of four held-out phantom v2 cases.

usage: python FemurUNet/Scripts/int8_layer_sensitivity.py [BLOCK ...]   (BLOCKs: more blocks kept float)
"""
import sys
import warnings

import torch

from FemurUNetLib import quantize
from FemurUNetLib.phantom2 import generate_case
from FemurUNetLib.preprocess import to_model_input, window_hu
from FemurUNetLib.resolve import resolve_model

CASES = ((90001, "pelvis"), (90002, "hip_to_knee"), (90003, "whole_leg"), (90004, "abdomen_to_thigh"))
BLOCKS = ("enc.1", "enc.2", "enc.3", "enc.4", "up.0", "up.1", "up.2", "up.3", "dec.0", "dec.1", "dec.2")


def phantom_slices(window, size) -> torch.Tensor:
    slices = []
    for seed, coverage in CASES:
        ct = generate_case(seed, coverage=coverage, shape=(24, 384, 384)).ct
        slices.append(to_model_input(window_hu(torch.from_numpy(ct.astype("float32")), *window), size))
    return torch.cat(slices)


def main(extra) -> None:
    warnings.filterwarnings("ignore")
    net = resolve_model(None).eval()
    window = (float(net.metadata["window"]["center"]), float(net.metadata["window"]["width"]))
    size = int(net.metadata["input_size"])
    x = phantom_slices(window, size)
    with torch.no_grad():
        ref = torch.cat([net(b) for b in x.split(24)]) > 0.5
        base = list(quantize.FLOAT_MODULES) + list(extra)
        for block in [None] + [b for b in BLOCKS if b not in base]:
            model = quantize.convert_int8(net, window, size, base + ([block] if block else []))
            labels = torch.cat([model(b) for b in x.split(24)]) > 0.5
            dice = 2 * (ref & labels).sum().item() / (ref.sum() + labels.sum()).item()
            print(f"float: {' '.join(base)}{' + ' + block if block else ''}: Dice vs fp32 {dice:.5f}, "
                  f"{int((ref ^ labels).sum())} pixels differ", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
