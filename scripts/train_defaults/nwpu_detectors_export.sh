#!/bin/sh
# Held-back evaluation (test images 471-520) and export of an NWPU VHR-10 detector default.
# Usage: scripts/train_defaults/nwpu_detectors_export.sh rotated_detection|instance_segmentation
# The score threshold is the one recorded at the chosen validation (best micro F1 at IoU 0.5, images 441-470).
set -e
cd "$(dirname "$0")/../.."
case "$1" in
  rotated_detection) R=runs/nwpu_rotated; NAME=rsfm-rotated-nwpu-efflite0
    DESC="Rotated (oriented) object detection of the 10 NWPU VHR-10 classes: Oriented R-CNN on EfficientNet-Lite0 (ImageNet init, FPN width 64), boxes = minimum-area rectangles of the polygons. A small CPU-trained demo model; see the held-back metrics." ;;
  instance_segmentation) R=runs/nwpu_instances; NAME=rsfm-instances-nwpu-efflite0
    DESC="Instance segmentation (masks + boxes) of the 10 NWPU VHR-10 classes: Mask R-CNN on EfficientNet-Lite0 (ImageNet init, FPN width 64), masks from the COCO polygons. A small CPU-trained demo model; see the held-back metrics." ;;
  *) echo "usage: $0 rotated_detection|instance_segmentation" >&2; exit 2 ;;
esac
if [ ! -f $R/test_metrics.json ]; then
  OMP_NUM_THREADS=1 .venv/bin/python -m training.detection_trainer evaluate $R/best.pt \
    --data /work/shared/data/nwpu_vhr10 --split test --threads 1 --out $R/test_metrics.json
fi
OMP_NUM_THREADS=1 .venv/bin/python -m training.detection_trainer export $R/best.pt --data /work/shared/data/nwpu_vhr10 \
  --out resources/models/$NAME --name $NAME --metrics $R/test_metrics.json --gsd-m 1.0 --gsd-range-m 0.3,2.5 \
  --gsd-note "NWPU VHR-10 is mostly Google Earth at 0.5-2 m/px (a few 0.08 m Vaihingen images); trained at native resolution with 0.8-1.25x zoom." \
  --tile-size 512 --overlap 64 --description "$DESC" \
  --training-data "NWPU VHR-10 positive images (Cheng et al.), COCO polygons from chaozhong2010/VHR-10_dataset_coco: images 1-440 train, 441-470 validation, 471-520 held-back test." \
  --data-licence "annotations MIT; NWPU VHR-10 images for academic/research use" --card-extra $R/card_extra.md --threads 1
