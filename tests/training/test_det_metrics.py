"""Detection metrics against pycocotools and hand-computed cases."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from training.eval.detection import average_precision, coco_map, dota_map, voc_map

H = W = 48


def random_dataset(seed: int, num_images: int = 12, num_classes: int = 3):
    """Ground truths and noisy, partly wrong predictions with boxes and matching rectangle masks."""
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for _ in range(num_images):
        n = rng.integers(0, 6)
        xy = rng.integers(0, 30, size=(n, 2))
        wh = rng.integers(4, 18, size=(n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, W)], 1).astype(float)
        labels = rng.integers(0, num_classes, size=n)
        gts.append({"boxes_xyxy": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.long),
                    "masks": boxes_to_masks(boxes)})  # fmt: skip
        # predictions: jittered copies (some with a wrong label), plus random false positives
        m = rng.integers(0, 8)
        src = rng.integers(0, max(n, 1), size=m)
        pb = np.zeros((m, 4))
        pl = rng.integers(0, num_classes, size=m)
        for k in range(m):
            if n and rng.random() < 0.75:
                pb[k] = boxes[src[k]] + rng.integers(-2, 3, size=4)
                if rng.random() < 0.8:
                    pl[k] = labels[src[k]]
            else:
                x, y = rng.integers(0, 30, size=2)
                pb[k] = [x, y, x + rng.integers(4, 18), y + rng.integers(4, 18)]
        pb[:, 0::2] = np.clip(pb[:, 0::2], 0, W)
        pb[:, 1::2] = np.clip(pb[:, 1::2], 0, H)
        pb[:, 2] = np.maximum(pb[:, 2], pb[:, 0] + 1)
        pb[:, 3] = np.maximum(pb[:, 3], pb[:, 1] + 1)
        scores = np.round(rng.random(m), 2)  # rounding creates score ties, which COCOeval orders stably
        preds.append({"boxes_xyxy": torch.tensor(pb).reshape(-1, 4), "labels": torch.tensor(pl, dtype=torch.long),
                      "scores": torch.tensor(scores), "masks": boxes_to_masks(pb).float() * 0.9})  # fmt: skip
    return gts, preds


def boxes_to_masks(boxes: np.ndarray) -> torch.Tensor:
    masks = torch.zeros(len(boxes), H, W, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        masks[k, y1 + 1 : y2, x1 : x2 - 1] = 1  # a little smaller than the box so segm differs from bbox
    return masks


def pycocotools_stats(gts, preds, iou_type: str, num_classes: int, max_dets: int = 100) -> np.ndarray:
    images, anns, results = [], [], []
    for i, (gt, pred) in enumerate(zip(gts, preds, strict=True)):
        images.append({"id": i, "height": H, "width": W})
        for b, lab, m in zip(gt["boxes_xyxy"].tolist(), gt["labels"].tolist(), gt["masks"].numpy(), strict=True):
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode()
            area = float(m.sum()) if iou_type == "segm" else (b[2] - b[0]) * (b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": lab + 1, "iscrowd": 0, "area": area,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "segmentation": rle})  # fmt: skip
        for b, lab, s, m in zip(pred["boxes_xyxy"].tolist(), pred["labels"].tolist(), pred["scores"].tolist(),
                                (pred["masks"] >= 0.5).numpy().astype(np.uint8), strict=True):  # fmt: skip
            r = {"image_id": i, "category_id": lab + 1, "score": s}
            if iou_type == "bbox":
                r["bbox"] = [b[0], b[1], b[2] - b[0], b[3] - b[1]]
            else:
                rle = mask_utils.encode(np.asfortranarray(m))
                rle["counts"] = rle["counts"].decode()
                r["segmentation"] = rle
            results.append(r)
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        dt = coco.loadRes(results)
        ev = COCOeval(coco, dt, iou_type)
        # COCOeval sorts maxDets and evaluates with the largest; precision[..., 2] is the third sorted entry
        ev.params.maxDets = [1, 10, 100] if max_dets == 100 else [max_dets] * 3
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if max_dets == 100:
        return ev.stats
    # summarize() hard-codes 100 detections for stats[0]; read AP@[.5:.95], AP50, AP75 from the raw precision
    prec = ev.eval["precision"][:, :, :, 0, 2]  # T x R x K, area "all", last maxDets
    return np.array([prec[prec > -1].mean()] + [prec[t][prec[t] > -1].mean() for t in (0, 5)])


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize(("seed", "max_dets"), [(0, 100), (1, 100), (2, 100), (3, 2)])
def test_coco_map_matches_pycocotools(iou_type, seed, max_dets):
    gts, preds = random_dataset(seed)
    ref = pycocotools_stats(gts, preds, iou_type, 3, max_dets)
    ours = coco_map(preds, gts, iou_type=iou_type, num_classes=3, max_dets=max_dets)
    assert 0.02 < ref[0] < 0.95 and ref[1] > ref[0]  # a non-trivial case
    assert ours["mAP"] == pytest.approx(ref[0], abs=1e-6)
    assert ours["AP50"] == pytest.approx(ref[1], abs=1e-6)
    assert ours["AP75"] == pytest.approx(ref[2], abs=1e-6)


def test_coco_map_perfect_and_empty():
    gts, _ = random_dataset(3)
    perfect = [{**g, "scores": torch.ones(len(g["labels"]))} for g in gts]
    assert coco_map(perfect, gts)["mAP"] == pytest.approx(1.0)
    empty = [{"boxes_xyxy": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}
             for _ in gts]  # fmt: skip
    assert coco_map(empty, gts)["mAP"] == 0.0


def test_average_precision_by_hand():
    # 3 gts; ranked detections: TP, FP, TP  -> recall .33 .33 .67, precision 1 .5 .67
    recall = np.array([1 / 3, 1 / 3, 2 / 3])
    precision = np.array([1.0, 0.5, 2 / 3])
    assert average_precision(recall, precision, "area") == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3)
    # 11 points: r in {0,.1,.2,.3} -> 1; {.4,.5,.6} -> 2/3; {.7..1} -> 0
    assert average_precision(recall, precision, "11points") == pytest.approx((4 * 1 + 3 * 2 / 3) / 11)


def test_voc_map_by_hand_with_difficult():
    gts = [{"boxes_xyxy": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]),
            "labels": torch.tensor([0, 0, 0]), "difficult": torch.tensor([False, False, True])}]  # fmt: skip
    preds = [{"boxes_xyxy": torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [40, 40, 50, 50], [60, 60, 70, 70],
                                          [20, 20, 30, 31]]),
              "labels": torch.tensor([0, 0, 0, 0, 0]), "scores": torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])}]  # fmt: skip
    # ranked: TP, FP (duplicate), ignored (difficult), FP, TP -> precision 1, .5, .33, .5 at recall .5,.5,.5,1
    res = voc_map(preds, gts)
    assert res["mAP"] == pytest.approx(0.5 * 1 + 0.5 * 0.5)


def test_dota_map_rotated_iou():
    a = math.radians(30)
    gts = [{"boxes_cxcywha": torch.tensor([[50.0, 50, 40, 10, a], [100, 100, 20, 20, 0]]),
            "labels": torch.tensor([0, 1])}]  # fmt: skip
    # Same centre and size, angle off by 30 deg: axis-aligned hulls overlap a lot, rotated IoU is < 0.5.
    preds = [{"boxes_cxcywha": torch.tensor([[50.0, 50, 40, 10, 0.0], [100, 100, 20, 20, 0.1]]),
              "labels": torch.tensor([0, 1]), "scores": torch.tensor([0.9, 0.8])}]  # fmt: skip
    res = dota_map(preds, gts)
    assert res["per_class_AP"][0] == 0.0
    assert res["per_class_AP"][1] == pytest.approx(1.0)
    assert res["mAP"] == pytest.approx(0.5)
    # rotated COCO-style AP uses the same IoU
    assert coco_map(preds, gts, iou_type="rbox")["AP50"] == pytest.approx(0.5)


def test_metric_errors_name_the_problem():
    with pytest.raises(ValueError, match="iou_type"):
        coco_map([], [], iou_type="poly")
    with pytest.raises(KeyError, match="masks"):
        coco_map([{"labels": torch.tensor([0]), "scores": torch.tensor([1.0]), "boxes_xyxy": torch.zeros(1, 4)}],
                 [{"labels": torch.tensor([0]), "masks": torch.ones(1, 4, 4)}], iou_type="segm")  # fmt: skip
