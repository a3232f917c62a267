"""Task post-processors: real detection fixture models over HTTP, and exact checks with synthetic models.

The synthetic models are deterministic functions of the pixels (blob finders, pointwise rules), so the
expected outputs are known exactly; they also cover scene classification and change detection, whose
architectures are not registered in ``training.models`` yet.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from conftest import assert_error
from make_fixtures import build_fixture_package, fixture_name, write_fixture_raster
from scipy import ndimage

from backend.jobs import Job, JobContext
from backend.models import ModelRegistry
from backend.settings import Settings
from backend.tasks import build_spec, nms_polygons, rotated_box_polygon, run_spec
from training.models import list_models
from training.package import PackageConfig

DET = [{"name": "ship", "color": "#1F78B4"}, {"name": "vehicle", "color": "#FF7F00"}]


def _read_gpkg(path: str, layer: str):
    meta = pyogrio.read_info(path, layer=layer)
    _, _, geoms, fields = pyogrio.raw.read(path, layer=layer)
    return shapely.from_wkb(geoms), dict(zip(meta["fields"], fields, strict=True)), meta


# -- real registered detection architectures, end to end over HTTP ----------------------------------------

@pytest.mark.parametrize("task,layer,extra", [
    ("object_detection", "detections", {"area_m2"}),
    ("rotated_detection", "rotated_detections", {"angle_deg", "length_m", "width_m"}),
    ("instance_segmentation", "instances", {"area_m2"}),
])
def test_real_detection_models_over_http(api, fx, tmp_path, task, layer, extra):
    arch = {"object_detection": "faster_rcnn", "rotated_detection": "oriented_rcnn",
            "instance_segmentation": "mask_rcnn"}[task]
    if arch not in list_models():
        pytest.skip(f"{arch} is not registered in training.models")
    pkg = fx["models"] / fixture_name(task)
    if not pkg.exists():
        build_fixture_package(task, pkg)
    out = tmp_path / "out"
    status, job = api.post("/api/v1/jobs", {"task": task, "model": fixture_name(task),
                                            "inputs": {"raster": str(fx["rgb"])}, "output_dir": str(out),
                                            "options": {"score_threshold": 0.3}})
    assert status == 202, job
    job = api.wait(job["id"])
    assert job["state"] == "succeeded", job
    (vec,) = job["result"]["outputs"]
    polys, fields, meta = _read_gpkg(vec["path"], layer)
    assert {"class_id", "class_name", "score", "model", "parameters", "source", "created"} | extra <= set(meta["fields"])
    assert len(polys) == job["result"]["stats"]["detections"]
    assert shapely.is_valid(polys).all()
    if len(polys):
        assert (fields["score"] >= 0.3).all()
        with rasterio.open(fx["rgb"]) as src:
            b = shapely.box(*src.bounds)
        # every detection's centre lies on the raster (rotated boxes may poke out at the edges)
        assert all(b.buffer(1e-6).contains(p.centroid) for p in polys)
    assert sorted(p.name for p in out.iterdir()) == sorted([Path(vec["path"]).name, Path(vec["style"]).name])


# -- synthetic, exactly known predictions -------------------------------------------------------------

def _package(root: Path, task: str, classes, **kw) -> str:
    """A config-only package (no weights): run_spec gets the model callable directly."""
    name = f"synthetic-{task}"
    cfg = PackageConfig(name=name, task=task, architecture="synthetic", classes=classes,
                        bands=["r", "g", "b"], mean=[0.0] * 3, std=[1.0] * 3, gsd_m=1.0, gsd_range_m=(0.5, 2.0),
                        tile_size_px=32, tile_overlap_px=16, batch_size=3, score_threshold=0.5, **kw)
    cfg.save(root / name)
    return name


def _app(models_dir: Path):
    return SimpleNamespace(models=ModelRegistry([models_dir], include_bundled=False),
                           settings=Settings.resolve({"block_size_px": 40}, env={}), device="cpu")


def _run(app, body: dict, model):
    spec = build_spec(app, body)
    job = Job(task=spec.task, model=spec.entry.id, runner=lambda c: {})
    return spec, run_spec(app, spec, JobContext(job), model=model)


def _blob_raster(path: Path, boxes: list[tuple[int, int, int, int]], width=100, height=90) -> Path:
    """Dark raster with bright rectangles (row0, col0, row1, col1); band 2 encodes the class (0 or 200)."""
    data = np.full((3, height, width), 10, dtype=np.uint8)
    for i, (r0, c0, r1, c1) in enumerate(boxes):
        data[0, r0:r1, c0:c1] = 250
        data[1, r0:r1, c0:c1] = 200 if i % 2 else 0
    return write_fixture_raster(path, width=width, height=height, data=data)


BOXES = [(3, 3, 9, 9), (10, 40, 15, 47), (20, 13, 26, 18), (40, 60, 46, 66), (70, 90, 76, 96),
         (14, 28, 20, 33), (50, 25, 56, 31), (83, 3, 89, 8)]


def _blobs(x: np.ndarray):
    lab, n = ndimage.label(x[0] > 128)
    for i, sl in enumerate(ndimage.find_objects(lab)):
        yield sl, lab == i + 1, int(x[1][sl].mean() > 100)


def det_model(x: np.ndarray):
    out = []
    for img in x:
        boxes, labels = [], []
        for sl, _, cls in _blobs(img):
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
            labels.append(cls)
        out.append({"boxes_xyxy": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                    "scores": np.full(len(boxes), 0.9, dtype=np.float32), "labels": np.asarray(labels)})
    return out


def test_object_detection_merges_tiles_exactly(tmp_path):
    models = tmp_path / "m"
    name = _package(models, "object_detection", DET)
    raster = _blob_raster(tmp_path / "b.tif", BOXES)
    out = tmp_path / "out"
    spec, result = _run(_app(models), {"task": "object_detection", "model": name, "inputs": {"raster": str(raster)},
                                       "output_dir": str(out)}, det_model)
    polys, fields, _ = _read_gpkg(result["outputs"][0]["path"], "detections")
    t = spec.plan.window_transform
    expected = {(t.c + c0, t.f - r1, t.c + c1, t.f - r0, i % 2) for i, (r0, c0, r1, c1) in enumerate(BOXES)}
    got = {(*map(float, p.bounds), int(c)) for p, c in zip(polys, fields["class_id"], strict=True)}
    assert got == expected  # each object exactly once, at the right place, with its class
    assert set(fields["class_name"]) == {"ship", "vehicle"}
    assert np.allclose(sorted(fields["area_m2"]), sorted((r1 - r0) * (c1 - c0) for r0, c0, r1, c1 in BOXES))
    assert result["stats"]["detections"] == len(BOXES)
    assert sorted(p.name for p in out.iterdir()) == ["b_detections.gpkg", "b_detections.qml"]


def test_rotated_detection_fields(tmp_path):
    models = tmp_path / "m"
    name = _package(models, "rotated_detection", DET)
    raster = _blob_raster(tmp_path / "b.tif", BOXES)
    angle = 0.3

    def model(x):
        out = []
        for img in x:
            rb, lb = [], []
            for sl, _, cls in _blobs(img):
                h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
                rb.append([(sl[1].start + sl[1].stop) / 2, (sl[0].start + sl[0].stop) / 2, w, h, angle])
                lb.append(cls)
            out.append({"boxes_cxcywha": np.asarray(rb, np.float32).reshape(-1, 5),
                        "scores": np.full(len(rb), 0.8, np.float32), "labels": np.asarray(lb)})
        return out

    _, result = _run(_app(models), {"task": "rotated_detection", "model": name, "inputs": {"raster": str(raster)},
                                    "output_dir": str(tmp_path / "o")}, model)
    polys, f, _ = _read_gpkg(result["outputs"][0]["path"], "rotated_detections")
    assert len(polys) == len(BOXES)
    assert np.allclose(f["angle_deg"], math.degrees(angle), atol=1e-4)
    dims = sorted((max(r1 - r0, c1 - c0), min(r1 - r0, c1 - c0)) for r0, c0, r1, c1 in BOXES)
    assert np.allclose(sorted(zip(f["length_m"], f["width_m"], strict=True)), dims, atol=1e-4)
    assert np.allclose(sorted(p.area for p in polys), sorted(a * b for a, b in dims), atol=1e-3)


def test_rotated_box_polygon_convention():
    # a = +90 deg turns the width axis to point up on screen (row decreasing)
    p = rotated_box_polygon(10, 10, 8, 2, math.pi / 2)
    minx, miny, maxx, maxy = p.bounds
    assert np.allclose([maxx - minx, maxy - miny], [2, 8])
    p0 = rotated_box_polygon(10, 10, 8, 2, 0.0)
    assert np.allclose(p0.bounds, [6, 9, 14, 11])


def test_instance_segmentation_masks_to_polygons(tmp_path):
    models = tmp_path / "m"
    name = _package(models, "instance_segmentation", DET)
    raster = _blob_raster(tmp_path / "b.tif", BOXES)

    def model(x):
        out = []
        for img in x:
            boxes, labels, masks = [], [], []
            for sl, m, cls in _blobs(img):
                boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
                labels.append(cls)
                masks.append(m.astype(np.float32) * 0.9)
            out.append({"boxes_xyxy": np.asarray(boxes, np.float32).reshape(-1, 4),
                        "scores": np.full(len(boxes), 0.7, np.float32), "labels": np.asarray(labels),
                        "masks": np.asarray(masks, np.float32).reshape(-1, *img.shape[1:])})
        return out

    _, result = _run(_app(models), {"task": "instance_segmentation", "model": name,
                                    "inputs": {"raster": str(raster)}, "output_dir": str(tmp_path / "o")}, model)
    polys, f, meta = _read_gpkg(result["outputs"][0]["path"], "instances")
    assert meta["geometry_type"] == "MultiPolygon"
    assert np.allclose(sorted(f["area_m2"]), sorted((r1 - r0) * (c1 - c0) for r0, c0, r1, c1 in BOXES))
    assert np.allclose(f["score"], 0.7)


def test_scene_classification_cells_partition_window(tmp_path):
    models = tmp_path / "m"
    scene_classes = [{"name": n, "color": "#112233"} for n in ("red", "green", "blue")]
    name = _package(models, "scene_classification", scene_classes)
    raster = write_fixture_raster(tmp_path / "s.tif", width=100, height=75, nodata=0, nodata_box=(0, 0, 40, 40))

    def model(x):
        return x.mean(axis=(2, 3)) / 50.0  # B x 3 logits: the dominant band wins

    spec, result = _run(_app(models), {"task": "scene_classification", "model": name,
                                       "inputs": {"raster": str(raster)}, "output_dir": str(tmp_path / "o")}, model)
    polys, f, _ = _read_gpkg(result["outputs"][0]["path"], "scenes")
    union = shapely.union_all(polys)
    with rasterio.open(raster) as src:
        full = shapely.box(*src.bounds)
    # cells do not overlap and cover the raster except cells that are entirely nodata
    assert math.isclose(sum(p.area for p in polys), union.area)
    assert full.contains(union) and union.area < full.area
    assert ((f["score"] > 1 / 3) & (f["score"] <= 1)).all()
    assert result["stats"]["tiles"] == len(polys)


def test_nms_polygons_classwise():
    polys = [shapely.box(0, 0, 10, 10), shapely.box(1, 1, 11, 11), shapely.box(0, 0, 10, 10), shapely.box(50, 50, 60, 60)]
    keep = nms_polygons(polys, np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 1, 0]), 0.5)
    assert keep == [0, 2, 3]


# -- change detection -------------------------------------------------------------------------------

def change_model(x, xa):
    diff = np.abs(x - xa).sum(axis=1)
    return np.stack([np.full_like(diff, 30.0), np.round(diff)], axis=1)


def test_change_detection_same_grid(tmp_path):
    models = tmp_path / "m"
    name = _package(models, "change_detection", [{"name": "same", "color": "#000000"},
                                                 {"name": "change", "color": "#FF00FF"}])
    before = write_fixture_raster(tmp_path / "a.tif", width=90, height=70)
    with rasterio.open(before) as src:
        px = src.read()
    px2 = px.copy()
    px2[:, 20:35, 50:80] = 255 - px2[:, 20:35, 50:80]
    after = write_fixture_raster(tmp_path / "b.tif", width=90, height=70, data=px2)
    _, result = _run(_app(models), {"task": "change_detection", "model": name,
                                    "inputs": {"raster": str(before), "raster_after": str(after)},
                                    "output_dir": str(tmp_path / "o")}, change_model)
    raster = next(o for o in result["outputs"] if o["kind"] == "raster")
    with rasterio.open(raster["path"]) as dst:
        got = dst.read(1)
    ref = (np.round(np.abs(px.astype(np.float32) - px2).sum(0)) > 30).astype(np.uint8)
    np.testing.assert_array_equal(got, ref)
    polys, f, _ = _read_gpkg(next(o for o in result["outputs"] if o["kind"] == "vector")["path"], "changes")
    assert set(f["class_id"]) == {1}
    assert math.isclose(sum(p.area for p in polys), ref.sum())


def test_change_detection_warps_and_refuses_disjoint(tmp_path):
    models = tmp_path / "m"
    name = _package(models, "change_detection", [{"name": "same", "color": "#000000"},
                                                 {"name": "change", "color": "#FF00FF"}])
    before = write_fixture_raster(tmp_path / "a.tif", width=80, height=60)
    app = _app(models)
    body = {"task": "change_detection", "model": name, "inputs": {"raster": str(before)}, "output_dir": str(tmp_path / "o")}
    # shifted by 60 px east at a slightly different pixel size: small overlap -> warning, pixels outside -> nodata
    shifted = write_fixture_raster(tmp_path / "s.tif", width=80, height=60, gsd_m=1.1,
                                   origin=(500_060.0, 2_800_000.0))
    body["inputs"]["raster_after"] = str(shifted)
    spec, result = _run(app, body, change_model)
    assert any("overlap on only" in w for w in spec.warnings)
    with rasterio.open(next(o for o in result["outputs"] if o["kind"] == "raster")["path"]) as dst:
        got = dst.read(1)
    assert (got[:, :59] == 255).all() and (got[:, 61:] != 255).all()
    # disjoint rasters are refused before running
    far = write_fixture_raster(tmp_path / "far.tif", width=80, height=60, origin=(600_000.0, 2_800_000.0))
    body["inputs"]["raster_after"] = str(far)
    with pytest.raises(Exception) as ei:
        build_spec(app, body)
    assert ei.value.code == "rasters_do_not_overlap" and ei.value.http_status == 422


def test_change_detection_needs_second_raster(api, fx, tmp_path):
    assert_error(*api.post("/api/v1/jobs", {"task": "change_detection", "model": fx["seg_id"],
                                            "inputs": {"raster": str(fx["rgb"])}, "output_dir": str(tmp_path)}),
                 400)


def test_no_detections_gives_empty_layer(tmp_path):
    models = tmp_path / "m"
    name = _package(models, "object_detection", DET)
    raster = _blob_raster(tmp_path / "b.tif", [])

    def model(x):
        return [{"boxes_xyxy": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                 "labels": np.zeros(0, np.int64)} for _ in x]

    _, result = _run(_app(models), {"task": "object_detection", "model": name, "inputs": {"raster": str(raster)},
                                    "output_dir": str(tmp_path / "o")}, model)
    polys, fields, meta = _read_gpkg(result["outputs"][0]["path"], "detections")
    assert len(polys) == 0 and meta["features"] == 0
    assert "score" in meta["fields"] and meta["crs"] == "EPSG:32640"
    assert result["stats"]["detections"] == 0
