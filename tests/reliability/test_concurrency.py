"""Concurrency: two clients at once, a job next to a chat request, the bounded queue, no leaks."""

from __future__ import annotations

import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import rasterio
from rel_helpers import assert_error, seg_job

from backend.runtimes import Runtime


def test_two_clients_submit_at_once(rapi, rfx, tmp_path):
    """Two "QGIS windows" (two threads, own connections, one token) submit and poll simultaneously."""
    barrier = threading.Barrier(2)

    def client(name):
        barrier.wait()
        status, job = rapi.post("/api/v1/jobs", seg_job(rfx["seg_id"], rfx["big"], tmp_path / name,
                                                        output_name="lc", vectorize=False, runtime="torch"))
        assert status == 202, job
        return rapi.wait(job["id"])

    with ThreadPoolExecutor(2) as ex:
        a, b = ex.map(client, ["a", "b"])
    assert a["state"] == b["state"] == "succeeded", (a, b)
    assert a["id"] != b["id"]
    with rasterio.open(tmp_path / "a" / "lc.tif") as da, rasterio.open(tmp_path / "b" / "lc.tif") as db:
        assert np.array_equal(da.read(1), db.read(1))  # shared model, no cross-talk between the jobs


def test_job_and_chat_at_the_same_time(rapi, rfx, tmp_path):
    if "backend.chat.routes" not in rapi.app.route_modules:
        pytest.skip("backend.chat.routes is not importable in this checkout")
    status, first = rapi.post("/api/v1/jobs", seg_job(rfx["seg_id"], rfx["rgb"], tmp_path / "seg",
                                                      output_name="lc", vectorize=False))
    first = rapi.wait(first["id"])
    assert first["state"] == "succeeded", first
    tif = first["result"]["outputs"][0]["path"]
    chat_body = {"raster": str(rfx["rgb"]), "question": "What is the largest class?", "backend": "template",
                 "outputs": [{"path": tif, "task": "semantic_segmentation"}]}
    barrier = threading.Barrier(2)

    def job():
        barrier.wait()
        status, j = rapi.post("/api/v1/jobs", seg_job(rfx["seg_id"], rfx["big"], tmp_path / "j", vectorize=False))
        assert status == 202, j
        return rapi.wait(j["id"])

    def chat():
        barrier.wait()
        return rapi.post("/api/v1/chat", chat_body)

    with ThreadPoolExecutor(2) as ex:
        fj, fc = ex.submit(job), ex.submit(chat)
        j, (cstatus, cbody) = fj.result(), fc.result()
    assert j["state"] == "succeeded", j
    assert cstatus == 200, cbody
    assert isinstance(cbody.get("answer"), dict), cbody


class _Gate(Runtime):
    """A runtime that blocks until released (keeps the only worker busy)."""

    name = "gate"

    def __init__(self, k: int):
        self.k = k
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, x):
        self.entered.set()
        self.release.wait(60)
        return np.zeros((x.shape[0], self.k, x.shape[2], x.shape[3]), np.float32)


def test_bounded_queue_answers_503_when_full(rfx, tmp_path):
    from rel_helpers import Api as sys_path_api

    from backend.server import App, serve_in_thread
    from backend.settings import Settings
    settings = Settings.resolve({"models_dir": [str(rfx["models"])], "threads": 1, "device": "cpu",
                                 "workers": 1, "queue_size": 1, "runtime": "torch"}, env={})
    app = App(settings, secrets.token_urlsafe(24))
    server, _ = serve_in_thread(app, "127.0.0.1", 0)
    api = sys_path_api(*server.server_address[:2], app._token.decode(), app)
    entry = app.models.get(rfx["seg_id"])
    gate = _Gate(len(entry.config.classes))
    app.runtimes.put(entry, "torch", app.device, gate)
    try:
        s1, j1 = api.post("/api/v1/jobs", seg_job(rfx["seg_id"], rfx["rgb"], tmp_path / "1", vectorize=False))
        assert s1 == 202 and gate.entered.wait(30)  # running: the worker is busy
        s2, j2 = api.post("/api/v1/jobs", seg_job(rfx["seg_id"], rfx["rgb"], tmp_path / "2", vectorize=False))
        assert s2 == 202 and j2["state"] == "queued"
        s3, j3 = api.post("/api/v1/jobs", seg_job(rfx["seg_id"], rfx["rgb"], tmp_path / "3", vectorize=False))
        err = assert_error(s3, j3, 503, "queue_full")
        assert "wait" in err["message"]
        assert not (tmp_path / "3" / ".rsfm-jobs").exists()  # the refused job left no record
        status, health = api.get("/api/v1/health")
        assert status == 200 and health["jobs"] == {"queued": 1, "running": 1}
        gate.release.set()
        assert api.wait(j1["id"])["state"] == "succeeded"
        assert api.wait(j2["id"])["state"] == "succeeded"
        s4, j4 = api.post("/api/v1/jobs", seg_job(rfx["seg_id"], rfx["rgb"], tmp_path / "4", vectorize=False))
        assert s4 == 202  # room again
        assert api.wait(j4["id"])["state"] == "succeeded"
    finally:
        gate.release.set()
        server.shutdown()
        server.server_close()
        app.jobs.shutdown()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_many_small_jobs_leak_no_threads_or_files(rapi, rfx, tmp_path):
    """A short version of benchmarks/bench_load.py: 30 jobs from 3 clients; threads and fds come back."""
    from make_fixtures import write_fixture_raster

    small = write_fixture_raster(tmp_path / "small.tif", width=32, height=32)

    def run(i):
        status, job = rapi.post("/api/v1/jobs", seg_job(rfx["seg_id"], small, tmp_path / f"o{i % 3}",
                                                        vectorize=i % 2 == 0))
        assert status == 202, job
        return rapi.wait(job["id"])["state"]

    assert run(0) == "succeeded"  # warm-up: model loaded, pools created
    threads0, fds0 = threading.active_count(), _fds()
    with ThreadPoolExecutor(3) as ex:
        states = list(ex.map(run, range(1, 31)))
    assert states == ["succeeded"] * 30
    for _ in range(100):  # the last HTTP handler threads end just after their answer was sent
        if threading.active_count() <= threads0:
            break
        time.sleep(0.05)
    assert threading.active_count() <= threads0, [t.name for t in threading.enumerate()]
    assert _fds() <= fds0 + 2, os.listdir("/proc/self/fd")
