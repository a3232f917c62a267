"""Joint augmentations for detection samples: image, instance masks, boxes, rotated boxes and polygons.

A detection sample (see :mod:`training.data.coco`, :mod:`training.data.dota`,
:mod:`training.data.instance_png`) holds ``image`` float ``C x H x W`` and per instance ``labels (N,)``,
``boxes_xyxy (N, 4)``, ``boxes_cxcywha (N, 5)`` and, when the format has them, ``masks (N, H, W)`` uint8 and
``polygons (N, 8)`` (quadrilaterals). Coordinates are pixel edges: mask pixel ``(r, c)`` covers
``[c, c + 1] x [r, r + 1]``; rotated boxes follow :mod:`training.ops.rotated` (angle counter-clockwise on
the image, regularised).

Flips and 90-degree rotations map every geometry exactly. Crops and rescales change shapes, so there the
boxes are recomputed from the transformed masks (or polygons when there are no masks) and instances that
leave the crop are dropped. Randomness comes from ``torch``'s global generator.

Photometric steps from :mod:`training.data.transforms` (``ColorJitter``, ``Normalize``) touch only the image
and can be composed with these; its geometric ones (``RandomFlip``, ``RandomRot90``, ``RandomScaleCrop``) do
not move boxes and must not be used on detection samples.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.ops.rotated import min_area_rect, rbox_to_poly, regularize_rboxes

__all__ = [
    "DetRandomFlip",
    "DetRandomRot90",
    "DetRandomCrop",
    "DetRandomResize",
    "flip_sample",
    "rot90_sample",
    "crop_sample",
    "resize_sample",
    "masks_to_boxes",
    "mask_to_rbox",
    "polygons_to_rboxes",
    "collate_detection",
    "INSTANCE_KEYS",
]

Sample = dict[str, Any]

# Per-instance keys, filtered together when instances are dropped.
INSTANCE_KEYS: tuple[str, ...] = ("labels", "boxes_xyxy", "boxes_cxcywha", "masks", "polygons", "difficult")


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` masks -> ``(N, 4)`` xyxy pixel-edge boxes (zeros for empty masks)."""
    n = masks.shape[0]
    out = torch.zeros((n, 4), dtype=torch.float32)
    m = masks.bool()
    rows, cols = m.any(2), m.any(1)
    for k in range(n):
        r = torch.nonzero(rows[k]).flatten()
        c = torch.nonzero(cols[k]).flatten()
        if r.numel():
            out[k] = torch.tensor([c[0], r[0], c[-1] + 1, r[-1] + 1], dtype=torch.float32)
    return out


def mask_to_rbox(mask: torch.Tensor) -> torch.Tensor:
    """Minimum-area rotated box ``(5,)`` around the pixel squares of one ``(H, W)`` mask (zeros if empty).

    Only the outer corners of each row's first and last pixel can be hull vertices, so only those are used.
    """
    m = mask.bool()
    rows = torch.nonzero(m.any(1)).flatten()
    if rows.numel() == 0:
        return torch.zeros(5)
    first = m[rows].float().argmax(1)
    last = m.shape[1] - 1 - m[rows].flip(1).float().argmax(1)
    r = rows.double()
    pts = torch.cat([torch.stack([first.double(), r], 1), torch.stack([first.double(), r + 1], 1),
                     torch.stack([last.double() + 1, r], 1), torch.stack([last.double() + 1, r + 1], 1)])  # fmt: skip
    return min_area_rect(pts).float()


def polygons_to_rboxes(polygons: torch.Tensor) -> torch.Tensor:
    """``(N, 2K)`` polygons -> ``(N, 5)`` minimum-area rotated boxes."""
    if polygons.shape[0] == 0:
        return torch.zeros((0, 5))
    return torch.stack([min_area_rect(p.view(-1, 2).double()).float() for p in polygons])


def _hw(sample: Sample) -> tuple[int, int]:
    return int(sample["image"].shape[-2]), int(sample["image"].shape[-1])


def flip_sample(sample: Sample, horizontal: bool, vertical: bool) -> Sample:
    """Mirror left-right and/or top-bottom; both together is the "diagonal" flip of MMDetection."""
    if not (horizontal or vertical):
        return sample
    h, w = _hw(sample)
    dims = [d for d, on in ((-1, horizontal), (-2, vertical)) if on]
    out = dict(sample)
    out["image"] = sample["image"].flip(dims)
    if "masks" in sample:
        out["masks"] = sample["masks"].flip(dims)
    if "boxes_xyxy" in sample:
        b = sample["boxes_xyxy"].clone()
        if horizontal:
            b[:, [0, 2]] = w - b[:, [2, 0]]
        if vertical:
            b[:, [1, 3]] = h - b[:, [3, 1]]
        out["boxes_xyxy"] = b
    if "boxes_cxcywha" in sample:
        r = sample["boxes_cxcywha"].clone()
        if horizontal:
            r[:, 0] = w - r[:, 0]
        if vertical:
            r[:, 1] = h - r[:, 1]
        if horizontal != vertical:  # one mirror reverses the sense of rotation; two cancel
            r[:, 4] = -r[:, 4]
        out["boxes_cxcywha"] = regularize_rboxes(r)
    if "polygons" in sample:
        p = sample["polygons"].clone()
        if horizontal:
            p[:, 0::2] = w - p[:, 0::2]
        if vertical:
            p[:, 1::2] = h - p[:, 1::2]
        out["polygons"] = p
    return out


def rot90_sample(sample: Sample, k: int) -> Sample:
    """Rotate by ``k * 90`` degrees counter-clockwise on screen (as ``torch.rot90(t, k, dims=(-2, -1))``)."""
    k %= 4
    out = dict(sample)
    for _ in range(k):
        out = _rot90_once(out)
    return out


def _rot90_once(sample: Sample) -> Sample:
    h, w = _hw(sample)
    out = dict(sample)
    out["image"] = torch.rot90(sample["image"], 1, dims=(-2, -1))
    if "masks" in sample:
        out["masks"] = torch.rot90(sample["masks"], 1, dims=(-2, -1))
    # A point (x, y) goes to (y, w - x): the old top-right corner becomes the new top-left.
    if "boxes_xyxy" in sample:
        x1, y1, x2, y2 = sample["boxes_xyxy"].unbind(-1)
        out["boxes_xyxy"] = torch.stack([y1, w - x2, y2, w - x1], -1)
    if "boxes_cxcywha" in sample:
        cx, cy, bw, bh, a = sample["boxes_cxcywha"].unbind(-1)
        out["boxes_cxcywha"] = regularize_rboxes(torch.stack([cy, w - cx, bw, bh, a + math.pi / 2], -1))
    if "polygons" in sample:
        p = sample["polygons"]
        q = p.clone()
        q[:, 0::2] = p[:, 1::2]
        q[:, 1::2] = w - p[:, 0::2]
        out["polygons"] = q
    return out


def _clip_polygon(points: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Sutherland-Hodgman clip of one polygon ``(K, 2)`` to an axis-aligned window."""
    poly = [tuple(p) for p in points]
    for axis, bound, keep_greater in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        if not poly:
            break
        res = []
        for i, cur in enumerate(poly):
            prev = poly[i - 1]
            cur_in = cur[axis] >= bound if keep_greater else cur[axis] <= bound
            prev_in = prev[axis] >= bound if keep_greater else prev[axis] <= bound
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                res.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
            if cur_in:
                res.append(cur)
        poly = res
    return np.asarray(poly, dtype=np.float64).reshape(-1, 2)


def _polygon_area(p: np.ndarray) -> float:
    return 0.5 * abs(float(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1))))


def _refresh_geometry(sample: Sample, min_area: float = 1.0) -> Sample:
    """Recompute boxes from masks (or polygons) after a crop/resize and drop vanished instances."""
    out = dict(sample)
    if "masks" in sample:
        masks = sample["masks"]
        keep = masks.flatten(1).sum(1) >= min_area
        out["boxes_xyxy"] = masks_to_boxes(masks)
        if "boxes_cxcywha" in sample:
            out["boxes_cxcywha"] = torch.stack([mask_to_rbox(m) for m in masks]) if len(masks) else torch.zeros(0, 5)
    elif "polygons" in sample:
        polys = sample["polygons"]
        keep = torch.tensor([_polygon_area(p.view(-1, 2).double().numpy()) >= min_area for p in polys],
                            dtype=torch.bool)  # fmt: skip
        rb = polygons_to_rboxes(polys)
        out["boxes_cxcywha"] = rb
        pts = polys.view(len(polys), -1, 2)
        out["boxes_xyxy"] = torch.cat([pts.amin(1), pts.amax(1)], 1) if len(polys) else torch.zeros(0, 4)
    else:
        b = sample["boxes_xyxy"]
        keep = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])) >= min_area
    return _select(out, keep)


def crop_sample(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    """Cut the window ``[top, top + height) x [left, left + width)`` (clipped to the image)."""
    h, w = _hw(sample)
    bottom, right = min(top + height, h), min(left + width, w)
    out = dict(sample)
    out["image"] = sample["image"][..., top:bottom, left:right]
    if "masks" in sample:
        out["masks"] = sample["masks"][:, top:bottom, left:right]
    if "polygons" in sample and "masks" not in sample:
        return _crop_polygons(out, sample["polygons"], top, left, bottom - top, right - left)
    if "masks" not in sample and "polygons" not in sample and "boxes_xyxy" in sample:
        b = sample["boxes_xyxy"] - torch.tensor([left, top, left, top], dtype=torch.float32)
        b[:, 0::2] = b[:, 0::2].clamp(0, right - left)
        b[:, 1::2] = b[:, 1::2].clamp(0, bottom - top)
        out["boxes_xyxy"] = b
    return _refresh_geometry(out)


def _crop_polygons(out: Sample, polygons: torch.Tensor, top: int, left: int, height: int, width: int) -> Sample:
    """Clip quadrilaterals to the window; boxes come from the clipped shapes, empty ones are dropped.

    A clipped quadrilateral can gain vertices; ``polygons`` stays ``(N, 8)`` by storing its minimum-area
    rectangle (the same rectangle as ``boxes_cxcywha``), while ``boxes_xyxy`` is the exact clipped extent.
    """
    quads, boxes, rboxes, keep = [], [], [], []
    for p in polygons.double().numpy():
        c = _clip_polygon(p.reshape(-1, 2) - [left, top], 0, 0, width, height)
        keep.append(len(c) >= 3 and _polygon_area(c) > 0)
        if not keep[-1]:
            c = np.zeros((4, 2))
        rb = min_area_rect(torch.from_numpy(c))
        quads.append(c if len(c) == 4 else rbox_to_poly(rb[None])[0].view(4, 2).numpy())
        boxes.append(np.concatenate([c.min(0), c.max(0)]))
        rboxes.append(rb.float())
    out["polygons"] = torch.tensor(np.stack(quads), dtype=torch.float32).view(-1, 8) if quads else torch.zeros(0, 8)
    out["boxes_xyxy"] = torch.tensor(np.stack(boxes), dtype=torch.float32) if boxes else torch.zeros(0, 4)
    out["boxes_cxcywha"] = torch.stack(rboxes) if rboxes else torch.zeros(0, 5)
    return _select(out, torch.tensor(keep, dtype=torch.bool))


def _select(sample: Sample, keep: torch.Tensor) -> Sample:
    """Keep the instances where ``keep`` is True (every per-instance key)."""
    return {k: (v[keep] if k in INSTANCE_KEYS else v) for k, v in sample.items()}


def resize_sample(sample: Sample, scale: float) -> Sample:
    """Rescale by ``scale`` (image bilinear, masks nearest; boxes from the resized masks or scaled)."""
    h, w = _hw(sample)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    sy, sx = nh / h, nw / w
    out = dict(sample)
    out["image"] = F.interpolate(sample["image"][None].float(), size=(nh, nw), mode="bilinear",
                                 align_corners=False, antialias=scale < 1)[0]  # fmt: skip
    if "masks" in sample:
        m = sample["masks"]
        out["masks"] = (F.interpolate(m[None].float(), size=(nh, nw), mode="nearest")[0] > 0.5).to(m.dtype) \
            if len(m) else m.new_zeros((0, nh, nw))  # fmt: skip
    if "polygons" in sample:
        p = sample["polygons"].clone()
        p[:, 0::2] *= sx
        p[:, 1::2] *= sy
        out["polygons"] = p
    if "masks" not in sample and "polygons" not in sample:
        if "boxes_xyxy" in sample:
            out["boxes_xyxy"] = sample["boxes_xyxy"] * torch.tensor([sx, sy, sx, sy])
        if "boxes_cxcywha" in sample:
            if abs(sx - sy) > 1e-6:
                raise ValueError("rotated boxes without masks or polygons can only be rescaled isotropically")
            r = sample["boxes_cxcywha"].clone()
            r[:, :4] *= sx
            out["boxes_cxcywha"] = r
        return out
    return _refresh_geometry(out)


class DetRandomFlip:
    """Flip with probability ``p``: horizontal, vertical or diagonal (both), chosen uniformly (MTP uses 0.75)."""

    def __init__(self, p: float = 0.75, directions: tuple[str, ...] = ("horizontal", "vertical", "diagonal")):
        bad = set(directions) - {"horizontal", "vertical", "diagonal"}
        if bad:
            raise ValueError(f"unknown flip directions {sorted(bad)}; use horizontal, vertical, diagonal")
        self.p, self.directions = p, directions

    def __call__(self, sample: Sample) -> Sample:
        if float(torch.rand(())) >= self.p:
            return sample
        d = self.directions[int(torch.randint(0, len(self.directions), ()))]
        return flip_sample(sample, horizontal=d != "vertical", vertical=d != "horizontal")


class DetRandomRot90:
    """Rotate by ``k * 90`` degrees, ``k`` uniform in 0..3."""

    def __call__(self, sample: Sample) -> Sample:
        return rot90_sample(sample, int(torch.randint(0, 4, ())))


class DetRandomCrop:
    """Random ``size x size`` window (the whole image along a side that is shorter); may leave no objects."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"crop size must be > 0, got {size}")
        self.size = size

    def __call__(self, sample: Sample) -> Sample:
        h, w = _hw(sample)
        top = int(torch.randint(0, max(h - self.size, 0) + 1, ()))
        left = int(torch.randint(0, max(w - self.size, 0) + 1, ()))
        return crop_sample(sample, top, left, self.size, self.size)


class DetRandomResize:
    """Rescale by a factor drawn log-uniformly from ``scale = (min, max)``."""

    def __init__(self, scale: tuple[float, float] = (0.5, 2.0)) -> None:
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must satisfy 0 < min <= max, got {scale}")
        self.scale = scale

    def __call__(self, sample: Sample) -> Sample:
        lo, hi = math.log(self.scale[0]), math.log(self.scale[1])
        return resize_sample(sample, math.exp(lo + (hi - lo) * float(torch.rand(()))))


def collate_detection(samples: list[Sample], size_divisor: int = 32) -> tuple[torch.Tensor, list[Sample]]:
    """Batch detection samples of different sizes for ``model(images, targets)``.

    Images (normalise them first: the padding value is 0, as MTP pads after normalisation) and masks are
    zero-padded at the bottom/right to the largest height/width, rounded up to ``size_divisor``; boxes do not
    move. Returns ``(images B x C x H x W, targets)``, where each target keeps the sample's other keys.
    """
    if not samples:
        raise ValueError("collate_detection needs at least one sample")
    h = max(int(s["image"].shape[-2]) for s in samples)
    w = max(int(s["image"].shape[-1]) for s in samples)
    h, w = -(-h // size_divisor) * size_divisor, -(-w // size_divisor) * size_divisor
    images, targets = [], []
    for s in samples:
        ph, pw = h - s["image"].shape[-2], w - s["image"].shape[-1]
        images.append(F.pad(s["image"], (0, pw, 0, ph)))
        t = {k: v for k, v in s.items() if k != "image"}
        if "masks" in t:
            t["masks"] = F.pad(t["masks"], (0, pw, 0, ph))
        targets.append(t)
    return torch.stack(images), targets
