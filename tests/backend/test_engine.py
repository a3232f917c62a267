"""The tiled engine: tiling geometry, blending, and tiled == whole-image for a pointwise model."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from make_fixtures import fixture_pixels, write_fixture_raster

from backend.engine import (
    EngineParams,
    RasterSource,
    blend_weights,
    core_bounds,
    iter_blocks,
    run_dense,
    tile_origins,
)
from backend.errors import BadRequestError
from backend.raster import plan_raster
from training.package import PackageConfig

# Integer-valued logits with distinct values per class: blending (a weighted mean of identical values per
# pixel) changes them by float rounding only, far below the gap of 1 between classes, so the argmax must
# match the whole-image reference exactly.
_W = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, -1, 1]], dtype=np.float32)


def pointwise_model(x: np.ndarray) -> np.ndarray:
    """``B x 3 x H x W`` -> ``B x 4 x H x W`` integer logits (a 1x1 convolution)."""
    return np.einsum("kc,bchw->bkhw", _W, np.round(x)).astype(np.float32)


def reference(pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    x = pixels.astype(np.float32)
    x[:, ~valid] = 0.0
    cls = pointwise_model(x[None])[0].argmax(0).astype(np.uint8)
    cls[~valid] = 255
    return cls


def _config(**kw) -> PackageConfig:
    base = dict(name="pointwise", task="semantic_segmentation", architecture="none",
                classes=[{"name": f"c{i}", "color": "#000000"} for i in range(4)], bands=["r", "g", "b"],
                mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], gsd_m=1.0, gsd_range_m=(0.5, 2.0))
    base.update(kw)
    return PackageConfig(**base)


def _run(path, params: EngineParams, options=None):
    plan = plan_raster(_config(), str(path), options or {})
    out = np.full((int(plan.window.height), int(plan.window.width)), 254, dtype=np.uint8)
    ticks = []

    def sink(win, scores, valid):
        cls = scores.argmax(0).astype(np.uint8)
        cls[~valid] = 255
        r, c = int(win.row_off), int(win.col_off)
        assert (out[r: r + cls.shape[0], c: c + cls.shape[1]] == 254).all(), "block written twice"
        out[r: r + cls.shape[0], c: c + cls.shape[1]] = cls

    with RasterSource(plan, [0, 0, 0], [1, 1, 1]) as src:
        run_dense(src, pointwise_model, params, sink, lambda d, t: ticks.append((d, t)))
    assert ticks and ticks[-1][0] == ticks[-1][1]
    return out


def test_tile_origins_cover_and_snap():
    assert tile_origins(10, 16, 12) == [0]
    assert tile_origins(16, 16, 12) == [0]
    assert tile_origins(17, 16, 12) == [0, 1]
    assert tile_origins(100, 32, 24) == [0, 24, 48, 68]
    for length in range(1, 200, 7):
        o = tile_origins(length, 32, 20)
        assert o[0] == 0 and min(o[-1] + 32, length) == length
        assert all(b - a <= 20 for a, b in zip(o, o[1:], strict=False))


def test_core_bounds_partition():
    for length in (5, 64, 100, 333):
        o = tile_origins(length, 32, 24)
        b = core_bounds(o, 32, length)
        assert b[0][0] == 0 and b[-1][1] == length
        assert all(b[i][1] == b[i + 1][0] for i in range(len(b) - 1))
        assert all(o[i] <= lo and hi <= o[i] + 32 for i, (lo, hi) in enumerate(b))


def test_blend_weights_positive_and_peaked():
    w = blend_weights(32, 8)
    assert w.shape == (32, 32) and (w > 0).all()
    assert w[16, 16] == 1.0 and w[0, 0] < w[4, 4] < w[10, 10]
    assert (blend_weights(16, 0) == 1).all()


def test_blocks_cover_exactly_once():
    blocks = iter_blocks(130, 70, 32, 8)
    seen = np.zeros((130, 70), dtype=int)
    for b in blocks:
        c = b.core
        seen[c.row_off: c.row_off + c.height, c.col_off: c.col_off + c.width] += 1
        r = b.read
        assert r.row_off <= c.row_off and r.col_off <= c.col_off
        assert r.row_off + r.height >= c.row_off + c.height and r.row_off + r.height <= 130
    assert (seen == 1).all()


def test_params_validation():
    with pytest.raises(BadRequestError, match="tile_overlap_px"):
        EngineParams(32, 17, 1)
    with pytest.raises(BadRequestError, match="batch_size"):
        EngineParams(32, 8, 0)
    assert EngineParams(64, 8, 1, block_size_px=10).block_size_px == 64


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(height=st.integers(1, 90), width=st.integers(1, 90), tile=st.integers(8, 40),
       overlap_frac=st.floats(0, 0.5), batch=st.integers(1, 3), block_extra=st.integers(0, 60),
       nodata=st.booleans(), box=st.tuples(st.integers(0, 90), st.integers(0, 90), st.integers(1, 40),
                                           st.integers(1, 40)), seed=st.integers(0, 1000))
def test_tiled_equals_whole_image(tmp_path, height, width, tile, overlap_frac, batch, block_extra, nodata, box,
                                  seed):
    overlap = int(overlap_frac * tile) // 1
    overlap = min(overlap, tile // 2)
    pixels = fixture_pixels(height, width, 3, "uint8", seed)
    valid = np.ones((height, width), dtype=bool)
    kw = {}
    if nodata:
        r0, c0, h, w = box
        kw = {"nodata": 0, "nodata_box": (r0, c0, r0 + h, c0 + w)}
        pixels[:, r0: r0 + h, c0: c0 + w] = 0
        valid = ~(pixels == 0).all(axis=0)
    path = write_fixture_raster(tmp_path / f"r{seed}_{height}_{width}.tif", width=width, height=height,
                                data=pixels, **kw)
    params = EngineParams(tile, overlap, batch, block_size_px=tile + block_extra)
    got = _run(path, params)
    np.testing.assert_array_equal(got, reference(pixels, valid))


def test_bbox_subwindow_matches_reference_crop(tmp_path):
    pixels = fixture_pixels(70, 90, 3, "uint8", 7)
    path = write_fixture_raster(tmp_path / "r.tif", width=90, height=70, data=pixels)
    with rasterio.open(path) as src:
        t = src.transform
    bbox = [t.c + 13, t.f - 61, t.c + 77, t.f - 5]  # cols 13..77, rows 5..61
    got = _run(path, EngineParams(16, 4, 2, block_size_px=24), {"bbox": bbox})
    ref = reference(pixels, np.ones((70, 90), bool))[5:61, 13:77]
    np.testing.assert_array_equal(got, ref)


def test_band_selection_and_alpha(tmp_path):
    pixels = fixture_pixels(40, 50, 4, "uint8", 3)
    path = write_fixture_raster(tmp_path / "r4.tif", width=50, height=40, count=4, data=pixels)
    got = _run(path, EngineParams(16, 4, 2), {"bands": [4, 2, 1]})
    np.testing.assert_array_equal(got, reference(pixels[[3, 1, 0]], np.ones((40, 50), bool)))
    # an RGBA raster: the alpha band is dropped automatically and used as the mask
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                          rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha]
    plan = plan_raster(_config(), str(path), {})
    assert plan.bands == [1, 2, 3]


def test_blockwise_vectorising_covers_the_same_area(tmp_path):
    import shapely

    from backend.outputs import ClassRasterWriter, VectorWriter, polygonize_class_raster
    from training.package import ClassInfo

    classes = [ClassInfo(f"c{i}", "#102030") for i in range(3)]
    rng = np.random.default_rng(0)
    cls = (rng.random((50, 70)) * 3).astype(np.uint8)
    cls[:5, :5] = 255
    with rasterio.open(write_fixture_raster(tmp_path / "src.tif", width=70, height=50)) as src:
        crs, transform = src.crs.to_wkt(), src.transform
    w = ClassRasterWriter(tmp_path / "c.tif", 70, 50, crs, transform, classes)
    w.write_block(rasterio.windows.Window(0, 0, 70, 50), cls)
    w.close()
    areas = {}
    for mode, max_px in (("whole", 10**9), ("blocks", 10)):
        vw = VectorWriter(tmp_path / f"{mode}.gpkg", "classes", crs,
                          {"class_id": np.int32, "class_name": object, "area_m2": np.float64}, {})
        polygonize_class_raster(tmp_path / "c.tif", vw, classes, crs, max_pixels=max_px, block=16)
        vw.close()
        import pyogrio

        _, _, geoms, fields = pyogrio.raw.read(tmp_path / f"{mode}.gpkg")
        polys = shapely.from_wkb(geoms)
        assert shapely.is_valid(polys).all()
        areas[mode] = {k: float(sum(p.area for p, c in zip(polys, fields[0], strict=True) if c == k)) for k in range(3)}
    assert areas["whole"] == areas["blocks"] == {k: float((cls == k).sum()) for k in range(3)}
