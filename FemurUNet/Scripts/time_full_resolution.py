"""Time a full-resolution CT (512 x 512 x 300 int16 NIfTI, phantom v2 seed 4242) through `femurunet segment` with a
seed-width (base 64, untrained) model, default precision and int8 (docs/BENCHMARKS.md).

usage: python FemurUNet/Scripts/time_full_resolution.py WORKDIR
"""
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from FemurUNetLib import UNet2D
from FemurUNetLib.modelfile import model_metadata, save_model
from FemurUNetLib.volume_io import write_image
from FemurUNetLib.phantom2 import generate_case

work = Path(sys.argv[1])
work.mkdir(parents=True, exist_ok=True)
case = generate_case(4242, coverage="hip_to_knee", shape=(300, 512, 512))
write_image(work / "ct.nii.gz", case.ct.astype(np.int16), case.geometry)
torch.manual_seed(0)
net = UNet2D(base_filters=64)
net.metadata = model_metadata(net)
save_model(net, work / "b64.pt")
for precision in ("auto", "int8"):
    t = time.perf_counter()
    command = ["femurunet", "segment", str(work / "ct.nii.gz"), str(work / f"out_{precision}.seg.nrrd"),
               "--model", str(work / "b64.pt"), "--precision", precision, "--quiet", "--keep-all-pieces"]
    r = subprocess.run(command, capture_output=True, text=True)
    report = (r.stdout.strip().splitlines() or [""])[-1] if r.returncode == 0 else r.stderr.strip()[-300:]
    print(f"{precision}: {time.perf_counter() - t:.1f} s wall (exit {r.returncode}): {report}", flush=True)
