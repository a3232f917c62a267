"""Kill-and-resume: a backend SIGKILLed mid-job is restarted and the job resumed from its block journal."""

from __future__ import annotations

import os
import secrets
import signal
import time

import numpy as np
import pyogrio
import pytest
import rasterio
from rel_helpers import SEG, assert_error, mf, seg_job, start_backend


def _visible(d):
    return sorted(p.name for p in d.iterdir() if not p.name.startswith("."))


def test_sigkill_mid_job_then_resume_equals_clean_run(rfx, tmp_path):
    token = secrets.token_urlsafe(24)
    env = {"RSFM_BLOCK_SIZE_PX": "64", "RSFM_RUNTIME": "torch"}
    out, clean = tmp_path / "out", tmp_path / "clean"
    body = seg_job(rfx["seg_id"], rfx["big"], out, output_name="lc", vectorize=True)

    be = start_backend(tmp_path, token, models=rfx["models"], extra_env=env)
    try:
        status, job = be.call("POST", "/api/v1/jobs", body)
        assert status == 202, job
        jid = job["id"]
        journal = out / f".lc.{jid[:12]}.tmp.journal"
        deadline = time.monotonic() + 120
        # kill once a few blocks are journalled (of 36), well before the end
        while time.monotonic() < deadline and len(list(journal.glob("b*.npz"))) < 4:
            time.sleep(0.01)
        os.kill(be.proc.pid, signal.SIGKILL)
        be.proc.wait(30)
    finally:
        be.stop()
    done_before = len(list(journal.glob("b*.npz")))
    assert 4 <= done_before < 36, done_before  # really killed mid-job
    assert _visible(out) == []  # nothing under a final name: only hidden temp files, journal and record
    assert (out / ".rsfm-jobs" / f"{jid}.json").is_file()

    be = start_backend(tmp_path, token, models=rfx["models"], extra_env=env)
    try:
        status, body2 = be.call("POST", f"/api/v1/jobs/{jid}/resume", {})
        assert_error(status, body2, 404, "job_not_found")  # the record lives in the job's output_dir
        status, job = be.call("POST", f"/api/v1/jobs/{jid}/resume", {"output_dir": str(out)})
        assert status == 202 and job["id"] == jid, job
        job = be.wait(jid)
        assert job["state"] == "succeeded", job
        assert any(w.startswith(f"resumed: {done_before} of 36") for w in job["warnings"]), job["warnings"]
        status, job2 = be.call("POST", f"/api/v1/jobs/{jid}/resume", {"output_dir": str(out)})
        assert_error(status, job2, 404, "job_not_found")  # finished: nothing left to resume
        status, ref = be.call("POST", "/api/v1/jobs", seg_job(rfx["seg_id"], rfx["big"], clean, output_name="lc",
                                                              vectorize=True))
        ref = be.wait(ref["id"])
        assert ref["state"] == "succeeded", ref
    finally:
        be.stop()
    # the resumed output equals an uninterrupted run, and nothing else is left behind
    assert sorted(p.name for p in out.iterdir()) == ["lc.qml", "lc.tif", "lc_polygons.gpkg", "lc_polygons.qml"]
    with rasterio.open(out / "lc.tif") as a, rasterio.open(clean / "lc.tif") as b:
        assert a.profile == b.profile
        assert np.array_equal(a.read(1), b.read(1))
        assert a.overviews(1) == b.overviews(1)
    assert job["result"]["stats"]["classes"] == ref["result"]["stats"]["classes"]
    assert job["result"]["stats"]["polygons"] == ref["result"]["stats"]["polygons"]
    assert (out / "lc.qml").read_bytes() == (clean / "lc.qml").read_bytes()


@pytest.fixture(scope="module")
def sparse_fx(tmp_path_factory):
    """Real fixture packages of two sparse tasks (seeded random weights) and rasters sized so a job takes a few
    seconds on one CPU thread."""
    root = tmp_path_factory.mktemp("sparse")
    models = root / "models"
    for task in ("object_detection", "scene_classification"):
        mf.build_fixture_package(task, models / task)
    return {"models": models, "object_detection": mf.write_fixture_raster(root / "det.tif", width=320, height=320),
            "scene_classification": mf.write_fixture_raster(root / "scene.tif", width=1024, height=1024)}


def _features(path, layer):
    """WKB per feature and every attribute except the run's timestamp, in file order."""
    meta = pyogrio.read_info(path, layer=layer)
    _, _, geoms, fields = pyogrio.raw.read(path, layer=layer)
    return [bytes(g) for g in geoms], {n: list(f) for n, f in zip(meta["fields"], fields, strict=True)
                                       if n != "created"}


# (task, layer, tiles in the job (64 px tiles, 16 px overlap, batch 2), journal units to wait for before the kill)
SPARSE = [("object_detection", "detections", 49, 4), ("scene_classification", "scenes", 441, 20)]


@pytest.mark.slow
@pytest.mark.parametrize("task,layer,n_tiles,wait_units", SPARSE, ids=[t[0] for t in SPARSE])
def test_sigkill_mid_sparse_job_then_resume_equals_clean_run(sparse_fx, tmp_path, task, layer, n_tiles,
                                                             wait_units):
    token = secrets.token_urlsafe(24)
    # one journal unit per batch (the default groups ~3 s of work), so the kill lands between units
    env = {"RSFM_RUNTIME": "torch", "RSFM_JOURNAL_INTERVAL_S": "0"}
    out, clean = tmp_path / "out", tmp_path / "clean"

    def body(d):
        return {"task": task, "model": mf.fixture_name(task), "inputs": {"raster": str(sparse_fx[task])},
                "output_dir": str(d), "options": {"output_name": "sp", "score_threshold": 0.3}}

    be = start_backend(tmp_path, token, models=sparse_fx["models"], extra_env=env)
    try:
        status, job = be.call("POST", "/api/v1/jobs", body(out))
        assert status == 202, job
        jid = job["id"]
        journal = out / f".sp.{jid[:12]}.tmp.journal"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(journal.glob("b*.npz"))) < wait_units:
            time.sleep(0.01)
        os.kill(be.proc.pid, signal.SIGKILL)
        be.proc.wait(30)
    finally:
        be.stop()
    units = len(list(journal.glob("b*.npz")))
    n_batches = (n_tiles + 1) // 2
    assert wait_units <= units < n_batches, units  # really killed mid-job, with journalled batches
    assert _visible(out) == []

    be = start_backend(tmp_path, token, models=sparse_fx["models"], extra_env=env)
    try:
        status, job = be.call("POST", f"/api/v1/jobs/{jid}/resume", {"output_dir": str(out)})
        assert status == 202 and job["id"] == jid, job
        job = be.wait(jid)
        assert job["state"] == "succeeded", job
        # every unit is one full batch of 2 tiles (the short last batch was not reached)
        assert f"resumed: {2 * units} of {n_tiles} tiles were already done" in job["warnings"], job["warnings"]
        status, ref = be.call("POST", "/api/v1/jobs", body(clean))
        ref = be.wait(ref["id"])
        assert ref["state"] == "succeeded", ref
        assert not any(w.startswith("resumed") for w in ref["warnings"])
    finally:
        be.stop()
    assert sorted(p.name for p in out.iterdir()) == ["sp.gpkg", "sp.qml"]  # journal and record gone
    got, want = _features(out / "sp.gpkg", layer), _features(clean / "sp.gpkg", layer)
    assert len(got[0]) > 0
    assert got == want  # same features, byte-identical geometries, same attributes, same order
    assert job["result"]["stats"] == ref["result"]["stats"]
    assert (out / "sp.qml").read_bytes() == (clean / "sp.qml").read_bytes()


def test_resume_refusals_and_records(rapi, rfx, tmp_path):
    status, body = rapi.post("/api/v1/jobs/not-a-job/resume", {})
    assert_error(status, body, 404, "job_not_found")
    status, body = rapi.post("/api/v1/jobs/" + "0" * 32 + "/resume", {"output_dir": str(tmp_path)})
    assert_error(status, body, 404, "job_not_found")
    status, body = rapi.post("/api/v1/jobs/" + "0" * 32 + "/resume", {"output_dir": str(tmp_path), "x": 1})
    assert_error(status, body, 400, "bad_request")
    # a finished job leaves no record behind, and cannot be resumed
    status, job = rapi.post("/api/v1/jobs", seg_job(rfx["seg_id"], rfx["rgb"], tmp_path / "o", vectorize=False))
    assert status == 202
    job = rapi.wait(job["id"])
    assert job["state"] == "succeeded" and job["task"] == SEG
    assert not (tmp_path / "o" / ".rsfm-jobs").exists()
    status, body = rapi.post(f"/api/v1/jobs/{job['id']}/resume", {})
    assert_error(status, body, 404, "job_not_found")


def test_journal_from_other_settings_is_discarded(tmp_path):
    from backend.outputs import BlockJournal

    j = BlockJournal(tmp_path / ".j", {"params": [64, 16]})
    j.record(3, np.full((4, 5), 2, np.uint8))
    assert BlockJournal(tmp_path / ".j", {"params": [64, 16]}).done() == [3]
    assert np.array_equal(j.load(3), np.full((4, 5), 2, np.uint8))
    assert BlockJournal(tmp_path / ".j", {"params": [64, 8]}).done() == []  # another tiling: start again
    assert not list((tmp_path / ".j").glob("*.part"))


def test_resume_from_state_dir_record(rfx, tmp_path):
    """With --state-dir the record lives there and resume needs no output_dir (record as a crash leaves it)."""
    import json
    import secrets as _secrets

    from rel_helpers import Api

    from backend.server import App, serve_in_thread
    from backend.settings import Settings

    state = tmp_path / "state"
    settings = Settings.resolve({"models_dir": [str(rfx["models"])], "threads": 1, "device": "cpu",
                                 "state_dir": str(state)}, env={})
    app = App(settings, _secrets.token_urlsafe(24))
    server, _ = serve_in_thread(app, "127.0.0.1", 0)
    api = Api(*server.server_address[:2], app._token.decode(), app)
    try:
        jid = "ab" * 16
        state.mkdir()
        req = seg_job(rfx["seg_id"], rfx["rgb"], tmp_path / "o", output_name="lc", vectorize=False)
        (state / f"{jid}.json").write_text(json.dumps({"id": jid, "request": req}))
        status, job = api.post(f"/api/v1/jobs/{jid}/resume", None)
        assert status == 202 and job["id"] == jid, job
        job = api.wait(jid)
        assert job["state"] == "succeeded", job
        assert _visible(tmp_path / "o") == ["lc.qml", "lc.tif"]
        assert list(state.iterdir()) == []  # the record is gone once the job ended
        status, body = api.post(f"/api/v1/jobs/{jid}/resume", None)
        assert_error(status, body, 404, "job_not_found")
    finally:
        server.shutdown()
        server.server_close()
        app.jobs.shutdown()
