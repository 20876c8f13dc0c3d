#!/usr/bin/env bash
# Reproduce the shipped demo model FemurUNet/FemurUNetLib/models/femurunet_demo_b16.pt.
#
# Bit-for-bit on: torch 2.13.0+cpu, 1 thread (faster than 2 on a shared 2-core machine), an x86-64 CPU with AVX512-BF16 (oneDNN picks kernels by ISA and
# the bf16 autocast path depends on it); other CPUs give a model of the same quality, not the same bits.
# Data: phantoms seeds 1000-1039 (train) and 1040-1043 (validation); README's evaluation uses 9000-9009.
# Recipe: the seed's (1 - Dice, Adam, ImageDataGenerator augmentation, ModelCheckpoint on the monitored loss)
# with documented overrides for a 2-core CPU: base_filters 16, Adam lr 1e-3 halved when the validation loss
# stalls for 2 epochs (plateau schedule, floor 1e-5), batch 8, 50 steps per epoch, bf16 autocast.
# 25 epochs x 50 steps x 8 = 10,000 samples (the seed: 300 x 100 x 20 = 600,000). The shipped file comes from a
# run started with --epochs 60 and stopped after epoch 25 (the time budget); the plateau schedule depends only on
# past epochs, so that run and this --epochs 25 run give bit-identical weights (checked for the first 2 epochs).
# Phantoms: FemurUNetLib/phantom.py as of commit 3054bb4 (a changed phantom generator gives other data).
# Usage: train_demo_model.sh [WORKDIR] [extra train options]   (default out/demo; ~35 min on a shared 2-core CPU)
set -euo pipefail
WORK=${1:-out/demo}
HERE=$(cd "$(dirname "$0")" && pwd)
[ -f "$WORK/train/dataset.json" ] && [ -f "$WORK/val/dataset.json" ] || "$HERE/make_demo_data.sh" "$WORK"
femurunet train "$WORK/train" --val "$WORK/val" --out "$WORK/femurunet_demo_b16.pt" \
  --base-filters 16 --input-size 256 --epochs 25 --steps-per-epoch 50 --batch-size 8 \
  --lr 1e-3 --lr-schedule plateau --lr-patience 2 --lr-factor 0.5 --min-lr 1e-5 \
  --amp bf16 --seed 1 --threads 1 "${@:2}"
