#!/bin/sh
# Rotated detection (Oriented R-CNN) or instance segmentation (Mask R-CNN) default on NWPU VHR-10,
# EfficientNet-Lite0 (ImageNet) + FPN width 64. Same image split as the horizontal detector
# (docs/results/detection.md): train 1-440, val 441-470 (checkpoint + score threshold), test 471-520 held back.
# Usage: scripts/train_defaults/nwpu_detectors.sh rotated_detection|instance_segmentation [extra args]
# The shipped runs were started with the defaults below (40 min budget, validation every 14 min) and, after the
# first validation (step 36 / 39, 18 min), stopped and resumed with
#   nwpu_detectors.sh TASK --resume --time-budget-min 55 --val-every-min 100
# (longer budget because the shared CPU gave them ~0.07 images/s; only the final validation after that).
set -e
cd "$(dirname "$0")/../.."
TASK=$1
shift
case "$TASK" in
  rotated_detection) OUT=runs/nwpu_rotated ;;
  instance_segmentation) OUT=runs/nwpu_instances ;;
  *) echo "usage: $0 rotated_detection|instance_segmentation" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
OMP_NUM_THREADS=1 nohup nice -n 15 .venv/bin/python -m training.detection_trainer train --task "$TASK" \
  --data /work/shared/data/nwpu_vhr10 --out "$OUT" --backbone efficientnet_lite0 --pretrained --fpn-channels 64 \
  --train-range 1-440 --val-range 441-470 --test-range 471-520 --batch-size 2 --optimizer adamw --lr 2e-4 \
  --weight-decay 0.05 --warmup-steps 30 --clip-grad 10 --crop-size 384 --scale-min 0.8 --scale-max 1.25 \
  --time-budget-min 40 --val-every-min 14 --seed 0 --threads 1 --log-every 10 "$@" >> "$OUT/train.log" 2>&1 &
echo $! > "$OUT/pid"
