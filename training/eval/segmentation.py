"""Dense-prediction metrics (confusion matrix, IoU, F1, OA) and sliding-window inference.

Conventions: the confusion matrix ``cm`` is ``K x K`` int64 with ``cm[true, pred]``; pixels whose label is
``ignore_index`` are not counted. A class that never occurs in the labels *and* is never predicted has an
undefined IoU/F1 (``nan``) and is left out of the means (as mmseg's ``nanmean``); a class that is predicted
but absent from the labels gets IoU 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "confusion_matrix",
    "change_metrics",
    "segmentation_metrics",
    "sliding_window_logits",
    "tile_starts",
]


def confusion_matrix(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, num_classes: int,
                     ignore_index: int | None = 255) -> np.ndarray:
    """``K x K`` confusion matrix (rows = true class, columns = predicted) of two label maps of equal shape."""
    p = torch.as_tensor(pred).reshape(-1).long()
    t = torch.as_tensor(target).reshape(-1).long()
    if p.shape != t.shape:
        raise ValueError(f"prediction has {p.numel()} pixels but target has {t.numel()}; shapes must match")
    keep = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        keep &= t != ignore_index
    bad = keep & ((p < 0) | (p >= num_classes))
    if bad.any():
        raise ValueError(f"predictions outside [0, {num_classes}) found; is num_classes right?")
    idx = t[keep] * num_classes + p[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).numpy()


def segmentation_metrics(cm: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """Metrics from a confusion matrix.

    Returns:
        ``{"mIoU", "mF1", "OA", "mAcc", "per_class": {name: {"IoU", "F1", "precision", "recall", "support"}}}``;
        means skip classes whose IoU is undefined (absent and never predicted). Values are fractions in [0, 1]
        (``nan`` where undefined) and ``support`` is the true pixel count.
    """
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (support + predicted - tp)
        f1 = 2 * tp / (support + predicted)
        precision = tp / predicted
        recall = tp / support
    total = cm.sum()
    per_class = {
        names[i]: {"IoU": float(iou[i]), "F1": float(f1[i]), "precision": float(precision[i]),
                   "recall": float(recall[i]), "support": int(support[i])}
        for i in range(k)
    }
    return {
        "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mF1": float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan"),
        "OA": float(tp.sum() / total) if total else float("nan"),
        "mAcc": float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan"),
        "per_class": per_class,
    }


def change_metrics(cm: np.ndarray) -> dict:
    """Binary change metrics (class 1 = change) from a ``2 x 2`` confusion matrix: F1, IoU, precision,
    recall of the change class, and OA. Undefined values (no change predicted / present) are ``nan``."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.shape != (2, 2):
        raise ValueError(f"change metrics need a 2 x 2 confusion matrix, got {cm.shape}")
    tp, fn, fp = cm[1, 1], cm[1, 0], cm[0, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
        iou = tp / (tp + fp + fn)
    total = cm.sum()
    return {"F1": float(f1), "IoU": float(iou), "precision": float(precision), "recall": float(recall),
            "OA": float(np.trace(cm) / total) if total else float("nan")}


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of windows of size ``tile`` covering ``[0, length)`` with step ``stride``; the last
    window is aligned to the end so that no window hangs over the edge (when ``length >= tile``)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


@torch.no_grad()
def sliding_window_logits(model: torch.nn.Module, image: torch.Tensor, num_classes: int, tile: int = 512,
                          overlap: int = 64, batch_size: int = 4, second: torch.Tensor | None = None,
                          channels_last: bool = False) -> torch.Tensor:
    """Average the model's logits over overlapping ``tile x tile`` windows of one image.

    Args:
        model: ``model(x) -> B x K x h x w`` (or ``model(x1, x2)`` when ``second`` is given).
        image: normalised float ``C x H x W``; images smaller than ``tile`` are padded with 0 (the mean).
        num_classes: K.
        tile / overlap: window side and overlap in pixels (``0 <= overlap < tile``).
        batch_size: windows per forward pass.
        second: the second date of a change pair (same shape as ``image``), or None.
        channels_last: feed NHWC batches (match a model converted with ``to(memory_format=channels_last)``).

    Returns:
        float32 logits ``K x H x W`` (mean over the windows covering each pixel).
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile); got overlap={overlap}, tile={tile}")
    c, h, w = image.shape
    ph, pw = max(h, tile), max(w, tile)
    imgs = [image] if second is None else [image, second]
    imgs = [F.pad(x, (0, pw - w, 0, ph - h)) for x in imgs]
    stride = tile - overlap
    ys, xs = tile_starts(ph, tile, stride), tile_starts(pw, tile, stride)
    windows = [(y, x) for y in ys for x in xs]
    device = next(model.parameters()).device
    out = torch.zeros(num_classes, ph, pw)
    count = torch.zeros(1, ph, pw)
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        batches = [torch.stack([x[:, y : y + tile, xx : xx + tile] for y, xx in chunk]).to(device)
                   .contiguous(memory_format=fmt) for x in imgs]
        logits = model(*batches).float().cpu()
        for (y, x), lg in zip(chunk, logits, strict=True):
            out[:, y : y + tile, x : x + tile] += lg
            count[:, y : y + tile, x : x + tile] += 1
    return (out / count)[:, :h, :w]


def nanfloat(x: float) -> float | None:
    """JSON-friendly float: ``nan`` -> None, otherwise rounded to 4 decimals."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)
