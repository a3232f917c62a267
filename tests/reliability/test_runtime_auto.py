"""The default runtime is "auto": onnxruntime where the package ships model.onnx, else torch."""

from __future__ import annotations

import shutil

import pytest
from rel_helpers import assert_error, seg_job

from backend.models import ModelRegistry
from backend.settings import Settings
from backend.tasks import auto_runtime


def test_default_setting_is_auto():
    assert Settings.resolve({}, env={}).runtime == "auto"
    assert Settings.resolve({}, env={"RSFM_RUNTIME": "torch"}).runtime == "torch"
    with pytest.raises(ValueError, match="auto"):
        Settings.resolve({"runtime": "tensorrt"}, env={})


@pytest.mark.parametrize(("model", "expected"), [("seg_onnx_id", "onnx"), ("seg_id", "torch")])
def test_auto_picks_onnx_only_with_model_onnx(rapi, rfx, tmp_path, model, expected):
    assert rapi.app.settings.runtime == "auto"
    status, job = rapi.post("/api/v1/jobs", seg_job(rfx[model], rfx["rgb"], tmp_path / "o", vectorize=False))
    assert status == 202, job
    job = rapi.wait(job["id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["stats"]["parameters"]["runtime"] == expected


def test_explicit_runtime_still_selectable(rapi, rfx, tmp_path):
    status, job = rapi.post("/api/v1/jobs", seg_job(rfx["seg_onnx_id"], rfx["rgb"], tmp_path / "o",
                                                    vectorize=False, runtime="torch"))
    assert rapi.wait(job["id"])["result"]["stats"]["parameters"]["runtime"] == "torch"
    status, body = rapi.post("/api/v1/jobs", seg_job(rfx["seg_id"], rfx["rgb"], tmp_path / "p", runtime="onnx"))
    assert_error(status, body, 400, "invalid_option")


def test_auto_falls_back_when_the_graph_file_is_missing(rfx, tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(rfx["seg_onnx"], pkg)
    reg = ModelRegistry([pkg], include_bundled=False)
    entry = reg.get("rsfm-fixture-seg-onnx")
    assert auto_runtime(entry) == "onnx"
    (pkg / "model.onnx").unlink()
    assert auto_runtime(entry) == "torch"


def test_threads_sized_to_the_machine(monkeypatch):
    import backend.settings as bs

    monkeypatch.setattr(bs.os, "cpu_count", lambda: 16)
    assert bs._default_threads() == 15  # one core left for the HTTP server and the writer thread
    assert Settings.resolve({"workers": 3}, env={}).threads == 5  # shared among the workers
    assert Settings.resolve({"workers": 3, "threads": 8}, env={}).threads == 8  # an explicit value wins
    assert Settings.resolve({"workers": 3}, env={"RSFM_THREADS": "2"}).threads == 2
    monkeypatch.setattr(bs.os, "cpu_count", lambda: 2)
    assert Settings.resolve({}, env={}).threads == 2 and Settings.resolve({"workers": 4}, env={}).threads == 1
