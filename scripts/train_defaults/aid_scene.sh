#!/bin/sh
# Scene classification default (AID, 30 classes): EfficientNet-Lite0 + GAP + linear head.
# Usage: scripts/train_defaults/aid_scene.sh imp|mtp   (run from anywhere; writes runs/aid_scene_<init>/)
# Split (per class, file-number order, of the images in /work/shared/data/aid = upstream numbers 1..0.7N):
#   first 70 % train, next 10 % validation (choices: checkpoint, IMP-vs-MTP), last 20 % held-back test.
set -e
cd "$(dirname "$0")/../.."
INIT=${1:-imp}
EXTRA=""
if [ "$INIT" = mtp ]; then EXTRA="--backbone-weights runs/mtp/effl0_imp/encoder.safetensors"; fi
OUT=runs/aid_scene_$INIT
mkdir -p "$OUT"
OMP_NUM_THREADS=1 nohup nice -n 15 .venv/bin/rsfm-train finetune --task scene_classification \
  --backbone efficientnet_lite0 --pretrained $EXTRA --data /work/shared/data/aid --dataset aid \
  --val-fraction 0.1 --test-fraction 0.2 --out "$OUT" --seed 0 --time-budget-min 22 \
  --batch-size 32 --crop-size 128 --scale-min 0.86 --scale-max 1.2 --lr 1e-3 --weight-decay 0.05 \
  --warmup-steps 20 --threads 1 --log-every 10 > "$OUT/train.log" 2>&1 &
echo $! > "$OUT/pid"
