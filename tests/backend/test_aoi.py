"""options.aoi (polygons limit a job to their shapes) and classify_per "polygon" (one scene class per polygon).

Synthetic deterministic models (see test_tasks.py) make the expected outputs exact: segmentation inside the
polygons must equal a run over the same window without the aoi (tiles outside it are skipped, which must not
change any inside pixel), outside must be nodata; detections must be exactly the full run's detections whose
centre pixel lies inside; per-polygon classes must equal a reference computed directly with the model on the
tiles the method documents. The fixture raster's pixel (col, row) is at x = 500000 + col, y = 2800000 - row
(EPSG:32640, 1 m pixels).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from conftest import assert_error
from make_fixtures import write_fixture_raster
from rasterio.features import geometry_mask
from scipy import ndimage

from backend.aoi import MAX_AOI_VERTICES, parse_aoi, polygon_tile_origins
from backend.errors import BadRequestError, IncompatibleRasterError
from backend.jobs import Job, JobContext
from backend.models import ModelRegistry
from backend.outputs import NODATA_CLASS
from backend.settings import Settings
from backend.tasks import build_spec, run_spec
from training.package import PackageConfig

X0, Y0 = 500_000.0, 2_800_000.0
CLASSES3 = [{"name": n, "color": c} for n, c in (("red", "#FF0000"), ("green", "#00FF00"), ("blue", "#0000FF"))]
DET = [{"name": "ship", "color": "#1F78B4"}, {"name": "vehicle", "color": "#FF7F00"}]


def px(col: float, row: float) -> list[float]:
    """Pixel corner (col, row) -> [x, y] in the fixture raster's CRS."""
    return [X0 + col, Y0 - row]


def ring(c0: float, r0: float, c1: float, r1: float) -> list[list[float]]:
    return [px(c0, r0), px(c1, r0), px(c1, r1), px(c0, r1), px(c0, r0)]


def fc(*geoms: dict, fids: list | None = None) -> dict:
    fids = fids or list(range(1, len(geoms) + 1))
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": g, "properties": {"fid": f}} for g, f in zip(geoms, fids, strict=True)]}


# a polygon with a hole and a two-part multipolygon: irregular, thin in places, with empty space between
HOLED = {"type": "Polygon", "coordinates": [ring(6, 5, 50, 40), ring(18, 14, 38, 30)[::-1]]}
MULTI = {"type": "MultiPolygon", "coordinates": [[ring(70, 8, 92, 20)], [ring(60, 60, 110, 66)]]}
AOI = fc(HOLED, MULTI, fids=[11, 12])


def _package(root: Path, task: str, classes, **kw) -> str:
    name = f"synthetic-{task}"
    cfg = PackageConfig(name=name, task=task, architecture="synthetic", classes=classes,
                        bands=["r", "g", "b"], mean=[0.0] * 3, std=[1.0] * 3, gsd_m=1.0, gsd_range_m=(0.5, 2.0),
                        tile_size_px=32, tile_overlap_px=16, batch_size=4, score_threshold=0.5, **kw)
    cfg.save(root / name)
    return name


def _app(models_dir: Path, block: int = 48):
    return SimpleNamespace(models=ModelRegistry([models_dir], include_bundled=False),
                           settings=Settings.resolve({"block_size_px": block}, env={}), device="cpu")


def _run(app, body: dict, model):
    spec = build_spec(app, body)
    job = Job(task=spec.task, model=spec.entry.id, runner=lambda c: {})
    return spec, run_spec(app, spec, JobContext(job), model=model), job


class Counting:
    """Wraps a model and counts the tiles it is called with."""

    def __init__(self, fn):
        self.fn, self.tiles = fn, 0

    def __call__(self, *args):
        self.tiles += len(args[0])
        return self.fn(*args)


def context_seg_model(x: np.ndarray) -> np.ndarray:
    """B x 3 x T x T logits that depend on the whole tile (tile mean) and on the pixel: tiling matters."""
    return (x + x.mean(axis=(2, 3), keepdims=True) * 0.5).astype(np.float32) / 40.0


def inside_mask(aoi: dict, raster: Path) -> np.ndarray:
    """Reference inside mask of the whole raster (pixel-centre rule), computed by rasterio directly."""
    with rasterio.open(raster) as src:
        geoms = [f["geometry"] for f in aoi["features"]]
        return geometry_mask(geoms, out_shape=(src.height, src.width), transform=src.transform, invert=True)


@pytest.fixture()
def seg_setup(tmp_path):
    models = tmp_path / "m"
    name = _package(models, "semantic_segmentation", CLASSES3)
    raster = write_fixture_raster(tmp_path / "r.tif", width=120, height=80)
    return _app(models), name, raster


# -- validation ------------------------------------------------------------------------------------------

def test_parse_aoi_accepts_geometries_features_and_collections():
    a = parse_aoi(AOI)
    assert [f.fid for f in a.features] == [11, 12]
    assert a.geom.area == pytest.approx(44 * 35 - 20 * 16 + 22 * 12 + 50 * 6)
    assert parse_aoi(HOLED).features[0].fid == 0
    feat = {"type": "Feature", "id": "parcel-7", "geometry": MULTI, "properties": None}
    assert parse_aoi(feat).features[0].fid == "parcel-7"
    assert parse_aoi(AOI).digest == a.digest != parse_aoi(HOLED).digest


@pytest.mark.parametrize("value,code,words", [
    ({"type": "Point", "coordinates": [1.0, 2.0]}, "invalid_aoi", "not a polygon"),
    ({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "invalid_aoi", "not a polygon"),
    ([1, 2, 3], "invalid_aoi", "GeoJSON"),
    ({"type": "FeatureCollection", "features": []}, "invalid_aoi", "no features"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}, "invalid_aoi", "not a valid GeoJSON"),
    # a bow-tie: self-intersecting ring
    ({"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}, "invalid_aoi",
     "Fix geometries"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [float("nan"), 1], [1, 0], [0, 0]]]}, "invalid_aoi",
     "non-finite"),
])
def test_parse_aoi_errors_say_what_to_do(value, code, words):
    with pytest.raises(BadRequestError) as ei:
        parse_aoi(value)
    assert ei.value.code == code
    assert words in ei.value.message


def test_parse_aoi_refuses_too_many_vertices():
    n = MAX_AOI_VERTICES + 10
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    pts = np.c_[np.cos(t) * 100, np.sin(t) * 100].tolist()
    with pytest.raises(BadRequestError) as ei:
        parse_aoi({"type": "Polygon", "coordinates": [pts + [pts[0]]]})
    assert ei.value.code == "aoi_too_complex" and "Simplify" in ei.value.message


def test_aoi_outside_raster_and_window(seg_setup, tmp_path):
    app, name, raster = seg_setup
    body = {"task": "semantic_segmentation", "model": name, "inputs": {"raster": str(raster)},
            "output_dir": str(tmp_path / "o")}
    far = {"type": "Polygon", "coordinates": [ring(500, 500, 600, 600)]}
    with pytest.raises(IncompatibleRasterError) as ei:
        build_spec(app, {**body, "options": {"aoi": far}})
    assert ei.value.code == "aoi_outside" and "EPSG:32640" in ei.value.message
    # in another CRS (lon/lat) it lies far off the raster: the message says which CRS to use
    lonlat = {"type": "Polygon", "coordinates": [[[55.1, 25.2], [55.2, 25.2], [55.2, 25.3], [55.1, 25.2]]]}
    with pytest.raises(IncompatibleRasterError):
        build_spec(app, {**body, "options": {"aoi": lonlat}})
    spec = build_spec(app, {**body, "options": {"aoi": AOI}})
    w = spec.plan.window
    assert (int(w.col_off), int(w.row_off), int(w.width), int(w.height)) == (6, 5, 104, 61)
    # with a bbox too: the intersection
    spec = build_spec(app, {**body, "options": {"aoi": AOI, "bbox": [X0, Y0 - 30, X0 + 40, Y0]}})
    w = spec.plan.window
    assert (int(w.col_off), int(w.row_off), int(w.width), int(w.height)) == (6, 5, 34, 25)
    with pytest.raises(IncompatibleRasterError) as ei:
        build_spec(app, {**body, "options": {"aoi": HOLED, "bbox": [X0 + 100, Y0 - 80, X0 + 120, Y0 - 70]}})
    assert ei.value.code == "aoi_outside"
    with pytest.raises(BadRequestError) as ei:
        build_spec(app, {**body, "options": {"aoi": AOI, "classify_per": "polygon"}})
    assert "scene_classification" in ei.value.message


# -- dense -------------------------------------------------------------------------------------------------

def test_segmentation_nodata_outside_and_same_inside(seg_setup, tmp_path):
    app, name, raster = seg_setup
    body = {"task": "semantic_segmentation", "model": name, "inputs": {"raster": str(raster)},
            "options": {"aoi": AOI, "vectorize": True}}
    m_aoi = Counting(context_seg_model)
    spec, res, _ = _run(app, {**body, "output_dir": str(tmp_path / "a")}, m_aoi)
    w = spec.plan.window
    # reference: the same window (the aoi's bounds) without the aoi, so the tile grid is the same
    bounds = list(rasterio.windows.bounds(w, spec.plan.transform))
    m_full = Counting(context_seg_model)
    _, ref, _ = _run(app, {**body, "options": {"bbox": bounds, "vectorize": False},
                           "output_dir": str(tmp_path / "b")}, m_full)
    with rasterio.open(res["outputs"][0]["path"]) as a, rasterio.open(ref["outputs"][0]["path"]) as b:
        got, want = a.read(1), b.read(1)
        assert a.transform == b.transform and a.crs == b.crs and a.nodata == NODATA_CLASS
    inside = inside_mask(AOI, raster)[int(w.row_off): int(w.row_off + w.height),
                                       int(w.col_off): int(w.col_off + w.width)]
    assert inside.sum() > 500 and (~inside).sum() > 500
    assert (got[~inside] == NODATA_CLASS).all()
    assert np.array_equal(got[inside], want[inside])
    assert (want != NODATA_CLASS).all()
    # fewer tiles were run, and the job says how many were skipped
    stats = res["stats"]
    assert stats["tiles_skipped"] > 0
    assert m_aoi.tiles < m_full.tiles
    assert stats["parameters"]["aoi"]["polygons"] == 2
    # area statistics and polygons cover only the inside
    assert sum(c["pixels"] for c in stats["classes"]) == int(inside.sum())
    vec = next(o for o in res["outputs"] if o["kind"] == "vector")
    _, _, geoms, _ = pyogrio.raw.read(vec["path"], layer=vec["layer"])
    union = shapely.union_all(shapely.from_wkb(geoms))
    assert union.area == pytest.approx(float(inside.sum()))
    assert parse_aoi(AOI).geom.buffer(1e-6).contains(union)


def test_segmentation_skips_whole_blocks_outside(tmp_path):
    """Two far-apart small polygons on a raster of many blocks: blocks between them are neither read nor run."""
    models = tmp_path / "m"
    name = _package(models, "semantic_segmentation", CLASSES3)
    raster = write_fixture_raster(tmp_path / "r.tif", width=200, height=160)
    aoi = fc({"type": "Polygon", "coordinates": [ring(2, 2, 12, 12)]},
             {"type": "Polygon", "coordinates": [ring(185, 145, 198, 158)]})
    m = Counting(context_seg_model)
    _, res, job = _run(_app(models, block=32), {"task": "semantic_segmentation", "model": name,
                                                "inputs": {"raster": str(raster)}, "output_dir": str(tmp_path / "o"),
                                                "options": {"aoi": aoi, "vectorize": False}}, m)
    with rasterio.open(res["outputs"][0]["path"]) as src:
        got = src.read(1)
        assert src.width == 196 and src.height == 156  # the aoi's bounds
    inside = inside_mask(aoi, raster)[2:158, 2:198]
    assert (got[~inside] == NODATA_CLASS).all() and (got[inside] != NODATA_CLASS).all()
    assert inside.sum() == 100 + 169
    assert m.tiles <= 8 and res["stats"]["tiles_skipped"] > 20
    assert job.progress == pytest.approx(0.95, abs=1e-6)  # progress counts only the tiles that run


def test_change_detection_nodata_outside(tmp_path):
    models = tmp_path / "m"
    name = _package(models, "change_detection", [{"name": "same", "color": "#000000"},
                                                 {"name": "changed", "color": "#FF0000"}])
    before = write_fixture_raster(tmp_path / "a.tif", width=120, height=80)
    with rasterio.open(before) as src:
        changed = src.read()
    changed[:, :, 20:60] = np.clip(changed[:, :, 20:60].astype(int) + 100, 0, 255)  # a changed strip
    after = write_fixture_raster(tmp_path / "b.tif", width=120, height=80, data=changed)

    def change_model(x, xa):
        d = np.abs(x - xa).mean(axis=1, keepdims=True)
        return np.concatenate([np.full_like(d, 20.0), d], axis=1)

    spec, res, _ = _run(_app(models), {"task": "change_detection", "model": name,
                                       "inputs": {"raster": str(before), "raster_after": str(after)},
                                       "output_dir": str(tmp_path / "o"), "options": {"aoi": AOI}}, change_model)
    w = spec.plan.window
    with rasterio.open(res["outputs"][0]["path"]) as src:
        got = src.read(1)
    inside = inside_mask(AOI, before)[int(w.row_off): int(w.row_off + w.height),
                                      int(w.col_off): int(w.col_off + w.width)]
    assert (got[~inside] == NODATA_CLASS).all() and (got[inside] != NODATA_CLASS).all()
    assert len(set(np.unique(got[inside]))) == 2  # both classes occur inside


# -- sparse ------------------------------------------------------------------------------------------------

BOXES = [(3, 3, 9, 9), (10, 40, 15, 47), (20, 13, 26, 18), (40, 60, 46, 66), (70, 90, 76, 96),
         (14, 28, 20, 33), (50, 25, 56, 31), (83, 3, 89, 8), (8, 75, 14, 80), (61, 100, 65, 106)]


def _blob_raster(path: Path, boxes, width=120, height=90) -> Path:
    data = np.full((3, height, width), 10, dtype=np.uint8)
    for i, (r0, c0, r1, c1) in enumerate(boxes):
        data[0, r0:r1, c0:c1] = 250
        data[1, r0:r1, c0:c1] = 200 if i % 2 else 0
    return write_fixture_raster(path, width=width, height=height, data=data)


def det_model(x: np.ndarray):
    out = []
    for img in x:
        lab, _ = ndimage.label(img[0] > 128)
        boxes, labels = [], []
        for sl in ndimage.find_objects(lab):
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
            labels.append(int(img[1][sl].mean() > 100))
        out.append({"boxes_xyxy": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                    "scores": np.full(len(boxes), 0.9, dtype=np.float32), "labels": np.asarray(labels)})
    return out


def test_detection_keeps_only_objects_centred_inside(tmp_path):
    models = tmp_path / "m"
    name = _package(models, "object_detection", DET)
    raster = _blob_raster(tmp_path / "b.tif", BOXES)
    body = {"task": "object_detection", "model": name, "inputs": {"raster": str(raster)}}
    m = Counting(det_model)
    spec, res, _ = _run(_app(models), {**body, "output_dir": str(tmp_path / "a"), "options": {"aoi": AOI}}, m)
    # reference: the same window (the aoi's bounds; objects cut by its edge are cut in both) without the aoi
    bounds = list(rasterio.windows.bounds(spec.plan.window, spec.plan.transform))
    _, full, _ = _run(_app(models), {**body, "output_dir": str(tmp_path / "f"), "options": {"bbox": bounds}},
                      det_model)

    def read(r):
        _, _, g, f = pyogrio.raw.read(r["outputs"][0]["path"], layer="detections")
        return shapely.from_wkb(g)

    all_boxes, got = read(full), read(res)
    assert len(all_boxes) == len(BOXES) - 2  # (70, 90, ...) and (83, 3, ...) lie below the window (rows 5-66)
    aoi = parse_aoi(AOI).geom
    # the centre pixel's centre decides (the raster's pixel grid): centre (cx, cy) in pixel units
    want = []
    for b in all_boxes:
        c = b.centroid
        col, row = math.floor(c.x - X0), math.floor(Y0 - c.y)
        if aoi.contains(shapely.Point(X0 + col + 0.5, Y0 - row - 0.5)):
            want.append(b)
    assert 0 < len(want) < len(BOXES)
    assert sorted(g.wkt for g in got) == sorted(g.wkt for g in want)
    assert res["stats"]["tiles_skipped"] > 0


def test_scene_grid_only_cells_touching_aoi(tmp_path):
    models = tmp_path / "m"
    name = _package(models, "scene_classification", CLASSES3)
    raster = write_fixture_raster(tmp_path / "s.tif", width=120, height=80)
    thin = fc({"type": "Polygon", "coordinates": [ring(2, 38, 118, 41)]})  # a 3 px high strip
    _, res, _ = _run(_app(models), {"task": "scene_classification", "model": name, "inputs": {"raster": str(raster)},
                                    "output_dir": str(tmp_path / "o"), "options": {"aoi": thin}},
                     lambda x: x.mean(axis=(2, 3)) / 50.0)
    _, _, g, _ = pyogrio.raw.read(res["outputs"][0]["path"], layer="scenes")
    cells = shapely.from_wkb(g)
    strip = parse_aoi(thin).geom
    assert len(cells) == res["stats"]["tiles"] > 0
    assert all(c.intersection(strip).area > 0 for c in cells)
    assert strip.difference(shapely.union_all(cells)).area == pytest.approx(0)


# -- one class per polygon -----------------------------------------------------------------------------------

def scene_model(x: np.ndarray) -> np.ndarray:
    return (x.mean(axis=(2, 3)) / 30.0).astype(np.float32)  # B x 3 logits: the dominant band wins


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def test_polygon_tile_origins():
    assert polygon_tile_origins(40.0, 50.0, 32, 16, 160) == [29]  # centred on a small span
    assert polygon_tile_origins(2.0, 8.0, 32, 16, 160) == [0]  # shifted onto the raster
    assert polygon_tile_origins(150.0, 158.0, 32, 16, 160) == [128]
    assert polygon_tile_origins(10.0, 60.0, 32, 16, 160) == [10, 26, 28]  # the grid over a 50 px span


def test_classify_per_polygon_matches_direct_reference(tmp_path):
    models = tmp_path / "m"
    name = _package(models, "scene_classification", CLASSES3)
    data = np.zeros((3, 128, 160), dtype=np.uint8)
    rng = np.random.default_rng(3)
    data[:] = rng.integers(0, 60, size=data.shape)
    data[0, :, :80] += 150  # red west, blue east, a green square
    data[2, :, 80:] += 150
    data[1, 90:120, 20:50] += 180
    data[0, 90:120, 20:50] -= 150
    raster = write_fixture_raster(tmp_path / "p.tif", width=160, height=128, data=data)
    small = {"type": "Polygon", "coordinates": [ring(40, 100, 50, 110)]}  # 10 x 10 px, inside the green square
    big = {"type": "Polygon", "coordinates": [ring(90, 10, 140, 50)]}  # 50 x 40 px: a tile grid
    multi = {"type": "MultiPolygon", "coordinates": [[ring(2, 2, 10, 10)], [ring(60, 60, 70, 70)]]}
    aoi = fc(small, big, multi, fids=[101, 7, 33])
    m = Counting(scene_model)
    spec, res, _ = _run(_app(models), {"task": "scene_classification", "model": name,
                                       "inputs": {"raster": str(raster)}, "output_dir": str(tmp_path / "o"),
                                       "options": {"aoi": aoi, "classify_per": "polygon"}}, m)
    out = res["outputs"][0]
    meta = pyogrio.read_info(out["path"], layer=out["layer"])
    _, _, g, vals = pyogrio.raw.read(out["path"], layer=out["layer"])
    f = dict(zip(meta["fields"], vals, strict=True))
    geoms = shapely.from_wkb(g)
    assert {"model", "parameters", "source", "created", "class_name_2", "score_3", "probabilities"} <= set(f)
    assert list(f["source_fid"]) == [101, 7, 33]
    with rasterio.open(raster) as src:
        assert rasterio.crs.CRS.from_user_input(meta["crs"]) == src.crs
        pix = src.read().astype(np.float32)

    def tile_probs(r0, c0):
        return _softmax(scene_model(pix[None, :, r0: r0 + 32, c0: c0 + 32])[0].astype(np.float64))

    def weighted(tiles, poly_px):  # poly_px: (c0, r0, c1, r1) pixel rectangles of the feature
        acc, wsum = np.zeros(3), 0.0
        for r0, c0 in tiles:
            w = sum(max(0, min(c0 + 32, pc1) - max(c0, pc0)) * max(0, min(r0 + 32, pr1) - max(r0, pr0))
                    for pc0, pr0, pc1, pr1 in poly_px)
            acc += w * tile_probs(r0, c0)
            wsum += w
        return acc / wsum

    # small: one 32 px tile centred on the polygon's centre (45, 105) -> origin (89, 29), on the raster
    ref = {101: weighted([(89, 29)], [(40, 100, 50, 110)])}
    # big: rows 10..50 (40 px) -> grid [10, 18]; cols 90..140 (50 px) -> [90, 106, 108]
    ref[7] = weighted([(r, c) for r in (10, 18) for c in (90, 106, 108)], [(90, 10, 140, 50)])
    # multi: bounds 2..70 both ways: grid [2, 18, 34, 38]; only tiles overlapping one of the parts count
    parts = [(2, 2, 10, 10), (60, 60, 70, 70)]
    grid = [(r, c) for r in (2, 18, 34, 38) for c in (2, 18, 34, 38)]
    used = [(r, c) for r, c in grid if any(max(0, min(c + 32, a1) - max(c, a0)) * max(0, min(r + 32, b1) - max(r, b0))
                                           for a0, b0, a1, b1 in parts)]
    ref[33] = weighted(used, parts)
    for i, fid in enumerate(f["source_fid"]):
        probs = json.loads(f["probabilities"][i])
        got = np.array([probs[c["name"]] for c in CLASSES3])
        assert np.allclose(got, ref[int(fid)], atol=1e-5), (fid, got, ref[int(fid)])
        assert f["class_id"][i] == int(np.argmax(ref[int(fid)]))
        assert f["score"][i] == pytest.approx(ref[int(fid)].max(), abs=1e-5)
        assert f["score"][i] >= f["score_2"][i] >= f["score_3"][i]
    assert [f["class_name"][i] for i in range(3)] == ["green", "blue", "red"]
    # each feature keeps its own geometry (a valid multipolygon in the raster's CRS)
    src_geoms = {f2.fid: f2.geom for f2 in parse_aoi(aoi).features}
    for i, geom in enumerate(geoms):
        assert geom.is_valid and geom.equals(src_geoms[int(f["source_fid"][i])])
    assert m.tiles == 1 + 6 + len(used) == res["stats"]["tiles"]
    assert res["stats"]["tiles_skipped"] == len(grid) - len(used)
    assert res["stats"]["parameters"]["classify_per"] == "polygon"


def test_classify_per_polygon_needs_aoi(tmp_path):
    models = tmp_path / "m"
    name = _package(models, "scene_classification", CLASSES3)
    raster = write_fixture_raster(tmp_path / "s.tif")
    with pytest.raises(BadRequestError) as ei:
        build_spec(_app(models), {"task": "scene_classification", "model": name, "inputs": {"raster": str(raster)},
                                  "output_dir": str(tmp_path / "o"), "options": {"classify_per": "polygon"}})
    assert "aoi" in ei.value.message


# -- over HTTP, with a real fixture model -----------------------------------------------------------------------

def test_http_segmentation_with_aoi(api, fx, tmp_path):
    status, body = api.get("/api/v1/openapi.json")
    opts = body["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "properties"]["options"]["properties"]
    assert "aoi" in opts and opts["classify_per"]["enum"] == ["tile", "polygon"]
    status, job = api.post("/api/v1/jobs", {"task": "semantic_segmentation", "model": fx["seg_id"],
                                            "inputs": {"raster": str(fx["rgb"])}, "output_dir": str(tmp_path / "o"),
                                            "options": {"aoi": AOI, "vectorize": False}})
    assert status == 202, job
    job = api.wait(job["id"])
    assert job["state"] == "succeeded", job
    with rasterio.open(job["result"]["outputs"][0]["path"]) as src:
        got = src.read(1)
        win = rasterio.windows.from_bounds(*src.bounds, transform=rasterio.open(fx["rgb"]).transform)
    r0, c0 = round(win.row_off), round(win.col_off)
    inside = inside_mask(AOI, fx["rgb"])[r0: r0 + got.shape[0], c0: c0 + got.shape[1]]
    assert (got[~inside] == NODATA_CLASS).all() and (got[inside] != NODATA_CLASS).all()
    bad = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}
    status, err = api.post("/api/v1/jobs", {"task": "semantic_segmentation", "model": fx["seg_id"],
                                            "inputs": {"raster": str(fx["rgb"])}, "output_dir": str(tmp_path / "o"),
                                            "options": {"aoi": bad}})
    assert "Fix geometries" in assert_error(status, err, 400, "invalid_aoi")["message"]
    status, chk = api.post(f"/api/v1/models/{fx['seg_id']}/check", {"raster": str(fx["rgb"]), "options": {
        "aoi": {"type": "Polygon", "coordinates": [ring(500, 500, 600, 600)]}}})
    assert status == 200 and chk["ok"] is False and chk["codes"] == ["aoi_outside"]


def test_classify_per_polygon_string_ids_and_polygon_off_the_raster(tmp_path):
    models = tmp_path / "m"
    name = _package(models, "scene_classification", CLASSES3)
    raster = write_fixture_raster(tmp_path / "s.tif", width=96, height=80)
    on = {"type": "Polygon", "coordinates": [ring(80, 60, 120, 100)]}  # partly off the raster (96 x 80)
    off = {"type": "Polygon", "coordinates": [ring(200, 10, 220, 30)]}  # entirely off it
    aoi = fc(on, off, fids=["parcel-a", "parcel-b"])
    m = Counting(scene_model)
    _, res, job = _run(_app(models), {"task": "scene_classification", "model": name,
                                      "inputs": {"raster": str(raster)}, "output_dir": str(tmp_path / "o"),
                                      "options": {"aoi": aoi, "classify_per": "polygon"}}, m)
    out = res["outputs"][0]
    meta = pyogrio.read_info(out["path"], layer=out["layer"])
    _, _, _, vals = pyogrio.raw.read(out["path"], layer=out["layer"])
    f = dict(zip(meta["fields"], vals, strict=True))
    assert list(f["source_fid"]) == ["parcel-a"]
    assert f["pixels"][0] == 16 * 20  # only its pixels on the raster count
    assert m.tiles == 1 and res["stats"]["classified"] == 1
    assert any("parcel-b" in w for w in job.warnings)
    # a classified polygon is a valid result, whether or not the vector writer has flushed it yet
    assert not any(w.startswith("the processed area holds no valid pixels") for w in job.warnings)
