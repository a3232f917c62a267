"""Shared backend test fixtures: fixture packages/rasters, a live server on loopback, an HTTP helper."""

from __future__ import annotations

import http.client
import json
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))

import make_fixtures as mf  # noqa: E402

from backend.server import App, serve_in_thread  # noqa: E402
from backend.settings import Settings  # noqa: E402


@pytest.fixture(scope="session")
def fx(tmp_path_factory) -> dict[str, Any]:
    """The segmentation fixture package and the standard fixture rasters (built once per session)."""
    root = tmp_path_factory.mktemp("fixtures")
    models = root / "models"
    seg = mf.build_fixture_package("semantic_segmentation", models / mf.fixture_name("semantic_segmentation"))
    r = root / "rasters"
    return {
        "root": root, "models": models, "seg": seg, "seg_id": mf.fixture_name("semantic_segmentation"),
        "rgb": mf.write_fixture_raster(r / "rgb.tif"),
        "rgb_after": mf.write_fixture_raster(r / "rgb_after.tif", seed=mf.SEED + 1),
        "one_band": mf.write_fixture_raster(r / "one_band.tif", count=1),
        "no_crs": mf.write_fixture_raster(r / "no_crs.tif", crs=None),
        "nodata": mf.write_fixture_raster(r / "nodata.tif", nodata=0, nodata_box=(0, 0, 24, 40)),
        "rotated": mf.write_fixture_raster(r / "rotated.tif", rotation_deg=15),
        "coarse_gsd": mf.write_fixture_raster(r / "coarse_gsd.tif", gsd_m=30.0),
        "slightly_coarse": mf.write_fixture_raster(r / "slightly_coarse.tif", gsd_m=3.0),
        "complex": mf.write_fixture_raster(r / "complex.tif", dtype="complex64", count=3),
        "truncated": mf.write_corrupt_raster(r / "truncated.tif"),
        "garbage": mf.write_corrupt_raster(r / "garbage.tif", "garbage"),
    }


@dataclass
class Api:
    host: str
    port: int
    token: str
    app: App

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = "default",
                raw: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """One HTTP request on a fresh connection; returns ``(status, parsed JSON)``."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        h = {"Content-Type": "application/json"}
        if token == "default":
            token = self.token
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        h.update(headers or {})
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        assert resp.getheader("Content-Type", "").startswith("application/json"), payload[:200]
        return resp.status, json.loads(payload)

    def get(self, path: str, **kw) -> tuple[int, Any]:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw) -> tuple[int, Any]:
        return self.request("POST", path, body, **kw)

    def wait(self, job_id: str, timeout: float = 120.0) -> dict:
        """Poll a job until it reaches a final state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, job = self.get(f"/api/v1/jobs/{job_id}")
            assert status == 200, job
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


def assert_error(status: int, body: Any, expected_status: int, code: str | None = None) -> dict:
    """Check the one error shape every endpoint uses; return the error object."""
    assert status == expected_status, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err.get("code"), str) and err["code"].islower() and " " not in err["code"], err
    assert isinstance(err.get("message"), str) and len(err["message"]) > 10, err
    if code is not None:
        assert err["code"] == code, err
    return err


@pytest.fixture(scope="session")
def api(fx) -> Api:
    """A real server on 127.0.0.1 (random port) serving the fixture models; shut down after the session."""
    settings = Settings.resolve({"models_dir": [str(fx["models"])], "threads": 1, "device": "cpu"}, env={})
    token = secrets.token_urlsafe(24)
    app = App(settings, token)
    server, thread = serve_in_thread(app, "127.0.0.1", 0)
    host, port = server.server_address[:2]
    yield Api(host, port, token, app)
    server.shutdown()
    server.server_close()
    app.jobs.shutdown()
