#!/bin/sh
# Held-back evaluation and export of the LEVIR-CD change default (after levir_change.sh has finished).
set -e
cd "$(dirname "$0")/../.."
R=runs/levir_change
OMP_NUM_THREADS=1 .venv/bin/rsfm-train evaluate $R/best.pt --data /work/shared/data/levir_cd --dataset levir_cd \
  --split test --threads 1 --out $R/test_metrics.json
OMP_NUM_THREADS=1 .venv/bin/rsfm-train export $R/best.pt --out resources/models/rsfm-levir-change-efflite0 \
  --name rsfm-levir-change-efflite0 --metrics $R/test_metrics.json --gsd-m 0.5 --gsd-range-m 0.3,1.0 \
  --gsd-note "LEVIR-CD is Google Earth imagery at 0.5 m/px (Chen & Shi 2020); crops were zoomed 0.8-1.25x in training." \
  --tile-size 256 --overlap 32 \
  --description "Building change detection between two RGB images of the same place (Siamese EfficientNet-Lite0, ImageNet init, |f1-f2| fusion, UNet decoder), trained on 3 LEVIR-CD sample pairs at 0.5 m. A small CPU-trained demo model: held-back change F1 37.8 %." \
  --training-data "LEVIR-CD samples (Chen & Shi 2020) from the BIT_CD repository: 3 training pairs, 1 validation pair, 7 held-back test pairs (256 x 256, 0.5 m)." \
  --data-licence "LEVIR-CD / BIT_CD: non-commercial research use only" --card-extra $R/card_extra.md \
  --colors "no change=#000000,change=#FF0000"
