#!/bin/sh
# Change detection default (LEVIR-CD samples): Siamese EfficientNet-Lite0 + |f1-f2| + UNet decoder (c=32).
# Split = LEVIR-CD's own, carried in the file names (whole pairs): train_* (3 pairs) train, val_* (1 pair)
# picks the checkpoint, test_* (7 pairs) held back.  Writes runs/levir_change/.
set -e
cd "$(dirname "$0")/../.."
OUT=runs/levir_change
mkdir -p "$OUT"
OMP_NUM_THREADS=1 nohup nice -n 15 .venv/bin/rsfm-train finetune --task change_detection \
  --backbone efficientnet_lite0 --pretrained --data /work/shared/data/levir_cd --dataset levir_cd \
  --out "$OUT" --seed 0 --time-budget-min 22 --steps-per-epoch 10 --batch-size 4 --crop-size 192 \
  --scale-min 0.8 --scale-max 1.25 --lr 6e-4 --weight-decay 0.05 --warmup-steps 10 --head-channels 32 \
  --eval-tile 256 --eval-overlap 0 --threads 1 --log-every 5 > "$OUT/train.log" 2>&1 &
echo $! > "$OUT/pid"
