"""Detection metrics: COCO mAP (boxes and masks), VOC AP50 and DOTA rotated mAP.

All functions take the detectors' eval outputs and ground truths as lists (one entry per image) of dicts:

* predictions: ``scores (N,)``, ``labels (N,)`` and ``boxes_xyxy (N, 4)``, ``masks (N, H, W)``
  (probabilities, binarised at 0.5) or ``boxes_cxcywha (N, 5)`` depending on the metric;
* ground truths: ``labels (G,)`` and the matching geometry key; optionally ``difficult (G,)`` bool
  (VOC / DOTA: such objects are neither true nor false positives).

:func:`coco_map` re-implements pycocotools' ``COCOeval`` (area range "all", 100 detections per image and
class, 10 IoU thresholds .5:.05:.95, 101 recall points) and agrees with it to float precision (tested);
crowd annotations are not supported. :func:`voc_map` and :func:`dota_map` follow the PASCAL VOC / DOTA devkit
rule: detections of a class are ranked over the whole set, each is a true positive if its best-overlapping
ground truth has IoU >= threshold and was not matched before. The AP is the area under the interpolated
precision-recall curve (``"area"``, VOC2010+) or the VOC2007 11-point mean (``"11points"``).
:func:`dota_map` defaults to ``"11points"`` as the DOTA devkit and MMRotate's ``DOTAMetric`` do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from training.ops.rotated import rbox_iou

__all__ = ["coco_map", "voc_map", "dota_map", "average_precision"]

Sample = dict[str, torch.Tensor]
IouFn = Callable[[torch.Tensor, torch.Tensor], np.ndarray]


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return box_iou(a.double(), b.double()).numpy()


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    fa = a.flatten(1).double()
    fb = b.flatten(1).double()
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter)).numpy()


def _rbox_iou(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return rbox_iou(a.double(), b.double()).numpy()


_GEOMETRY: dict[str, tuple[str, IouFn]] = {
    "bbox": ("boxes_xyxy", _box_iou),
    "segm": ("masks", _mask_iou),
    "rbox": ("boxes_cxcywha", _rbox_iou),
}


def _geometry(sample: Sample, key: str, is_pred: bool) -> torch.Tensor:
    if key not in sample:
        raise KeyError(f"{'prediction' if is_pred else 'ground truth'} lacks {key!r} (has {sorted(sample)})")
    g = sample[key].detach().cpu()
    if key == "masks":
        g = g >= 0.5 if g.is_floating_point() else g.bool()
    return g


def _class_ids(ground_truths: Sequence[Sample], num_classes: int | None) -> list[int]:
    if num_classes is not None:
        return list(range(num_classes))
    labels = [int(x) for gt in ground_truths for x in gt["labels"].tolist()]
    return sorted(set(labels))


def coco_map(
    predictions: Sequence[Sample],
    ground_truths: Sequence[Sample],
    iou_type: str = "bbox",
    num_classes: int | None = None,
    max_dets: int = 100,
) -> dict[str, float | list[float]]:
    """COCO-style AP as pycocotools ``COCOeval`` computes ``stats[0:3]`` (area "all").

    Args:
        predictions / ground_truths: per-image dicts (see module docstring), same length and order.
        iou_type: ``"bbox"`` (``boxes_xyxy``), ``"segm"`` (``masks``) or ``"rbox"`` (``boxes_cxcywha``).
        num_classes: classes ``0..num_classes-1`` to evaluate; default: the labels present in the ground truth
            (classes without ground truth are skipped either way, as in COCOeval).
        max_dets: detections kept per image and class, by score.

    Returns:
        ``{"mAP": AP@[.5:.95], "AP50", "AP75", "per_class_AP": [AP@[.5:.95] per class, nan if no gt]}``.
    """
    if iou_type not in _GEOMETRY:
        raise ValueError(f"iou_type must be one of {sorted(_GEOMETRY)}, got {iou_type!r}")
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truths)} ground truths; give one per image")
    key, iou_fn = _GEOMETRY[iou_type]
    iou_thrs = np.linspace(0.5, 0.95, 10)
    rec_thrs = np.linspace(0.0, 1.0, 101)
    classes = _class_ids(ground_truths, num_classes)
    precision = -np.ones((len(iou_thrs), len(rec_thrs), len(classes)))
    for k, cls in enumerate(classes):
        scores_all, matched_all, num_gt = [], [], 0
        for pred, gt in zip(predictions, ground_truths, strict=True):
            gsel = (gt["labels"] == cls).cpu()
            psel = (pred["labels"] == cls).cpu()
            n_gt = int(gsel.sum())
            num_gt += n_gt
            if not psel.any():
                continue
            p_scores = pred["scores"].detach().cpu()[psel].double().numpy()
            order = np.argsort(-p_scores, kind="mergesort")[:max_dets]
            p_scores = p_scores[order]
            matched = np.zeros((len(iou_thrs), len(order)), dtype=bool)
            if n_gt:
                g_geom = _geometry(gt, key, False)[gsel]
                p_geom = _geometry(pred, key, True)[psel][torch.from_numpy(order)]
                ious = iou_fn(p_geom, g_geom)
                matched = _coco_match(ious, iou_thrs)
            scores_all.append(p_scores)
            matched_all.append(matched)
        if num_gt == 0:
            continue
        if not scores_all:
            precision[:, :, k] = 0
            continue
        scores = np.concatenate(scores_all)
        order = np.argsort(-scores, kind="mergesort")
        tps = np.concatenate(matched_all, axis=1)[:, order]
        for t in range(len(iou_thrs)):
            tp = np.cumsum(tps[t]).astype(float)
            fp = np.cumsum(~tps[t]).astype(float)
            rc = tp / num_gt
            pr = tp / (fp + tp + np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope
            idx = np.searchsorted(rc, rec_thrs, side="left")
            q = np.zeros(len(rec_thrs))
            ok = idx < len(pr)
            q[ok] = pr[idx[ok]]
            precision[t, :, k] = q

    def mean_valid(p: np.ndarray) -> float:
        v = p[p > -1]
        return float(v.mean()) if v.size else -1.0

    per_class = [float(precision[:, :, k].mean()) if (precision[:, :, k] > -1).any() else float("nan")
                 for k in range(len(classes))]  # fmt: skip
    return {"mAP": mean_valid(precision), "AP50": mean_valid(precision[0]), "AP75": mean_valid(precision[5]),
            "per_class_AP": per_class}  # fmt: skip


def _coco_match(ious: np.ndarray, iou_thrs: np.ndarray) -> np.ndarray:
    """COCOeval's greedy matching of score-sorted detections ``(D, G)`` -> ``(T, D)`` true-positive flags."""
    n_det, n_gt = ious.shape
    matched = np.zeros((len(iou_thrs), n_det), dtype=bool)
    for t, thr in enumerate(iou_thrs):
        gt_taken = np.zeros(n_gt, dtype=bool)
        for d in range(n_det):
            best, m = min(thr, 1 - 1e-10), -1
            for g in range(n_gt):
                # ">= best" keeps the last gt among equal IoUs, exactly as COCOeval.
                if gt_taken[g] or ious[d, g] < best:
                    continue
                best, m = ious[d, g], g
            if m >= 0:
                gt_taken[m] = True
                matched[t, d] = True
    return matched


def average_precision(recall: np.ndarray, precision: np.ndarray, method: str = "area") -> float:
    """AP from a precision-recall curve (detections ranked by score).

    Args:
        method: ``"area"``: area under the monotone precision envelope (VOC2010+, all points);
            ``"11points"``: mean of the max precision at recall >= 0, 0.1, ..., 1 (VOC2007).
    """
    if method == "area":
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[0.0], precision, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        i = np.nonzero(mrec[1:] != mrec[:-1])[0]
        return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
    if method == "11points":
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.linspace(0, 1, 11)]))  # fmt: skip
    raise ValueError(f"method must be 'area' or '11points', got {method!r}")


def _voc_style_map(predictions, ground_truths, key, iou_fn, iou_thr, method, num_classes):
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truths)} ground truths; give one per image")
    classes = _class_ids(ground_truths, num_classes)
    aps = []
    for cls in classes:
        dets = []  # (score, image, det index within the class/image selection)
        per_image = []
        num_gt = 0
        for i, (pred, gt) in enumerate(zip(predictions, ground_truths, strict=True)):
            gsel = (gt["labels"] == cls).cpu()
            psel = (pred["labels"] == cls).cpu()
            difficult = gt.get("difficult", torch.zeros_like(gt["labels"], dtype=torch.bool)).cpu()[gsel].numpy()
            num_gt += int((~difficult.astype(bool)).sum())
            ious = None
            if psel.any() and gsel.any():
                ious = iou_fn(_geometry(pred, key, True)[psel], _geometry(gt, key, False)[gsel])
            per_image.append((ious, difficult.astype(bool), np.zeros(int(gsel.sum()), dtype=bool)))
            scores = pred["scores"].detach().cpu()[psel].double().numpy()
            dets.extend((s, i, j) for j, s in enumerate(scores))
        if num_gt == 0:
            aps.append(float("nan"))
            continue
        dets.sort(key=lambda d: -d[0])  # stable: ties keep image order
        tp = np.zeros(len(dets))
        fp = np.zeros(len(dets))
        for n, (_, i, j) in enumerate(dets):
            ious, difficult, taken = per_image[i]
            if ious is None:
                fp[n] = 1
                continue
            g = int(np.argmax(ious[j]))
            if ious[j, g] >= iou_thr:
                if difficult[g]:
                    continue
                if not taken[g]:
                    tp[n], taken[g] = 1, True
                else:
                    fp[n] = 1
            else:
                fp[n] = 1
        tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
        recall = tp_c / num_gt
        precision = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
        aps.append(average_precision(recall, precision, method))
    valid = [a for a in aps if not np.isnan(a)]
    return {"mAP": float(np.mean(valid)) if valid else float("nan"), "per_class_AP": aps}


def voc_map(
    predictions: Sequence[Sample],
    ground_truths: Sequence[Sample],
    iou_thr: float = 0.5,
    method: str = "area",
    iou_type: str = "bbox",
    num_classes: int | None = None,
) -> dict[str, float | list[float]]:
    """PASCAL VOC mAP at ``iou_thr`` (AP50 by default) for ``"bbox"`` or ``"segm"``.

    Returns:
        ``{"mAP", "per_class_AP"}``; classes without (non-difficult) ground truth get nan and are left out
        of the mean.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"voc_map iou_type must be 'bbox' or 'segm', got {iou_type!r}; use dota_map for rotated boxes")
    key, iou_fn = _GEOMETRY[iou_type]
    return _voc_style_map(predictions, ground_truths, key, iou_fn, iou_thr, method, num_classes)


def dota_map(
    predictions: Sequence[Sample],
    ground_truths: Sequence[Sample],
    iou_thr: float = 0.5,
    method: str = "11points",
    num_classes: int | None = None,
) -> dict[str, float | list[float]]:
    """DOTA-style rotated mAP (``boxes_cxcywha``, exact rotated IoU); VOC07 11-point AP by default."""
    key, iou_fn = _GEOMETRY["rbox"]
    return _voc_style_map(predictions, ground_truths, key, iou_fn, iou_thr, method, num_classes)
