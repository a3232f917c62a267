"""Bad inputs: degenerate and huge rasters, all-nodata, malformed JSON, broken packages, disk full."""

from __future__ import annotations

import json
import resource
import secrets
import shutil
import signal

import numpy as np
import pyogrio
import pytest
import rasterio
from rel_helpers import assert_error, mf, seg_job, start_backend

from backend.tasks import NO_VALID_PIXELS


def _vrt(path, src, width, height):
    """A VRT of ``width x height`` px that maps ``src``'s 96 x 80 px at its upper-left corner."""
    bands = "".join(f"""
  <VRTRasterBand dataType="Byte" band="{b}">
    <SimpleSource><SourceFilename relativeToVRT="0">{src}</SourceFilename><SourceBand>{b}</SourceBand>
      <SrcRect xOff="0" yOff="0" xSize="96" ySize="80"/><DstRect xOff="0" yOff="0" xSize="96" ySize="80"/>
    </SimpleSource>
  </VRTRasterBand>""" for b in (1, 2, 3))
    with rasterio.open(src) as s:
        srs = s.crs.to_wkt()
        t = s.transform
    path.write_text(f"""<VRTDataset rasterXSize="{width}" rasterYSize="{height}">
  <SRS>{srs.replace('"', '&quot;')}</SRS>
  <GeoTransform>{t.c}, {t.a}, 0, {t.f}, 0, {t.e}</GeoTransform>{bands}
</VRTDataset>""")
    return path


def test_one_pixel_raster(rapi, rfx, tmp_path):
    r = mf.write_fixture_raster(tmp_path / "px.tif", width=1, height=1)
    status, job = rapi.post("/api/v1/jobs", seg_job(rfx["seg_id"], r, tmp_path / "o", vectorize=True))
    assert status == 202, job
    job = rapi.wait(job["id"])
    assert job["state"] == "succeeded", job
    with rasterio.open(job["result"]["outputs"][0]["path"]) as ds:
        assert (ds.width, ds.height) == (1, 1) and ds.read(1)[0, 0] != 255
    assert job["result"]["stats"]["polygons"] == 1


def test_zero_size_raster_refused(rapi, rfx, tmp_path):
    v = _vrt(tmp_path / "zero.vrt", rfx["rgb"], 0, 0)
    status, body = rapi.post("/api/v1/jobs", seg_job(rfx["seg_id"], v, tmp_path / "o"))
    err = assert_error(status, body, 422)
    assert err["code"] in ("empty_raster", "unreadable_raster") and "zero.vrt" in err["message"]
    assert not (tmp_path / "o").exists()


def test_huge_declared_raster_refused_without_allocating_and_bbox_streams(rapi, rfx, tmp_path):
    v = _vrt(tmp_path / "huge.vrt", rfx["rgb"], 1_000_000, 1_000_000)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    status, body = rapi.post("/api/v1/jobs", seg_job(rfx["seg_id"], v, tmp_path / "o"))
    err = assert_error(status, body, 422, "raster_too_large")
    assert "bbox" in err["message"]
    status, body = rapi.post(f"/api/v1/models/{rfx['seg_id']}/check", {"raster": str(v)})
    assert status == 200 and not body["ok"] and "raster_too_large" in body["codes"]
    # a bbox inside the declared area is processed like any raster
    with rasterio.open(rfx["rgb"]) as s:
        b = s.bounds
    status, job = rapi.post("/api/v1/jobs", seg_job(rfx["seg_id"], v, tmp_path / "o", vectorize=False,
                                                    bbox=[b.left, b.bottom, b.right, b.top]))
    assert status == 202, job
    job = rapi.wait(job["id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["stats"]["width_px"] == 96 and job["result"]["stats"]["height_px"] == 80
    # nothing near 10^12 pixels was allocated (a uint8 class map alone would be 1 TB)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 500_000  # KiB


def test_nodata_everywhere_gives_warning_and_empty_outputs(rapi, rfx, tmp_path):
    r = mf.write_fixture_raster(tmp_path / "nd.tif", nodata=0, data=np.zeros((3, 80, 96), np.uint8))
    status, job = rapi.post("/api/v1/jobs", seg_job(rfx["seg_id"], r, tmp_path / "o", vectorize=True))
    assert status == 202, job
    job = rapi.wait(job["id"])
    assert job["state"] == "succeeded", job
    assert NO_VALID_PIXELS in job["warnings"]
    outputs = {o["kind"]: o for o in job["result"]["outputs"]}
    with rasterio.open(outputs["raster"]["path"]) as ds:
        assert (ds.read(1) == 255).all()
    assert pyogrio.read_info(outputs["vector"]["path"])["features"] == 0
    assert all(c["pixels"] == 0 for c in job["result"]["stats"]["classes"])


@pytest.mark.parametrize("raw", [b'{"task": ', b"\xff\xfe{}", b"[" * 200_000 + b"]" * 200_000, b"nan",
                                 b'{"task": "semantic_segmentation", "task": 1'])
def test_malformed_json(rapi, raw):
    status, body = rapi.request("POST", "/api/v1/jobs", raw=raw)
    assert_error(status, body, 400, "invalid_json")
    status, body = rapi.get("/api/v1/health")  # the server is still fine
    assert status == 200


@pytest.mark.parametrize("raw", [b"[]", b"null", b'"job"', b"42", b'{"task": null}'])
def test_json_of_the_wrong_shape(rapi, raw):
    status, body = rapi.request("POST", "/api/v1/jobs", raw=raw)
    assert_error(status, body, 400)


def test_broken_config_json_names_package_and_fix(rfx, tmp_path):
    from backend.server import App
    from backend.settings import Settings

    models = tmp_path / "models"
    shutil.copytree(rfx["seg"], models / "broken-pkg")
    (models / "broken-pkg" / "config.json").write_text('{"name": "broken-pkg", ')
    app = App(Settings.resolve({"models_dir": [str(models)], "threads": 1, "device": "cpu"}, env={}),
              secrets.token_urlsafe(24))
    try:
        assert str(models / "broken-pkg") in app.models.scan() or True
        assert str(models / "broken-pkg") in app.models.broken
        from backend.errors import ModelPackageError
        from backend.tasks import create_job

        with pytest.raises(ModelPackageError) as ei:
            create_job(app, seg_job("broken-pkg", rfx["rgb"], tmp_path / "o"))
        msg = ei.value.message
        assert str(models / "broken-pkg") in msg and "not valid JSON" in msg and "re-download" in msg
        assert ei.value.to_dict()["error"]["code"] == "invalid_model_package"
    finally:
        app.jobs.shutdown()


def test_mismatched_weights_fail_the_job_with_a_clear_error(rapi, rfx, tmp_path):
    pkg = rfx["models"] / "mismatch"
    if not pkg.exists():
        shutil.copytree(rfx["seg"], pkg)
        cfg = json.loads((pkg / "config.json").read_text())
        cfg["name"] = "mismatch"
        cfg["classes"] = cfg["classes"] + [{"name": "extra", "color": "#123456"}]  # head size != weights
        kw = cfg.get("architecture_kwargs", {})
        for k in ("num_classes", "n_classes"):
            if k in kw:
                kw[k] += 1
        (pkg / "config.json").write_text(json.dumps(cfg))
    status, job = rapi.post("/api/v1/jobs", seg_job("mismatch", rfx["rgb"], tmp_path / "o", runtime="torch"))
    assert status == 202, job
    job = rapi.wait(job["id"])
    assert job["state"] == "failed", job
    assert job["error"]["code"] == "invalid_model_package", job["error"]
    assert "mismatch" in job["error"]["message"] and "re-export" in job["error"]["message"]
    assert not (tmp_path / "o").exists() or [p.name for p in (tmp_path / "o").iterdir()] == []


def _limit_file_size(kib: int):
    def preexec():  # runs in the child before exec: a file size limit, and EFBIG instead of SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, kib * 1024))
    return preexec


@pytest.mark.parametrize("kib", [16, 64])  # 16: the GeoTIFF hits the limit; 64: the GeoPackage does
def test_disk_full_while_writing_fails_cleanly(rfx, tmp_path, kib):
    big = mf.write_fixture_raster(tmp_path / "noise.tif", width=512, height=512,
                                  data=np.random.default_rng(0).integers(0, 255, (3, 512, 512), dtype=np.uint8))
    be = start_backend(tmp_path, secrets.token_urlsafe(24), models=rfx["models"], preexec=_limit_file_size(kib),
                       extra_env={"RSFM_RUNTIME": "torch", "RSFM_BLOCK_SIZE_PX": "128"}, log_level="WARNING")
    out = tmp_path / "o"
    try:
        status, job = be.call("POST", "/api/v1/jobs", seg_job(rfx["seg_id"], big, out, output_name="full"))
        assert status == 202, job
        job = be.wait(job["id"])
        assert job["state"] == "failed", job
        assert job["error"]["code"] == "output_write_failed", job["error"]
        assert "free some space" in job["error"]["message"]
        status, health = be.call("GET", "/api/v1/health")
        assert status == 200  # the backend survived
    finally:
        be.stop()
    assert sorted(p.name for p in out.iterdir()) == []  # nothing half-written, no temp files, no record
