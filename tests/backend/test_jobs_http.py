"""Jobs over real HTTP: a segmentation run end to end, cancel, and every refused input."""

from __future__ import annotations

import json
import threading

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from conftest import assert_error
from make_fixtures import write_fixture_raster

from backend.runtimes import Runtime


def _job(fx, out_dir, raster=None, **options):
    body = {"task": "semantic_segmentation", "model": fx["seg_id"],
            "inputs": {"raster": str(raster or fx["rgb"])}, "output_dir": str(out_dir)}
    if options:
        body["options"] = options
    return body


def test_segmentation_end_to_end(api, fx, tmp_path):
    out = tmp_path / "out"
    status, job = api.post("/api/v1/jobs", _job(fx, out, vectorize=True, output_name="landcover"))
    assert status == 202, job
    assert job["state"] in ("queued", "running")
    job = api.wait(job["id"])
    assert job["state"] == "succeeded", job
    assert job["error"] is None and job["progress"] == 1.0
    outputs = {o["kind"]: o for o in job["result"]["outputs"]}
    tif, gpkg = outputs["raster"]["path"], outputs["vector"]["path"]
    assert tif == str(out / "landcover.tif") and gpkg == str(out / "landcover_polygons.gpkg")
    assert outputs["raster"]["style"] == str(out / "landcover.qml")
    assert outputs["vector"]["style"] == str(out / "landcover_polygons.qml")
    # nothing else than the declared outputs (no temp files)
    declared = {tif, gpkg, outputs["raster"]["style"], outputs["vector"]["style"]}
    assert {str(p) for p in out.iterdir()} == declared

    with rasterio.open(fx["rgb"]) as src, rasterio.open(tif) as dst:
        assert dst.crs == src.crs
        assert dst.transform.almost_equals(src.transform)
        assert (dst.width, dst.height, dst.count, dst.dtypes[0]) == (src.width, src.height, 1, "uint8")
        assert dst.nodata == 255
        assert dst.profile.get("compress", "").lower() == "deflate" and dst.profile["tiled"]
        cls = dst.read(1)
        cmap = dst.colormap(1)
    assert set(np.unique(cls)) <= {0, 1, 2}
    assert cmap[1][:3] == (0xE3, 0x1A, 0x1C)  # building colour from the package
    counts = {c["class_id"]: c["pixels"] for c in job["result"]["stats"]["classes"]}
    assert sum(counts.values()) == cls.size
    assert all(counts[k] == int((cls == k).sum()) for k in counts)

    meta = pyogrio.read_info(gpkg, layer="classes")
    assert meta["geometry_type"] in ("MultiPolygon", "Polygon")
    assert {"class_id", "class_name", "area_m2", "model", "parameters", "source", "created"} <= set(meta["fields"])
    _, _, geoms, fields = pyogrio.raw.read(gpkg, layer="classes")
    polys = shapely.from_wkb(geoms)
    assert len(polys) == job["result"]["stats"]["polygons"] > 0
    assert shapely.is_valid(polys).all()
    names = dict(zip(meta["fields"], fields, strict=True))
    # polygons tile the raster: total area = raster area (1 m pixels)
    assert np.isclose(names["area_m2"].sum(), cls.size)
    assert set(names["class_name"]) <= {"background", "building", "vegetation"}
    assert names["model"][0].startswith(fx["seg_id"] + "@sha256:")
    assert json.loads(names["parameters"][0])["tile_size_px"] == 64
    qml = open(outputs["raster"]["style"]).read()
    assert 'type="paletted"' in qml and "#e31a1c" in qml


def test_second_run_does_not_overwrite(api, fx, tmp_path):
    out = tmp_path / "o"
    paths = []
    for _ in range(2):
        _, job = api.post("/api/v1/jobs", _job(fx, out, vectorize=False, output_name="same"))
        job = api.wait(job["id"])
        assert job["state"] == "succeeded", job
        paths.append(job["result"]["outputs"][0]["path"])
    assert paths == [str(out / "same.tif"), str(out / "same_2.tif")]


def test_nodata_and_bbox(api, fx, tmp_path):
    out = tmp_path / "nd"
    with rasterio.open(fx["nodata"]) as src:
        t = src.transform
        # bbox covering rows 10..50 and cols 20..70 (in CRS units)
        bbox = [t.c + 20, t.f - 50, t.c + 70, t.f - 10]
    _, job = api.post("/api/v1/jobs", _job(fx, out, raster=fx["nodata"], bbox=bbox, vectorize=False))
    job = api.wait(job["id"])
    assert job["state"] == "succeeded", job
    with rasterio.open(job["result"]["outputs"][0]["path"]) as dst:
        assert (dst.width, dst.height) == (50, 40)
        assert dst.transform.c == t.c + 20 and dst.transform.f == t.f - 10
        cls = dst.read(1)
    # nodata box in the source: rows 0..24, cols 0..40 -> in the sub-window rows 0..14, cols 0..20
    assert (cls[:14, :20] == 255).all()
    assert (cls[14:, :] != 255).all() and (cls[:, 20:] != 255).all()


class _GatedRuntime(Runtime):
    """A deterministic pointwise model that blocks after its first batch until released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, x):
        self.started.set()
        assert self.release.wait(30)
        return np.repeat(x[:, :1], 3, axis=1)


def test_cancel_running_job_leaves_nothing(api, fx, tmp_path):
    entry = api.app.models.get(fx["seg_id"])
    gated = _GatedRuntime()
    api.app.runtimes.put(entry, "torch", api.app.device, gated)
    try:
        out = tmp_path / "cancel"
        _, job = api.post("/api/v1/jobs", _job(fx, out, batch_size=1))
        assert gated.started.wait(30)
        status, cancelled = api.post(f"/api/v1/jobs/{job['id']}/cancel")
        assert status == 200 and cancelled["state"] == "running"
        gated.release.set()
        job = api.wait(job["id"])
        assert job["state"] == "cancelled", job
        assert job["result"] is None
        assert list(out.iterdir()) == []  # temporary outputs removed
        # cancelling again is a state error
        assert_error(*api.post(f"/api/v1/jobs/{job['id']}/cancel"), 409, "invalid_job_state")
    finally:
        gated.release.set()
        api.app.runtimes._items.clear()


def test_cancel_queued_job(api, fx, tmp_path):
    entry = api.app.models.get(fx["seg_id"])
    gated = _GatedRuntime()
    api.app.runtimes.put(entry, "torch", api.app.device, gated)
    try:
        _, first = api.post("/api/v1/jobs", _job(fx, tmp_path / "a"))
        assert gated.started.wait(30)
        _, second = api.post("/api/v1/jobs", _job(fx, tmp_path / "b"))
        assert second["state"] == "queued"
        status, c = api.post(f"/api/v1/jobs/{second['id']}/cancel")
        assert status == 200 and c["state"] == "cancelled"
        gated.release.set()
        assert api.wait(first["id"])["state"] == "succeeded"
        assert api.wait(second["id"])["state"] == "cancelled"
        assert not (tmp_path / "b").exists() or list((tmp_path / "b").iterdir()) == []
    finally:
        gated.release.set()
        api.app.runtimes._items.clear()


def test_failed_job_reports_error_and_leaves_nothing(api, fx, tmp_path):
    class Wrong(Runtime):
        def __call__(self, x):  # 5 channels for a 3-class package
            return np.zeros((x.shape[0], 5, *x.shape[2:]), dtype=np.float32)

    entry = api.app.models.get(fx["seg_id"])
    api.app.runtimes.put(entry, "torch", api.app.device, Wrong())
    try:
        out = tmp_path / "fail"
        _, job = api.post("/api/v1/jobs", _job(fx, out))
        job = api.wait(job["id"])
        assert job["state"] == "failed"
        assert job["error"]["code"] == "invalid_model_package"
        assert "5 channels" in job["error"]["message"]
        assert list(out.iterdir()) == []
    finally:
        api.app.runtimes._items.clear()


def test_jobs_list_and_unknown_job(api):
    status, body = api.get("/api/v1/jobs")
    assert status == 200 and isinstance(body["jobs"], list)
    assert_error(*api.get("/api/v1/jobs/deadbeef"), 404, "job_not_found")
    assert_error(*api.post("/api/v1/jobs/deadbeef/cancel"), 404, "job_not_found")


BAD = [
    # (raster key, options, status, code)
    ("garbage", {}, 422, "unreadable_raster"),
    ("truncated", {}, 422, "unreadable_raster"),
    ("one_band", {}, 422, "band_count_mismatch"),
    ("no_crs", {}, 422, "missing_crs"),
    ("rotated", {}, 422, "rotated_raster"),
    ("coarse_gsd", {}, 422, "gsd_mismatch"),
    ("complex", {}, 422, "unsupported_dtype"),
    ("rgb", {"bands": [1, 2, 7]}, 422, "invalid_band_selection"),
    ("rgb", {"bands": [1, 2]}, 422, "band_count_mismatch"),
    ("rgb", {"bbox": [0, 0, 1, 1]}, 422, "bbox_outside"),
    ("rgb", {"bbox": [5, 5, 1, 1]}, 400, "bad_request"),
    ("rgb", {"tile_size_px": 64, "tile_overlap_px": 60}, 400, "invalid_option"),
    ("rgb", {"batch_size": 0}, 400, "invalid_option"),
    ("rgb", {"tile_size_px": "big"}, 400, "invalid_option"),
    ("rgb", {"colour": "red"}, 400, "unknown_option"),
    ("rgb", {"output_name": "../escape"}, 400, "invalid_output_path"),
    ("rgb", {"output_name": "a/b"}, 400, "invalid_output_path"),
    ("rgb", {"output_name": ".hidden"}, 400, "invalid_output_path"),
    ("rgb", {"output_name": "x.tif"}, 400, "invalid_output_path"),
    ("rgb", {"runtime": "onnx"}, 400, "invalid_option"),
]


@pytest.mark.parametrize("raster,options,status,code", BAD, ids=[f"{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_refused_and_nothing_written(api, fx, tmp_path, raster, options, status, code):
    out = tmp_path / "out"
    out.mkdir()
    err = assert_error(*api.post("/api/v1/jobs", _job(fx, out, raster=fx[raster], **options)), status, code)
    assert list(out.iterdir()) == []
    if code == "band_count_mismatch" and raster == "one_band":
        assert err["details"] == {"expected_bands": 3, "got_bands": 1}
        assert "options.bands" in err["message"]


def test_gsd_mismatch_can_be_allowed(api, fx, tmp_path):
    _, job = api.post("/api/v1/jobs", _job(fx, tmp_path / "g", raster=fx["coarse_gsd"], allow_gsd_mismatch=True,
                                           vectorize=False))
    assert any("allow_gsd_mismatch" in w for w in job["warnings"])
    assert api.wait(job["id"])["state"] == "succeeded"


@pytest.mark.parametrize("mutate,status,code", [
    (lambda b: b.update(model="nope"), 404, "model_not_found"),
    (lambda b: b.update(task="dance"), 400, "unsupported_task"),
    (lambda b: b.update(task="object_detection"), 400, "task_mismatch"),
    (lambda b: b["inputs"].update(raster="/no/such/file.tif"), 404, "input_not_found"),
    (lambda b: b["inputs"].update(raster="relative.tif"), 400, "bad_request"),
    (lambda b: b["inputs"].update(raster_after="/x.tif"), 400, "bad_request"),
    (lambda b: b.update(output_dir="relative/out"), 400, "invalid_output_path"),
    (lambda b: b.update(output_dir="/tmp/../etc/x"), 400, "invalid_output_path"),
    (lambda b: b.update(extra=1), 400, "bad_request"),
    (lambda b: b.update(options=[1]), 400, "bad_request"),
    (lambda b: b.pop("inputs"), 400, "bad_request"),
])
def test_bad_request_fields(api, fx, tmp_path, mutate, status, code):
    body = _job(fx, tmp_path / "never")
    mutate(body)
    assert_error(*api.post("/api/v1/jobs", body), status, code)
    assert not (tmp_path / "never").exists()


def test_output_dir_is_a_file(api, fx, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert_error(*api.post("/api/v1/jobs", _job(fx, f)), 400, "invalid_output_path")


def test_onnx_runtime_matches_torch(api, fx, tmp_path):
    from make_fixtures import build_fixture_package

    build_fixture_package("semantic_segmentation", fx["models"] / "seg-onnx", name="rsfm-fixture-seg-onnx", onnx=True)
    results = {}
    for runtime in ("torch", "onnx"):
        body = _job(fx, tmp_path / runtime, vectorize=False, runtime=runtime)
        body["model"] = "rsfm-fixture-seg-onnx"
        status, job = api.post("/api/v1/jobs", body)
        assert status == 202, job
        job = api.wait(job["id"])
        assert job["state"] == "succeeded", job
        assert job["result"]["stats"]["parameters"]["runtime"] == runtime
        with rasterio.open(job["result"]["outputs"][0]["path"]) as ds:
            results[runtime] = ds.read(1)
    agree = (results["torch"] == results["onnx"]).mean()
    assert agree > 0.999, agree  # same graph; only float rounding may flip a near-tie pixel


QGIS_CHECK = r"""
import sys
from qgis.core import QgsApplication, QgsRasterLayer, QgsVectorLayer
app = QgsApplication([], False); app.initQgis()
tif, qml, gpkg, vqml = sys.argv[1:5]
r = QgsRasterLayer(tif, "r")
assert r.isValid() and r.crs().authid() == "EPSG:32640", r.crs().authid()
msg, ok = r.loadNamedStyle(qml); assert ok, msg
assert r.renderer().type() == "paletted", r.renderer().type()
print("RASTER", [c.label for c in r.renderer().classes()])
v = QgsVectorLayer(gpkg + "|layername=classes", "v", "ogr")
assert v.isValid() and v.featureCount() > 0
msg, ok = v.loadNamedStyle(vqml); assert ok, msg
assert v.renderer().type() == "categorizedSymbol" and v.renderer().classAttribute() == "class_id"
print("VECTOR", v.featureCount(), [c.label() for c in v.renderer().categories()], flush=True)
import os
os._exit(0)  # QGIS 3.22 may crash in exitQgis() while layers are alive; the checks are done
"""


def test_outputs_and_styles_load_in_real_qgis(api, fx, tmp_path):
    """The .tif/.gpkg and their .qml styles open in QGIS itself (its own Python, run as a subprocess)."""
    import os
    import subprocess

    qgis_python = "/usr/bin/python3"
    probe = subprocess.run([qgis_python, "-c", "import qgis.core"], capture_output=True) if os.path.exists(
        qgis_python) else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no QGIS Python on this machine")
    _, job = api.post("/api/v1/jobs", _job(fx, tmp_path / "q", output_name="q"))
    job = api.wait(job["id"])
    assert job["state"] == "succeeded", job
    r, v = job["result"]["outputs"]
    script = tmp_path / "check.py"
    script.write_text(QGIS_CHECK)
    res = subprocess.run([qgis_python, str(script), r["path"], r["style"], v["path"], v["style"]],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "RASTER ['background', 'building', 'vegetation']" in res.stdout
    assert "VECTOR" in res.stdout
    assert "partially supported" not in res.stderr  # GeoPackage version QGIS 3.22's GDAL reads fully


def test_geographic_crs_raster(api, fx, tmp_path):
    """EPSG:4326 pixels of ~1 m: GSD is converted to metres, areas come out in square metres."""
    deg = 1.0 / 111_320.0  # ~1 m at the equator
    path = write_fixture_raster(tmp_path / "geo.tif", width=64, height=48, crs="EPSG:4326", gsd_m=deg,
                                origin=(55.0, 0.0005))
    _, job = api.post("/api/v1/jobs", _job(fx, tmp_path / "geo", raster=path))
    assert job.get("warnings") == [], job
    job = api.wait(job["id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["stats"]["gsd_m"] == pytest.approx(1.0, rel=0.01)
    total = sum(c["area_m2"] for c in job["result"]["stats"]["classes"])
    assert total == pytest.approx(64 * 48, rel=0.01)
    _, _, _, fields = pyogrio.raw.read(job["result"]["outputs"][1]["path"], layer="classes")
    assert fields[2].sum() == pytest.approx(64 * 48, rel=0.01)  # area_m2 of the polygons


def test_uint16_raster_warns(api, fx, tmp_path):
    path = write_fixture_raster(tmp_path / "u16.tif", dtype="uint16")
    status, body = api.post(f"/api/v1/models/{fx['seg_id']}/check", {"raster": str(path)})
    assert status == 200 and body["ok"] is True
    assert any("statistics are for uint8" in w for w in body["warnings"])
