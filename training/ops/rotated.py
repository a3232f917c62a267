"""Rotated-box geometry in plain PyTorch: conversions, IoU, NMS and RoIAlign.

Box convention used everywhere in RSFM (``boxes_cxcywha``, shape ``(N, 5)``):

* ``cx, cy``: centre in pixels (x to the right, y down, pixel centres at +0.5 as in torchvision).
* ``w, h``: side lengths in pixels; ``w`` is the side along the box's own x axis.
* ``a``: angle in **radians, counter-clockwise as seen on the image** (y axis pointing down). The box's
  x axis is the unit vector ``u = (cos a, -sin a)`` and its y axis ``v = (sin a, cos a)`` in pixel
  coordinates, so ``a > 0`` turns the w-side upwards on screen. (MMRotate's ``theta`` is clockwise:
  ``a = -theta``.)
* Regularised form (:func:`regularize_rboxes`, MMRotate's ``le90`` with the sign flipped): ``w >= h`` and
  ``a`` in ``[-pi/2, pi/2)``.

Polygons are ``(N, 8)`` tensors ``x1 y1 x2 y2 x3 y3 x4 y4`` in pixels, in the corner order
``c - u w/2 - v h/2, c + u w/2 - v h/2, c + u w/2 + v h/2, c - u w/2 + v h/2``.

No op here needs a compiled extension. IoU uses exact convex-polygon intersection (vertices of each
quadrilateral inside the other plus edge crossings, sorted by angle, shoelace area), vectorised over
pairs and chunked to bound memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "norm_angle",
    "regularize_rboxes",
    "rbox_to_corners",
    "rbox_to_poly",
    "poly_to_rbox",
    "rbox_to_hbox",
    "hbox_to_rbox",
    "min_area_rect",
    "rbox_area",
    "rbox_iou",
    "rbox_iou_pairwise",
    "rotated_nms",
    "batched_rotated_nms",
    "rotated_roi_align",
]


def norm_angle(angle: torch.Tensor) -> torch.Tensor:
    """Wrap angles (radians) into ``[-pi/2, pi/2)``; a rectangle is symmetric under ``+pi``."""
    return torch.remainder(angle + math.pi / 2, math.pi) - math.pi / 2


def regularize_rboxes(rboxes: torch.Tensor) -> torch.Tensor:
    """Return the same rectangles with ``w >= h`` and angle in ``[-pi/2, pi/2)``.

    Args:
        rboxes: ``(..., 5)`` cx, cy, w, h, a.
    """
    cx, cy, w, h, a = rboxes.unbind(-1)
    swap = w < h
    w2 = torch.where(swap, h, w)
    h2 = torch.where(swap, w, h)
    a2 = norm_angle(torch.where(swap, a + math.pi / 2, a))
    return torch.stack([cx, cy, w2, h2, a2], dim=-1)


def _axes(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit box axes ``u`` (along w) and ``v`` (along h), each ``(..., 2)`` in pixel coordinates."""
    cos, sin = torch.cos(a), torch.sin(a)
    return torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)


def rbox_to_corners(rboxes: torch.Tensor) -> torch.Tensor:
    """``(..., 5)`` rotated boxes -> ``(..., 4, 2)`` corners (order in the module docstring)."""
    c = rboxes[..., :2]
    u, v = _axes(rboxes[..., 4])
    hu = u * rboxes[..., 2:3] / 2
    hv = v * rboxes[..., 3:4] / 2
    return torch.stack([c - hu - hv, c + hu - hv, c + hu + hv, c - hu + hv], dim=-2)


def rbox_to_poly(rboxes: torch.Tensor) -> torch.Tensor:
    """``(N, 5)`` rotated boxes -> ``(N, 8)`` polygons."""
    return rbox_to_corners(rboxes).flatten(-2)


def poly_to_rbox(polys: torch.Tensor) -> torch.Tensor:
    """Rectangle polygons ``(N, 8)`` -> regularised rotated boxes ``(N, 5)``.

    The input must be (close to) a rectangle, e.g. the output of :func:`rbox_to_poly` or of the
    midpoint-offset decoder. The centre is the mean of the corners, ``w``/``h`` the mean lengths of opposite
    edges and the angle that of the first edge. For arbitrary quadrilaterals use :func:`min_area_rect`.
    """
    p = polys.reshape(-1, 4, 2)
    c = p.mean(dim=1)
    e1 = p[:, 1] - p[:, 0]
    e2 = p[:, 2] - p[:, 1]
    w = (e1.norm(dim=-1) + (p[:, 2] - p[:, 3]).norm(dim=-1)) / 2
    h = (e2.norm(dim=-1) + (p[:, 3] - p[:, 0]).norm(dim=-1)) / 2
    a = torch.atan2(-e1[:, 1], e1[:, 0])  # y is down, so CCW angle uses -dy
    return regularize_rboxes(torch.stack([c[:, 0], c[:, 1], w, h, a], dim=-1))


def rbox_to_hbox(rboxes: torch.Tensor) -> torch.Tensor:
    """Axis-aligned hull ``(N, 4)`` xyxy of rotated boxes ``(N, 5)``."""
    corners = rbox_to_corners(rboxes)
    return torch.cat([corners.amin(dim=-2), corners.amax(dim=-2)], dim=-1)


def hbox_to_rbox(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    """Axis-aligned xyxy boxes ``(N, 4)`` -> rotated boxes ``(N, 5)`` with angle 0 (not regularised)."""
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.zeros_like(x1)], dim=-1)


def rbox_area(rboxes: torch.Tensor) -> torch.Tensor:
    """``(N,)`` areas ``w * h`` of rotated boxes ``(N, 5)``."""
    return rboxes[..., 2] * rboxes[..., 3]


def _convex_hull(points: torch.Tensor) -> torch.Tensor:
    """Convex hull (monotone chain) of a ``(K, 2)`` point set; returns ``(H, 2)`` in order."""
    pts = sorted({(float(x), float(y)) for x, y in points.tolist()})
    if len(pts) <= 2:
        return torch.tensor(pts, dtype=points.dtype).reshape(-1, 2)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    upper: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return torch.tensor(lower[:-1] + upper[:-1], dtype=points.dtype)


def min_area_rect(points: torch.Tensor) -> torch.Tensor:
    """Minimum-area enclosing rectangle of one point set (e.g. an NWPU polygon).

    Rotating calipers: the optimal rectangle has a side collinear with a hull edge, so every hull edge
    direction is tried.

    Args:
        points: ``(K, 2)`` x, y in pixels, K >= 1.

    Returns:
        ``(5,)`` regularised rotated box. Degenerate sets give zero width/height.
    """
    if points.ndim != 2 or points.shape[-1] != 2 or points.shape[0] == 0:
        raise ValueError(f"min_area_rect needs a (K, 2) point tensor with K >= 1, got {tuple(points.shape)}")
    pts = points.double()
    hull = _convex_hull(pts)
    if hull.shape[0] == 1:
        x, y = hull[0].tolist()
        return torch.tensor([x, y, 0.0, 0.0, 0.0], dtype=points.dtype)
    edges = torch.roll(hull, -1, dims=0) - hull
    ang = torch.atan2(-edges[:, 1], edges[:, 0])  # CCW angle of each edge
    u, v = _axes(ang)  # (E, 2) each
    pu = hull @ u.T  # (H, E) coordinates along each candidate axis
    pv = hull @ v.T
    w = pu.amax(0) - pu.amin(0)
    h = pv.amax(0) - pv.amin(0)
    best = int(torch.argmin(w * h))
    cu = (pu[:, best].amax() + pu[:, best].amin()) / 2
    cv = (pv[:, best].amax() + pv[:, best].amin()) / 2
    c = cu * u[best] + cv * v[best]
    box = torch.stack([c[0], c[1], w[best], h[best], ang[best]])
    return regularize_rboxes(box).to(points.dtype)


def _cross2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside_convex(points: torch.Tensor, corners: torch.Tensor, eps: float) -> torch.Tensor:
    """Whether ``points (..., P, 2)`` lie in the convex quad ``corners (..., 4, 2)`` (either winding)."""
    edges = torch.roll(corners, -1, dims=-2) - corners  # (..., 4, 2)
    rel = points.unsqueeze(-2) - corners.unsqueeze(-3)  # (..., P, 4, 2)
    s = _cross2(edges.unsqueeze(-3), rel)  # (..., P, 4)
    return (s >= -eps).all(-1) | (s <= eps).all(-1)


def _intersection_area(c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """Exact area of the intersection of convex quads ``c1, c2 (..., 4, 2)`` -> ``(...)``."""
    scale = torch.maximum(c1.abs().amax((-1, -2)), c2.abs().amax((-1, -2))).clamp(min=1.0)
    # Tolerance for "on the edge" (a cross product, so squared length units); on-edge vertices are
    # also found as edge crossings, so a tight tolerance loses nothing.
    eps = (16 * torch.finfo(c1.dtype).eps * scale**2)[..., None, None]
    in1 = _inside_convex(c1, c2, eps)  # vertices of quad 1 inside quad 2: (..., 4)
    in2 = _inside_convex(c2, c1, eps)
    # Edge crossings: segment p + t r (quad 1) against q + s e (quad 2), all 16 pairs.
    p = c1.unsqueeze(-2)  # (..., 4, 1, 2)
    r = (torch.roll(c1, -1, -2) - c1).unsqueeze(-2)
    q = c2.unsqueeze(-3)  # (..., 1, 4, 2)
    e = (torch.roll(c2, -1, -2) - c2).unsqueeze(-3)
    denom = _cross2(r, e)  # (..., 4, 4)
    qp = q - p
    safe = torch.where(denom.abs() > 1e-12, denom, torch.ones_like(denom))
    t = _cross2(qp, e) / safe
    s = _cross2(qp, r) / safe
    hit = (denom.abs() > 1e-12) & (t >= 0) & (t <= 1) & (s >= 0) & (s <= 1)
    cross_pts = p + t.unsqueeze(-1) * r  # (..., 4, 4, 2)
    pts = torch.cat([c1, c2, cross_pts.flatten(-3, -2)], dim=-2)  # (..., 24, 2)
    valid = torch.cat([in1, in2, hit.flatten(-2)], dim=-1)  # (..., 24)

    n_valid = valid.sum(-1, keepdim=True).clamp(min=1)
    centre = (pts * valid.unsqueeze(-1)).sum(-2) / n_valid  # (..., 2)
    rel = pts - centre.unsqueeze(-2)
    ang = torch.atan2(rel[..., 1], rel[..., 0])
    ang = torch.where(valid, ang, torch.full_like(ang, 10.0))  # invalid points sort last
    order = ang.argsort(dim=-1)
    pts = torch.gather(pts, -2, order.unsqueeze(-1).expand_as(pts))
    valid = torch.gather(valid, -1, order)
    # Invalid slots repeat the first point: zero-length edges add nothing to the shoelace sum.
    pts = torch.where(valid.unsqueeze(-1), pts, pts[..., :1, :])
    area = _cross2(pts, torch.roll(pts, -1, -2)).sum(-1).abs() / 2
    return torch.where(valid.sum(-1) >= 3, area, torch.zeros_like(area))


def rbox_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, chunk_size: int = 65536) -> torch.Tensor:
    """IoU matrix of rotated boxes.

    Only pairs whose axis-aligned hulls overlap go through the exact polygon intersection (usually a
    small fraction), ``chunk_size`` pairs at a time to bound memory.

    Args:
        boxes1: ``(N, 5)``; boxes2: ``(M, 5)`` (cx, cy, w, h, a).

    Returns:
        ``(N, M)`` IoU in [0, 1]; pairs with a zero-area box give 0.
    """
    n, m = boxes1.shape[0], boxes2.shape[0]
    out = boxes1.new_zeros((n, m))
    if n == 0 or m == 0:
        return out
    i_idx, j_idx = _hull_overlap_pairs(rbox_to_hbox(boxes1), rbox_to_hbox(boxes2))
    for start in range(0, i_idx.numel(), chunk_size):
        i, j = i_idx[start : start + chunk_size], j_idx[start : start + chunk_size]
        out[i, j] = rbox_iou_pairwise(boxes1[i], boxes2[j])
    return out


def _hull_overlap_pairs(hull1: torch.Tensor, hull2: torch.Tensor, rows: int = 1024):
    """Index pairs ``(i, j)`` whose xyxy boxes overlap with positive area, computed in row chunks."""
    found_i, found_j = [], []
    for start in range(0, hull1.shape[0], rows):
        h = hull1[start : start + rows]
        lt = torch.maximum(h[:, None, :2], hull2[None, :, :2])
        rb = torch.minimum(h[:, None, 2:], hull2[None, :, 2:])
        i, j = torch.nonzero(((rb - lt) > 0).all(-1), as_tuple=True)
        found_i.append(i + start)
        found_j.append(j)
    return torch.cat(found_i), torch.cat(found_j)


def rbox_iou_pairwise(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of aligned pairs: ``(N, 5)`` and ``(N, 5)`` -> ``(N,)``."""
    if boxes1.shape != boxes2.shape:
        raise ValueError(
            f"pairwise IoU needs equal shapes, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )
    origin = boxes1[:, None, :2]
    inter = _intersection_area(rbox_to_corners(boxes1) - origin, rbox_to_corners(boxes2) - origin)
    union = rbox_area(boxes1) + rbox_area(boxes2) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter)).clamp(0, 1)


def rotated_nms(rboxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS on rotated boxes, like ``torchvision.ops.nms``.

    Args:
        rboxes: ``(N, 5)``; scores: ``(N,)``; iou_threshold: boxes with IoU > threshold to a kept,
            higher-scoring box are removed.

    Returns:
        int64 indices of kept boxes, by decreasing score.
    """
    if rboxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=rboxes.device)
    order = scores.argsort(descending=True, stable=True)
    boxes = rboxes[order]
    n = order.numel()
    # Exact IoU only for pairs whose axis-aligned hulls overlap (usually a small fraction of all pairs).
    hull = rbox_to_hbox(boxes)
    i_idx, j_idx = _hull_overlap_pairs(hull, hull)
    later = j_idx > i_idx  # only a higher-scoring box can suppress a lower-scoring one
    i_idx, j_idx = i_idx[later], j_idx[later]
    ii, jj = i_idx.cpu(), j_idx.cpu()
    perm = torch.argsort(ii, stable=True)  # the pairs grouped by their first box (CSR)
    ii, jj = ii[perm], jj[perm]
    starts = torch.searchsorted(ii, torch.arange(n + 1)).tolist()
    # Few pairs: every IoU in one vectorised call. Many pairs (typically an untrained or low-threshold model:
    # hundreds of boxes piled on each other): the IoU of each *kept* box with its still-alive later neighbours
    # only, so boxes removed early never have their own pairs evaluated. Both give the same kept set (each
    # pair's IoU comes from the same element-wise formula).
    over = None
    if ii.numel() <= _NMS_EAGER_PAIRS:
        over = (rbox_iou_pairwise(boxes[ii.to(boxes.device)], boxes[jj.to(boxes.device)]) > iou_threshold).cpu()
    removed = torch.zeros(n, dtype=torch.bool)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        lo, hi = starts[i], starts[i + 1]
        cand = jj[lo:hi]
        if over is not None:
            removed[cand[over[lo:hi]]] = True
            continue
        cand = cand[~removed[cand]]
        if cand.numel():
            iou = rbox_iou_pairwise(boxes[i].expand(cand.numel(), -1), boxes[cand.to(boxes.device)])
            removed[cand[(iou > iou_threshold).cpu()]] = True
    return order[torch.tensor(keep, dtype=torch.long, device=rboxes.device)]


_NMS_EAGER_PAIRS = 4096  # rotated_nms: up to this many overlapping pairs, all IoUs in one vectorised call


def batched_rotated_nms(
    rboxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Class-aware rotated NMS: boxes of different ``labels`` never suppress each other.

    Returns:
        int64 indices of kept boxes, by decreasing score.
    """
    keep = [idx[rotated_nms(rboxes[idx], scores[idx], iou_threshold)]
            for idx in (torch.nonzero(labels == c).flatten() for c in labels.unique())]  # fmt: skip
    if not keep:
        return torch.empty(0, dtype=torch.long, device=rboxes.device)
    keep_t = torch.cat(keep)
    return keep_t[scores[keep_t].argsort(descending=True, stable=True)]


def rotated_roi_align(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> torch.Tensor:
    """RoIAlign inside rotated boxes (MMCV ``RoIAlignRotated`` semantics, in the RSFM angle convention).

    Each RoI is split into ``PH x PW`` bins along its own axes; each bin averages ``s x s`` bilinear
    samples at ``(i + 0.5) / s`` of the bin (``s = sampling_ratio``; ``0`` = adaptive
    ``ceil(roi_size / bins)`` per RoI, as MMCV). Bilinear rule as MMCV: a sample outside
    ``[-1, H] x [-1, W]`` is 0, otherwise coordinates are clamped to the map before interpolation.

    Args:
        features: ``(B, C, H, W)`` feature map.
        rois: ``(R, 6)`` batch index, cx, cy, w, h, a in input-image pixels.
        output_size: ``PH`` or ``(PH, PW)``.
        spatial_scale: feature pixels per image pixel (1 / stride).
        sampling_ratio: samples per bin side; ``0`` = adaptive.
        aligned: shift the centre by -0.5 feature pixel (pixel-centre model, MMCV ``aligned=True``);
            if False, sizes are clamped to at least 1 feature pixel as MMCV does.

    Returns:
        ``(R, C, PH, PW)``; row index runs along the box's y axis ``v``, column along ``u``.
    """
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    if sampling_ratio < 0:
        raise ValueError(f"sampling_ratio must be >= 0 (0 = adaptive), got {sampling_ratio}")
    r = rois.shape[0]
    b, c, h, w = features.shape
    if r == 0:
        return features.new_zeros((0, c, ph, pw))
    offset = 0.5 if aligned else 0.0
    cx = rois[:, 1] * spatial_scale - offset
    cy = rois[:, 2] * spatial_scale - offset
    rw = rois[:, 3] * spatial_scale
    rh = rois[:, 4] * spatial_scale
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    if sampling_ratio > 0:
        groups = [(torch.arange(r, device=rois.device), sampling_ratio, sampling_ratio)]
    else:  # adaptive: group RoIs by their (sy, sx) sample counts
        sy = torch.ceil(rh / ph).clamp(min=1).long()
        sx = torch.ceil(rw / pw).clamp(min=1).long()
        key = sy * 100000 + sx
        groups = [
            (torch.nonzero(key == k).flatten(), int(k) // 100000, int(k) % 100000)
            for k in key.unique().tolist()
        ]
    out = features.new_zeros((r, c, ph, pw))
    for idx, sy, sx in groups:
        out[idx] = _rotated_roi_align_fixed(
            features, rois[idx, 0].long(), cx[idx], cy[idx], rw[idx], rh[idx], rois[idx, 5], ph, pw, sy, sx
        )
    return out


def _rotated_roi_align_fixed(features, batch_idx, cx, cy, rw, rh, angle, ph, pw, sy, sx):
    """Worker of :func:`rotated_roi_align` for a fixed sample count ``sy x sx`` per bin.

    One ``grid_sample`` per sub-sample position keeps memory at ``R x C x PH x PW``.
    """
    b, c, h, w = features.shape
    r = cx.shape[0]
    dev, dt = features.device, features.dtype
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    bin_y = (torch.arange(ph, device=dev, dtype=dt) / ph - 0.5)[None, :, None]  # bin starts, (1, PH, 1)
    bin_x = (torch.arange(pw, device=dev, dtype=dt) / pw - 0.5)[None, None, :]
    images = [(bi, torch.nonzero(batch_idx == bi).flatten()) for bi in batch_idx.unique().tolist()]
    out = features.new_zeros((r, c, ph, pw))
    for iy in range(sy):
        # Offsets in the box frame at sub-sample (iy, ix) of every bin: (R, PH, 1) along v, (R, 1, PW) along u.
        yy = (bin_y + (iy + 0.5) / (sy * ph)) * rh[:, None, None]
        for ix in range(sx):
            xx = (bin_x + (ix + 0.5) / (sx * pw)) * rw[:, None, None]
            x = cx[:, None, None] + xx * cos + yy * sin  # u = (cos, -sin), v = (sin, cos)
            y = cy[:, None, None] - xx * sin + yy * cos
            valid = ((y >= -1) & (y <= h) & (x >= -1) & (x <= w)).to(dt)
            # align_corners=True maps -1..1 to pixel centres 0..W-1; clamped coordinates make it exact bilinear.
            gx = x.clamp(0, w - 1) / max(w - 1, 1) * 2 - 1
            gy = y.clamp(0, h - 1) / max(h - 1, 1) * 2 - 1
            grid = torch.stack([gx, gy], dim=-1)  # (R, PH, PW, 2)
            for bi, sel in images:
                sampled = F.grid_sample(features[bi : bi + 1], grid[sel].reshape(1, -1, pw, 2), mode="bilinear",
                                        padding_mode="border", align_corners=True)  # fmt: skip
                out[sel] += sampled.reshape(c, sel.numel(), ph, pw).transpose(0, 1) * valid[sel, None]
    return out / (sy * sx)
