"""Rotated-box ops against independent references (shapely, brute-force loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from shapely.geometry import MultiPoint, Polygon

from training.models.detection.coders import DeltaXYWHACoder, DeltaXYWHCoder, MidpointOffsetCoder
from training.ops.rotated import (
    batched_rotated_nms,
    hbox_to_rbox,
    min_area_rect,
    poly_to_rbox,
    rbox_iou,
    rbox_iou_pairwise,
    rbox_to_hbox,
    rbox_to_poly,
    regularize_rboxes,
    rotated_nms,
    rotated_roi_align,
)


def random_rboxes(n: int, gen: torch.Generator, spread: float = 40.0) -> torch.Tensor:
    c = torch.rand(n, 2, generator=gen) * spread + 20
    wh = torch.rand(n, 2, generator=gen) * 30 + 1
    a = (torch.rand(n, 1, generator=gen) * 2 - 1) * math.pi
    return torch.cat([c, wh, a], 1).double()


def shapely_poly(rbox: torch.Tensor) -> Polygon:
    return Polygon(rbox_to_poly(rbox[None])[0].view(4, 2).tolist())


def test_corner_convention_is_counter_clockwise_on_screen():
    # a = +90 deg turns the w-side (x axis) to point up on screen (towards -y).
    box = torch.tensor([[10.0, 10.0, 4.0, 2.0, math.pi / 2]])
    poly = rbox_to_poly(box).view(4, 2)
    assert torch.allclose(poly[1] - poly[0], torch.tensor([0.0, -4.0]), atol=1e-6)
    assert torch.allclose(rbox_to_hbox(box), torch.tensor([[9.0, 8.0, 11.0, 12.0]]), atol=1e-6)


def test_poly_round_trip_and_regularisation():
    gen = torch.Generator().manual_seed(0)
    boxes = random_rboxes(200, gen)
    reg = regularize_rboxes(boxes)
    assert (reg[:, 2] >= reg[:, 3]).all()
    assert ((reg[:, 4] >= -math.pi / 2) & (reg[:, 4] < math.pi / 2)).all()
    # Regularising does not change the rectangle (same polygon area and full self-overlap).
    assert torch.allclose(rbox_iou_pairwise(boxes, reg), torch.ones(200, dtype=torch.double), atol=1e-9)
    back = poly_to_rbox(rbox_to_poly(reg))
    assert torch.allclose(back, reg, atol=1e-9)


def test_iou_matches_shapely():
    gen = torch.Generator().manual_seed(1)
    b1, b2 = random_rboxes(40, gen), random_rboxes(30, gen)
    b2[:5] = b1[:5]  # identical pairs
    b2[5, :4] = b1[5, :4]  # same box, other angle
    b2[5, 4] = b1[5, 4] + math.pi / 2
    b2[6] = b1[6].clone()
    b2[6, 2:4] *= 0.5  # nested box
    ours = rbox_iou(b1, b2, chunk_size=7)
    ref = np.zeros((40, 30))
    for i in range(40):
        p = shapely_poly(b1[i])
        for j in range(30):
            q = shapely_poly(b2[j])
            ref[i, j] = p.intersection(q).area / p.union(q).area
    assert (ref > 0).sum() > 100  # the random set really overlaps
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-9)
    np.testing.assert_allclose(rbox_iou_pairwise(b1[:30], b2).numpy(), np.diag(ref[:30]), atol=1e-9)


def test_iou_float32_large_coordinates():
    gen = torch.Generator().manual_seed(2)
    b1, b2 = random_rboxes(20, gen), random_rboxes(20, gen)
    b1[:, :2] += 5000
    b2[:, :2] += 5000
    ref = rbox_iou(b1, b2)
    ours = rbox_iou(b1.float(), b2.float())
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=2e-4)


def test_axis_aligned_iou_equals_torchvision():
    from torchvision.ops import box_iou

    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(25, 2, generator=gen) * 50
    wh = torch.rand(25, 2, generator=gen) * 30 + 1
    xyxy = torch.cat([xy, xy + wh], 1).double()
    np.testing.assert_allclose(rbox_iou(hbox_to_rbox(xyxy), hbox_to_rbox(xyxy)).numpy(),
                               box_iou(xyxy, xyxy).numpy(), atol=1e-9)  # fmt: skip


def brute_force_nms(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        p = shapely_poly(boxes[i])
        if all(p.intersection(shapely_poly(boxes[k])).area / p.union(shapely_poly(boxes[k])).area <= thr
               for k in keep):  # fmt: skip
            keep.append(i)
    return keep


@pytest.mark.parametrize("thr", [0.1, 0.5])
def test_nms_matches_brute_force(thr):
    gen = torch.Generator().manual_seed(4)
    boxes = random_rboxes(60, gen)
    scores = torch.rand(60, generator=gen).double()
    assert rotated_nms(boxes, scores, thr).tolist() == brute_force_nms(boxes, scores, thr)


def test_batched_nms_is_class_aware():
    gen = torch.Generator().manual_seed(5)
    boxes = random_rboxes(50, gen)
    scores = torch.rand(50, generator=gen).double()
    labels = torch.randint(0, 3, (50,), generator=gen)
    keep = set(batched_rotated_nms(boxes, scores, labels, 0.3).tolist())
    expected = set()
    for c in range(3):
        idx = torch.nonzero(labels == c).flatten()
        expected |= {int(idx[k]) for k in brute_force_nms(boxes[idx], scores[idx], 0.3)}
    assert keep == expected


def bilinear_mmcv(feat: np.ndarray, y: float, x: float) -> np.ndarray:
    """MMCV's bilinear_interpolate rule, written as a plain loop body."""
    c, h, w = feat.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(c)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= h - 1:
        y_high = y_low = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_high = x_low = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * feat[:, y_low, x_low] + hy * lx * feat[:, y_low, x_high]
            + ly * hx * feat[:, y_high, x_low] + ly * lx * feat[:, y_high, x_high])  # fmt: skip


def brute_force_roi_align(feat, roi, ph, pw, scale, sr, aligned):
    b, cx, cy, rw, rh, a = roi.tolist()
    off = 0.5 if aligned else 0.0
    cx, cy, rw, rh = cx * scale - off, cy * scale - off, rw * scale, rh * scale
    if not aligned:
        rw, rh = max(rw, 1.0), max(rh, 1.0)
    f = feat[int(b)]
    bin_h, bin_w = rh / ph, rw / pw
    sy = sr if sr > 0 else math.ceil(rh / ph)
    sx = sr if sr > 0 else math.ceil(rw / pw)
    out = np.zeros((f.shape[0], ph, pw))
    for i in range(ph):
        for j in range(pw):
            acc = np.zeros(f.shape[0])
            for iy in range(sy):
                yy = -rh / 2 + i * bin_h + (iy + 0.5) * bin_h / sy
                for ix in range(sx):
                    xx = -rw / 2 + j * bin_w + (ix + 0.5) * bin_w / sx
                    x = cx + xx * math.cos(a) + yy * math.sin(a)
                    y = cy - xx * math.sin(a) + yy * math.cos(a)
                    acc += bilinear_mmcv(f, y, x)
            out[:, i, j] = acc / (sy * sx)
    return out


@pytest.mark.parametrize(("sr", "aligned"), [(2, True), (1, False), (0, True)])
def test_rotated_roi_align_matches_brute_force(sr, aligned):
    gen = torch.Generator().manual_seed(6)
    feat = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.double)
    rois = torch.tensor(
        [[0, 20.0, 16.0, 24.0, 10.0, 0.3],
         [1, 8.0, 30.0, 30.0, 12.0, -1.2],
         [0, 2.0, 2.0, 16.0, 8.0, 2.5],  # partly outside the map
         [1, 40.0, 10.0, 6.0, 3.0, 0.0]], dtype=torch.double)  # fmt: skip
    ours = rotated_roi_align(feat, rois, (3, 4), spatial_scale=0.25, sampling_ratio=sr, aligned=aligned)
    for k in range(rois.shape[0]):
        ref = brute_force_roi_align(feat.numpy(), rois[k], 3, 4, 0.25, sr, aligned)
        np.testing.assert_allclose(ours[k].numpy(), ref, atol=1e-10)


def test_rotated_roi_align_at_zero_angle_equals_torchvision():
    from torchvision.ops import roi_align

    gen = torch.Generator().manual_seed(7)
    feat = torch.randn(1, 4, 12, 12, generator=gen, dtype=torch.double)
    xyxy = torch.tensor([[3.0, 5.0, 30.0, 20.0], [0.0, 0.0, 47.0, 47.0]], dtype=torch.double)
    rois_r = torch.cat([torch.zeros(2, 1, dtype=torch.double), hbox_to_rbox(xyxy)], 1)
    rois_h = torch.cat([torch.zeros(2, 1, dtype=torch.double), xyxy], 1)
    ours = rotated_roi_align(feat, rois_r, 7, 0.25, sampling_ratio=2, aligned=True)
    ref = roi_align(feat, rois_h, 7, 0.25, sampling_ratio=2, aligned=True)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-10)


def test_rotated_roi_align_backward():
    feat = torch.randn(1, 2, 8, 8, dtype=torch.double, requires_grad=True)
    rois = torch.tensor([[0, 16.0, 16.0, 20.0, 8.0, 0.7]], dtype=torch.double)
    torch.autograd.gradcheck(lambda f: rotated_roi_align(f, rois, 2, 0.25, 2), (feat,))


def test_min_area_rect_matches_shapely():
    gen = torch.Generator().manual_seed(8)
    for _ in range(30):
        pts = torch.rand(7, 2, generator=gen).double() * 50
        box = min_area_rect(pts)
        ref = MultiPoint(pts.tolist()).minimum_rotated_rectangle
        assert math.isclose(float(box[2] * box[3]), ref.area, rel_tol=1e-9)
        # Minimal area (shapely's value) and it contains every point; ties between rectangles are legal.
        assert shapely_poly(box).buffer(1e-7).contains(MultiPoint(pts.tolist()))
    # An exact rectangle gives itself back.
    rb = regularize_rboxes(torch.tensor([[30.0, 20.0, 12.0, 5.0, 0.4]], dtype=torch.double))
    assert torch.allclose(min_area_rect(rbox_to_poly(rb).view(4, 2)), rb[0], atol=1e-9)


def test_delta_xywh_round_trip():
    gen = torch.Generator().manual_seed(9)
    xy = torch.rand(50, 2, generator=gen) * 50
    anchors = torch.cat([xy, xy + torch.rand(50, 2, generator=gen) * 30 + 1], 1).double()
    xy = torch.rand(50, 2, generator=gen) * 50
    gts = torch.cat([xy, xy + torch.rand(50, 2, generator=gen) * 30 + 1], 1).double()
    coder = DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2))
    assert torch.allclose(coder.decode(anchors, coder.encode(anchors, gts)), gts, atol=1e-9)


def test_midpoint_offset_round_trip():
    gen = torch.Generator().manual_seed(10)
    gts = regularize_rboxes(random_rboxes(100, gen))
    gts[:10, 4] = 0.0  # horizontal boxes hit the tie-breaking rule
    gts[10:20, 4] = -math.pi / 2
    xy = torch.rand(100, 2, generator=gen).double() * 60
    anchors = torch.cat([xy, xy + torch.rand(100, 2, generator=gen).double() * 40 + 4], 1)
    coder = MidpointOffsetCoder()
    deltas = coder.encode(anchors, gts)
    assert (deltas[:, 4:].abs() <= 0.5 / 0.5 + 1e-9).all()  # |da|, |db| <= 0.5 before the 0.5 std
    decoded = coder.decode(anchors, deltas)
    np.testing.assert_allclose(rbox_iou_pairwise(decoded, gts).numpy(), 1.0, atol=1e-9)
    assert torch.allclose(decoded[:, :4], gts[:, :4], atol=1e-7)


def test_delta_xywha_round_trip_and_edge_swap():
    gen = torch.Generator().manual_seed(11)
    props = regularize_rboxes(random_rboxes(100, gen))
    gts = regularize_rboxes(random_rboxes(100, gen))
    coder = DeltaXYWHACoder()
    deltas = coder.encode(props, gts)
    # edge_swap keeps the angle delta within +-pi/4 (before the 0.1 std)
    assert (deltas[:, 4].abs() * 0.1 <= math.pi / 4 + 1e-9).all()
    decoded = coder.decode(props, deltas)
    np.testing.assert_allclose(rbox_iou_pairwise(decoded, gts).numpy(), 1.0, atol=1e-9)
    assert torch.allclose(decoded, gts, atol=1e-7)
    # A proposal equal to the target encodes to zero.
    assert torch.allclose(coder.encode(gts, gts), torch.zeros(100, 5, dtype=torch.double), atol=1e-9)


def test_coder_values_follow_mmrotate_meaning():
    # DeltaXYWHA: a gt turned 0.1 rad counter-clockwise is MMRotate theta = -0.1 -> da = -0.1 / std 0.1 = -1.
    prop = torch.tensor([[50.0, 40.0, 20.0, 10.0, 0.0]], dtype=torch.double)
    gt = torch.tensor([[52.0, 40.0, 20.0, 10.0, 0.1]], dtype=torch.double)
    d = DeltaXYWHACoder().encode(prop, gt)[0]
    assert torch.allclose(d, torch.tensor([1.0, 0.0, 0.0, 0.0, -1.0], dtype=torch.double), atol=1e-9)
    # proj_xy: offsets are measured along the proposal axes
    prop_r = torch.tensor([[50.0, 40.0, 20.0, 10.0, math.pi / 2 - 1e-12]], dtype=torch.double)
    d = DeltaXYWHACoder().encode(prop_r, torch.tensor([[51.0, 40.0, 20.0, 10.0, math.pi / 2 - 1e-12]]).double())[0]
    # u = (cos a, -sin a) = (0, -1), v = (sin a, cos a) = (1, 0): offset (1, 0) -> dx 0, dy = 1 / h = 0.1 -> / 0.1
    assert torch.allclose(d[:2], torch.tensor([0.0, 1.0], dtype=torch.double), atol=1e-9)
    # MidpointOffset: an axis-aligned gt equal to its anchor -> da = db = 0.5 (normalised by 0.5 -> 1).
    anchor = torch.tensor([[10.0, 20.0, 40.0, 30.0]], dtype=torch.double)
    d = MidpointOffsetCoder().encode(anchor, hbox_to_rbox(anchor))[0]
    assert torch.allclose(d, torch.tensor([0, 0, 0, 0, 1.0, 1.0], dtype=torch.double), atol=1e-9)


def test_nms_many_boxes_matches_dense_greedy():
    # > 1024 boxes exercises the chunked overlap pre-filter; the dense reference uses the shapely-checked rbox_iou.
    gen = torch.Generator().manual_seed(12)
    boxes = random_rboxes(1100, gen, spread=300.0).float()
    scores = torch.rand(1100, generator=gen)
    order = scores.argsort(descending=True, stable=True)
    iou = rbox_iou(boxes[order], boxes[order])
    removed = torch.zeros(1100, dtype=torch.bool)
    expected = []
    for i in range(1100):
        if not removed[i]:
            expected.append(int(order[i]))
            removed |= iou[i] > 0.3
    assert rotated_nms(boxes, scores, 0.3).tolist() == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_iou_degenerate_configurations(dtype):
    b = torch.tensor(
        [[10.0, 10.0, 4.0, 2.0, 0.0],  # reference
         [14.0, 10.0, 4.0, 2.0, 0.0],  # shares an edge -> 0
         [11.0, 10.0, 2.0, 2.0, 0.0],  # the right half: inside, sharing three edges
         [10.0, 10.0, 2.0, 4.0, math.pi / 2],  # the same rectangle, other representation -> 1
         [10.0, 10.0, 2.0, 2.0, math.pi / 4],  # rotated square through the middle
         [10.0, 10.0, 0.0, 2.0, 0.3],  # zero area -> 0
         [12.0, 11.0, 2.0, 2.0, 0.0]],  # corner-touching overlap of a quarter
        dtype=dtype)  # fmt: skip
    ours = rbox_iou(b[:1], b)[0].double().numpy()
    p = shapely_poly(b[0].double())
    ref = [p.intersection(shapely_poly(q.double())).area / p.union(shapely_poly(q.double())).area
           if float(q[2] * q[3]) > 0 else 0.0 for q in b]  # fmt: skip
    np.testing.assert_allclose(ours, ref, atol=1e-5 if dtype == torch.float32 else 1e-12)
    assert ours[1] == pytest.approx(0.0, abs=1e-6) and ours[3] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("thr", [0.1, 0.7])
def test_nms_on_a_pile_of_boxes_matches_dense_greedy(thr):
    """Hundreds of boxes on top of each other (an untrained model's output): more overlapping pairs than the
    eager path takes, so only kept boxes' IoUs are computed; the result equals greedy NMS over all IoUs."""
    from training.ops import rotated

    gen = torch.Generator().manual_seed(13)
    boxes = random_rboxes(400, gen, spread=15.0).float()
    scores = torch.rand(400, generator=gen)
    hull = rbox_to_hbox(boxes)
    lt = torch.maximum(hull[:, None, :2], hull[None, :, :2])
    rb = torch.minimum(hull[:, None, 2:], hull[None, :, 2:])
    assert int(((rb - lt) > 0).all(-1).sum()) // 2 > rotated._NMS_EAGER_PAIRS  # the lazy path runs
    order = scores.argsort(descending=True, stable=True)
    iou = rbox_iou(boxes[order], boxes[order])
    removed = torch.zeros(400, dtype=torch.bool)
    expected = []
    for i in range(400):
        if not removed[i]:
            expected.append(int(order[i]))
            removed |= iou[i] > thr
    got = rotated_nms(boxes, scores, thr).tolist()
    assert got == expected and 1 < len(got) < 400
