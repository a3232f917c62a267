"""Reliability fixtures: fixture packages/rasters and an in-process server (helpers live in rel_helpers)."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# assert_error: tests/backend's modules do ``from conftest import assert_error``, and in a run of both folders
# "conftest" may be this file, so it offers the same name
from rel_helpers import SEG, Api, assert_error, mf  # noqa: E402, F401

from backend.server import App, serve_in_thread  # noqa: E402
from backend.settings import Settings  # noqa: E402


@pytest.fixture(scope="session")
def rfx(tmp_path_factory) -> dict[str, Any]:
    """A segmentation package (with model.onnx), one without, and a few rasters (built once)."""
    root = tmp_path_factory.mktemp("reliability")
    models = root / "models"
    seg = mf.build_fixture_package(SEG, models / "seg")
    seg_onnx = mf.build_fixture_package(SEG, models / "seg-onnx", name="rsfm-fixture-seg-onnx", onnx=True)
    r = root / "rasters"
    return {"root": root, "models": models, "seg": seg, "seg_id": mf.fixture_name(SEG), "seg_onnx": seg_onnx,
            "seg_onnx_id": "rsfm-fixture-seg-onnx", "rgb": mf.write_fixture_raster(r / "rgb.tif"),
            "big": mf.write_fixture_raster(r / "big.tif", width=384, height=384)}


@pytest.fixture(scope="session")
def rapi(rfx):
    """An in-process server on 127.0.0.1 serving the reliability fixture models (workers=2)."""
    settings = Settings.resolve({"models_dir": [str(rfx["models"])], "threads": 1, "device": "cpu",
                                 "workers": 2}, env={})
    token = secrets.token_urlsafe(24)
    app = App(settings, token)
    server, _ = serve_in_thread(app, "127.0.0.1", 0)
    host, port = server.server_address[:2]
    yield Api(host, port, token, app)
    server.shutdown()
    server.server_close()
    app.jobs.shutdown()
