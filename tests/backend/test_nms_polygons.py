"""backend.tasks.nms_polygons against a brute-force greedy NMS on shapely polygon IoUs.

The fast paths (one bulk STR-tree query, vectorised intersections, pixel counting for mask outlines) must keep
exactly the polygons the textbook loop keeps, in the same order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely

from backend.tasks import _mask_polygon, nms_polygons, rotated_box_polygon


def brute_force(polys: list, scores: np.ndarray, labels: np.ndarray, thr: float) -> list[int]:
    keep: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        p = polys[i]
        if all(labels[k] != labels[i] or p.intersection(polys[k]).area
               / (p.area + polys[k].area - p.intersection(polys[k]).area) <= thr for k in keep):
            keep.append(int(i))
    return keep


def random_masks(n: int, rng: np.random.Generator) -> list:
    """Blobby many-vertex pixel outlines (like an untrained mask head's), many overlapping, some in pieces."""
    polys = []
    while len(polys) < n:
        h, w = rng.integers(6, 30, size=2)
        m = rng.random((h, w)) < 0.9
        m[h // 2, :] = True  # mostly one piece, with holes and ragged edges
        poly = _mask_polygon(m, int(rng.integers(0, 25)), int(rng.integers(0, 25)))
        if poly is not None:
            polys.append(poly)
    return polys


@pytest.mark.parametrize("thr", [0.1, 0.3, 0.5])
def test_mask_nms_by_pixel_counts_equals_polygon_nms(thr):
    rng = np.random.default_rng(7)
    polys = random_masks(80, rng)
    assert any(p.geom_type == "MultiPolygon" for p in polys) and max(len(p.interiors) if p.geom_type == "Polygon"
                                                                     else 0 for p in polys) > 0
    scores = rng.random(80).round(2)  # ties: the first of equal scores wins in every variant
    labels = rng.integers(0, 2, 80)
    want = brute_force(polys, scores, labels, thr)
    assert 1 < len(want) < 80
    assert nms_polygons(polys, scores, labels, thr, pixel_masks=True) == want
    assert nms_polygons(polys, scores, labels, thr) == want


@pytest.mark.parametrize("thr", [0.1, 0.5])
def test_box_and_rotated_box_nms_equal_brute_force(thr):
    rng = np.random.default_rng(8)
    rot = [rotated_box_polygon(*rng.uniform(0, 60, 2), *rng.uniform(2, 25, 2), rng.uniform(-math.pi, math.pi))
           for _ in range(120)]
    boxes = [shapely.box(x, y, x + w, y + h) for x, y, w, h in rng.uniform(0, 50, (120, 4))]
    for polys in (rot, boxes):
        scores, labels = rng.random(120), rng.integers(0, 3, 120)
        want = brute_force(polys, scores, labels, thr)
        assert 3 < len(want) < 120
        assert nms_polygons(polys, scores, labels, thr) == want


def test_empty_and_single():
    assert nms_polygons([], np.zeros(0), np.zeros(0, np.int64), 0.5) == []
    sq = shapely.box(0, 0, 2, 2)
    assert nms_polygons([sq], np.array([0.3]), np.array([1]), 0.5, pixel_masks=True) == [0]


def test_mask_polygon_is_exactly_the_mask():
    """The outline of a noisy mask (holes, pieces touching at corners) covers exactly its pixels, validly."""
    rng = np.random.default_rng(9)
    for density in (0.5, 0.8, 1.0):
        mask = np.zeros((40, 50), bool)
        mask[5:35, 8:45] = rng.random((30, 37)) < density
        poly = _mask_polygon(mask, 100, 200)
        assert poly.is_valid and poly.area == mask.sum()
        yy, xx = np.mgrid[200:240, 100:150]
        assert np.array_equal(shapely.contains_xy(poly, xx + 0.5, yy + 0.5), mask)
        if density < 1:
            assert poly.geom_type == "MultiPolygon" and any(len(p.interiors) for p in poly.geoms)
    assert _mask_polygon(np.zeros((4, 4), bool), 0, 0) is None
