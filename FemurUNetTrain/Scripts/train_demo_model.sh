#!/usr/bin/env bash
# Reproduce the shipped demo model v3, FemurUNet/FemurUNetLib/models/femurunet_demo_b16.pt.
#
# Data (make_demo_data.sh): phantom v2 (real bone shapes, CT-like tissue and scanner physics, every coverage),
# seeds 20000-20089 (train) and 20090-20097 (validation), exported twice: with 30 % of the label-free slices
# (train/, val/) and with all of them (train_all/, val_all/). README's evaluation uses other seeds and the real
# CTs, none of them used for training; the real CTs were not used to choose anything.
# Stage 1 fine-tunes the demo model v2 (git 11a7126, trained on the analytic hip phantom) with the seed's
# augmentation plus the opt-in intensity randomisation (--intensity-augment), 1 - Dice + 10 x BCE, Adam lr 3e-4
# with a 2-epoch warm-up and cosine decay, 40 epochs of 75 steps of batch 8, bf16 autocast (33 min here).
# Stage 2 continues on all label-free slices (56 % of the slices: spine, ribs, arms, shin bones, vessels) at
# lr 1.5e-4, because stage 1 labelled shin bones in held-out leg phantoms (25 epochs).
# Stage 3 (session 7) adds 40 hard cases (knee to ankle, whole leg, chest, hip to knee; all their slices) to stage
# 2's data and continues at lr 1e-4 for 20 epochs: the shin and arm bones stage 2 still labelled (52 min here,
# under other load; ~20 min on a quiet 2-core machine).
# Stage 4 (session 9) adds 48 more hard cases (whole leg, knee to ankle, hip to knee, pelvis, abdomen to thigh,
# chest; hip implants in half of those reaching the hip) to stage 3's data and runs 10 epochs at lr 7e-5; its best
# validation epoch was the first (16 min on a quiet 2-core machine), and the file holds that epoch.
# Stage 5 (session 11) continues on new phantoms only (stage 5's data: the hip joints in muscle, narrowed hip
# joints; 120 cases, every coverage as drawn) for 20 epochs at lr 1e-4 (1 warm-up epoch, cosine to 1e-5): validation
# loss 0.0421 (stage 4) -> 0.0310 at its best epoch, the last (~30 min on a quiet 2-core machine).
# Stage 6 (session 19) fine-tunes stage 5 on stage 12's data (phantom code of commit 53af2db: half the individuals
# with the real proximal femurs of a LibHip man; 100 cases as drawn) gently: batch 32, constant lr 2e-5, a weight
# average (EMA 0.998), 2 epochs of 150 steps (validation loss 0.0593 -> 0.0551, best at epoch 2; 25 min on a 2-core
# AMD EPYC); the shipped file is then 0.5 x that run + 0.5 x stage 5 (blend_models.py), which kept the held-out
# false positives on other bones within the bound that the run alone exceeded (docs/MODEL_HISTORY.md).
# Stage 7 (session 20) fine-tunes that blend (femurunet_demo_b16_stage6b.pt) the same way on stage 13's data
# (phantom bone values drawn wider: cortex 650-1850 HU, trabecular up to 400, the femoral head 1-1.5x denser; 100
# cases as drawn): validation loss 0.0684 -> 0.0603 (best at epoch 2; 23 min); the shipped file is again
# 0.5 x that run + 0.5 x its start, because the run alone labelled more bone around the femur in leg scans than the
# rule allowed (docs/MODEL_HISTORY.md, runs 13 and 13b).
# base_filters 16: on the 2-core CPU a base-32 step costs ~4x more (README).
# Bit-for-bit on: torch 2.13.0+cpu, 2 threads, an x86-64 CPU with AVX512-BF16; other CPUs give a model of the
# same quality, not the same bits.
# A stage whose model file is already in WORKDIR is not run again. Stage 7 alone, from the shipped stage-6 blend:
#   git show 47745b0:FemurUNet/FemurUNetLib/models/femurunet_demo_b16.pt > WORKDIR/femurunet_demo_b16_stage6b.pt
# (~30 min of data, 25 min of training). Stage 6 alone, from the shipped stage-5 file:
#   git show 6558ab2:FemurUNet/FemurUNetLib/models/femurunet_demo_b16.pt > WORKDIR/femurunet_demo_b16_stage5.pt
# (~15 min of data, 25 min of training); stages 5-6 from the shipped stage-4 file:
#   git show d5717da:FemurUNet/FemurUNetLib/models/femurunet_demo_b16.pt > WORKDIR/femurunet_demo_b16_stage4.pt
# (the data of stages 1-4 came from earlier phantom code, see make_demo_data.sh; today's code makes other cases).
# Usage: train_demo_model.sh [WORKDIR] [extra train options]   (default out/demo; ~60 min of data, then ~125 min of training on a 2-core CPU)
set -euo pipefail
WORK=${1:-out/demo}
HERE=$(cd "$(dirname "$0")" && pwd)
have_from() {   # N: a model file of stage N or a later stage (or its blend, stageNb) is in WORKDIR: N is not needed
  for n in $(seq "$1" 9); do
    for suffix in "" b m; do [ -f "$WORK/femurunet_demo_b16_stage$n$suffix.pt" ] && return 0; done
  done; return 1
}
FIRST=1; have_from 4 && FIRST=5
STAGE5="$WORK/femurunet_demo_b16_stage5.pt"
if ! have_from 5; then
  [ -f "$WORK/train5/dataset.json" ] && [ -f "$WORK/val5/dataset.json" ] || "$HERE/make_demo_data.sh" "$WORK" 2 "$FIRST"
fi
needs_data() {   # STAGE FOLDER: the stage is to run and its exported data are missing
  ! have_from "$1" && { [ ! -f "$WORK/train$2/dataset.json" ] || [ ! -f "$WORK/val$2/dataset.json" ]; }
}
if needs_data 6 12; then "$HERE/make_demo_data.sh" "$WORK" 2 12; fi
if needs_data 7 13; then "$HERE/make_demo_data.sh" "$WORK" 2 13; fi
INIT="$WORK/femurunet_demo_b16_v2.pt"
[ -f "$INIT" ] || git -C "$HERE" show 11a7126:FemurUNet/FemurUNetLib/models/femurunet_demo_b16.pt > "$INIT"
STAGE1="$WORK/femurunet_demo_b16_stage1.pt"
have_from 1 || femurunet train "$WORK/train" --val "$WORK/val" --out "$STAGE1" --init "$INIT" \
  --epochs 40 --steps-per-epoch 75 --batch-size 8 \
  --lr 3e-4 --warmup-epochs 2 --lr-schedule cosine --min-lr 1e-5 --bce-weight 10 --intensity-augment \
  --amp bf16 --seed 3 --threads 2 "${@:2}"
STAGE2="$WORK/femurunet_demo_b16_stage2.pt"
have_from 2 || femurunet train "$WORK/train_all" --val "$WORK/val_all" --out "$STAGE2" --init "$STAGE1" \
  --epochs 25 --steps-per-epoch 75 --batch-size 8 \
  --lr 1.5e-4 --warmup-epochs 1 --lr-schedule cosine --min-lr 1e-5 --bce-weight 10 --intensity-augment \
  --amp bf16 --seed 4 --threads 2 "${@:2}"
STAGE3="$WORK/femurunet_demo_b16_stage3.pt"
have_from 3 || femurunet train "$WORK/train3" --val "$WORK/val3" --out "$STAGE3" --init "$STAGE2" \
  --epochs 20 --steps-per-epoch 75 --batch-size 8 \
  --lr 1e-4 --warmup-epochs 1 --lr-schedule cosine --min-lr 1e-5 --bce-weight 10 --intensity-augment \
  --amp bf16 --seed 5 --threads 2 "${@:2}"
STAGE4="$WORK/femurunet_demo_b16_stage4.pt"
have_from 4 || femurunet train "$WORK/train4" --val "$WORK/val4" --out "$STAGE4" --init "$STAGE3" \
  --epochs 10 --steps-per-epoch 75 --batch-size 8 \
  --lr 7e-5 --warmup-epochs 1 --lr-schedule cosine --min-lr 1e-5 --bce-weight 10 --intensity-augment \
  --amp bf16 --seed 6 --threads 2 "${@:2}"
have_from 5 || femurunet train "$WORK/train5" --val "$WORK/val5" --out "$STAGE5" --init "$STAGE4" \
  --epochs 20 --steps-per-epoch 75 --batch-size 8 \
  --lr 1e-4 --warmup-epochs 1 --lr-schedule cosine --min-lr 1e-5 --bce-weight 10 --intensity-augment \
  --amp bf16 --seed 8 --threads 2 "${@:2}"
STAGE6="$WORK/femurunet_demo_b16_stage6.pt"
have_from 6 || femurunet train "$WORK/train12" --val "$WORK/val12" --out "$STAGE6" --init "$STAGE5" \
  --epochs 2 --steps-per-epoch 150 --batch-size 32 \
  --lr 2e-5 --warmup-epochs 0 --lr-schedule none --ema 0.998 --bce-weight 10 --intensity-augment \
  --amp bf16 --seed 15 --threads 2 "${@:2}"
STAGE6B="$WORK/femurunet_demo_b16_stage6b.pt"
have_from 7 || [ -f "$STAGE6B" ] || python3 "$HERE/blend_models.py" 0.5 "$STAGE6" "$STAGE5" "$STAGE6B"
STAGE7="$WORK/femurunet_demo_b16_stage7.pt"
have_from 7 || femurunet train "$WORK/train13" --val "$WORK/val13" --out "$STAGE7" --init "$STAGE6B" \
  --epochs 2 --steps-per-epoch 150 --batch-size 32 \
  --lr 2e-5 --warmup-epochs 0 --lr-schedule none --ema 0.998 --bce-weight 10 --intensity-augment \
  --amp bf16 --seed 16 --threads 2 "${@:2}"
STAGE7B="$WORK/femurunet_demo_b16_stage7b.pt"
[ -f "$STAGE7B" ] || have_from 8 || python3 "$HERE/blend_models.py" 0.5 "$STAGE7" "$STAGE6B" "$STAGE7B"
# Stage 8 (session 22; a GPU machine with 16 cores): 8 minutes on phantoms made while training (docs/TRAINING.md),
# seeds 50000 on, validation seeds 49000-49011 (phantom code of commit 5baa9fe: before the targeted hip fields);
# the file is that run's best weight average.
has_cuda() { python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; }
STAGE8="$WORK/femurunet_demo_b16_stage8.pt"
if have_from 8; then :
elif has_cuda; then
  python3 -m FemurUNetTrainLib.phantom_stream --init "$STAGE7B" --out "$STAGE8" --minutes 8 \
    --device cuda --intensity-augment --min-cases 24 --batch-size 64
else
  echo "stage 8 needs a CUDA GPU (and ~16 cores): $STAGE7B holds stages 1-7" >&2
fi
# Stage 8m (session 23, run 16): stage 8's weights with a minimum field of view of 300 mm (slices of smaller fields
# padded with air before the resize), chosen on phantom validation seeds (docs/MODEL_HISTORY.md, run 16).
STAGE8M="$WORK/femurunet_demo_b16_stage8m.pt"
if [ -f "$STAGE8" ] && ! have_from 9 && [ ! -f "$STAGE8M" ]; then
  python3 "$HERE/set_model_defaults.py" "$STAGE8" "$STAGE8M" --min-field 300
fi
# Stage 9 (session 24, run 17; the GPU machine): 7.5 minutes more on phantoms made while training, from stage 8m
# (the stream pads small fields as inference does), phantom code with targeted one-hip fields (commit a9b050b),
# seeds 51000 on, the same validation seeds. The shipped file is that run's best weight average.
STAGE9="$WORK/femurunet_demo_b16_stage9.pt"
if have_from 9; then :
elif [ -f "$STAGE8M" ] && has_cuda; then
  python3 -m FemurUNetTrainLib.phantom_stream --init "$STAGE8M" --out "$STAGE9" --seeds 51000-59999 --minutes 7.5 \
    --device cuda --intensity-augment --min-cases 24 --batch-size 64
elif [ -f "$STAGE8M" ]; then
  echo "stage 9 needs a CUDA GPU (and ~16 cores): $STAGE8M holds stages 1-8 and the minimum field" >&2
fi
# The shipped file (session 43): stage 9's weights, each slice's probabilities averaged along the slice axis with
# a 3 mm Gaussian before the threshold, chosen on phantom seeds (docs/MODEL_HISTORY.md, "Smoothing along z").
if [ -f "$STAGE9" ]; then
  python3 "$HERE/set_model_defaults.py" "$STAGE9" "$WORK/femurunet_demo_b16.pt" --smooth-z 3
fi
