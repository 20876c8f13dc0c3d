#!/usr/bin/env bash
# Training/validation data of the demo model v3: phantom v2 (real bone shapes, CT-like tissue, scanner physics,
# every coverage) seeds 20000-20089 (train) and 20090-20097 (validation), exported with 30 % of the label-free
# slices; scans without femur (abdomen, chest) are exported as negatives. README's evaluation uses seeds
# 90000-90039, never seen in training. Usage: make_demo_data.sh WORKDIR [JOBS]   (JOBS phantoms at a time, default 2)
set -euo pipefail
WORK=${1:?usage: make_demo_data.sh WORKDIR [JOBS]}
JOBS=${2:-2}
mkdir -p "$WORK/phantoms"
seq 20000 20097 | xargs -P "$JOBS" -I{} sh -c \
  '[ -f "$0/phantoms/phantom{}_femur.nii.gz" ] || femurunet sample "$0/phantoms" --cases 1 --seed {} --phantom 2' "$WORK"
python3 - "$WORK" <<'PY'
import sys
from pathlib import Path

import numpy as np
from FemurUNetLib.volume_io import read_volume
from FemurUNetTrainLib.export import export_files

work = Path(sys.argv[1])
for seed in range(20000, 20098):
    ct, label = (work / "phantoms" / f"phantom{seed}_{kind}.nii.gz" for kind in ("ct", "femur"))
    negative = not np.any(read_volume(label)[0])
    dest = work / ("val" if seed >= 20090 else "train")
    s = export_files(ct, label, dest, case=f"phantom{seed}", empty_fraction=0.3, seed=seed, negative=negative)
    print(f"{s['case']}: {s['positive']} slices with femur, {s['negative']} without", flush=True)
PY
