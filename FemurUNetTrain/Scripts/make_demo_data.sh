#!/usr/bin/env bash
# Training/validation data of the demo model: phantoms seeds 1000-1039 (train) and 1040-1043 (validation).
# Evaluation uses seeds 9000-9009, never seen in training. Usage: make_demo_data.sh WORKDIR
set -euo pipefail
WORK=${1:?usage: make_demo_data.sh WORKDIR}
femurunet sample "$WORK/phantoms" --cases 44 --seed 1000 > /dev/null
for seed in $(seq 1000 1043); do
  dest="$WORK/train"; [ "$seed" -ge 1040 ] && dest="$WORK/val"
  femurunet export "$WORK/phantoms/phantom${seed}_ct.nii.gz" "$WORK/phantoms/phantom${seed}_femur.nii.gz" "$dest" \
    --case "phantom${seed}" --empty-fraction 1.0 --seed "$seed"
done
