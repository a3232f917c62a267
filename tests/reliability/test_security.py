"""Security: secrets never logged, bodies bounded, writes only under output_dir, bandit clean."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rel_helpers import REPO, assert_error, seg_job, start_backend


def test_tokens_never_reach_the_logs(rfx, tmp_path):
    api_token, hf_token = secrets.token_urlsafe(24), "hf_" + secrets.token_urlsafe(24)
    be = start_backend(tmp_path, api_token, models=rfx["models"], extra_env={"HF_TOKEN": hf_token, "HF_HOME": str(tmp_path / "hf")},
                       log_level="DEBUG")
    try:
        assert be.call("GET", "/api/v1/health")[0] == 200
        status, job = be.call("POST", "/api/v1/jobs", seg_job(rfx["seg_id"], rfx["rgb"], tmp_path / "o",
                                                              vectorize=False))
        assert be.wait(job["id"])["state"] == "succeeded"
        be.call("POST", "/api/v1/jobs", {"task": "semantic_segmentation", "model": "nope", "inputs": {},
                                         "output_dir": "/x"})  # an error path, logged
        wrong = secrets.token_urlsafe(24)
        be.token = wrong
        assert be.call("GET", "/api/v1/health")[0] == 401
    finally:
        be.stop()
    stdout = be.proc.stdout.read().decode(errors="replace") if be.proc.stdout else ""
    log = be.log_path.read_text(errors="replace") + stdout
    assert "GET /api/v1/health" in log and "serving on" in log  # the DEBUG log is really there
    for secret in (api_token, hf_token, wrong):
        assert secret not in log


def test_health_does_not_show_secrets(rapi):
    status, body = rapi.get("/api/v1/health")
    assert status == 200
    assert rapi.token not in str(body)


def test_request_body_limit(rapi):
    limit = rapi.app.settings.max_body_bytes
    status, body = rapi.request("POST", "/api/v1/jobs", raw=b" " * (limit + 1))
    assert_error(status, body, 413, "payload_too_large")


def test_output_name_and_dir_cannot_escape(rapi, rfx, tmp_path):
    for name in ("../evil", "a/b", ".hidden", "x" * 101):
        status, body = rapi.post("/api/v1/jobs", seg_job(rfx["seg_id"], rfx["rgb"], tmp_path / "o", output_name=name))
        assert status == 400, (name, body)
    status, body = rapi.post("/api/v1/jobs", seg_job(rfx["seg_id"], rfx["rgb"], str(tmp_path / "o" / ".." / "x")))
    assert_error(status, body, 400, "invalid_output_path")
    status, body = rapi.post("/api/v1/jobs", seg_job(rfx["seg_id"], rfx["rgb"], "relative/dir"))
    assert_error(status, body, 400, "invalid_output_path")


def test_symlinks_in_output_dir_do_not_redirect_writes(rapi, rfx, tmp_path):
    """A final name that is a symlink to a file outside output_dir is neither followed nor overwritten."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.tif"
    victim.write_bytes(b"precious")
    out = tmp_path / "o"
    out.mkdir()
    (out / "lc.tif").symlink_to(victim)  # existing target: the job picks another name
    (out / "lc.qml").symlink_to(outside / "created.qml")  # dangling: must not create a file outside
    status, job = rapi.post("/api/v1/jobs", seg_job(rfx["seg_id"], rfx["rgb"], out, output_name="lc",
                                                    vectorize=False))
    assert status == 202, job
    job = rapi.wait(job["id"])
    assert job["state"] == "succeeded", job
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.tif"]
    for o in job["result"]["outputs"]:
        assert Path(o["path"]).parent == out and not Path(o["path"]).is_symlink()


def test_symlinked_output_dir_component(rapi, rfx, tmp_path):
    """An output_dir reached through a symlink is the user's own choice: outputs land in its target, and only
    there (the real folder the link points to)."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    status, job = rapi.post("/api/v1/jobs", seg_job(rfx["seg_id"], rfx["rgb"], tmp_path / "link" / "sub",
                                                    output_name="lc", vectorize=False))
    assert status == 202, job
    job = rapi.wait(job["id"])
    assert job["state"] == "succeeded", job
    assert sorted(p.name for p in (real / "sub").iterdir()) == ["lc.qml", "lc.tif"]


def test_inputs_are_only_read(rapi, rfx, tmp_path):
    raster = tmp_path / "in.tif"
    shutil.copy(rfx["rgb"], raster)
    before = (raster.stat().st_mtime_ns, raster.read_bytes())
    status, job = rapi.post("/api/v1/jobs", seg_job(rfx["seg_id"], raster, tmp_path / "o", vectorize=False))
    assert rapi.wait(job["id"])["state"] == "succeeded"
    assert (raster.stat().st_mtime_ns, raster.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "o"]  # no .aux.xml or other side files


@pytest.mark.skipif(shutil.which("bandit", path=str(Path(sys.executable).parent)) is None,
                    reason="bandit is not installed in this environment")
def test_bandit_clean_on_backend_plugin_and_training():
    """bandit on all shipped code (backend, QGIS plugin, training package; not the tests): no finding of any
    severity, and every suppression names the check it silences (``# nosec B603``, not a bare ``# nosec``)."""
    import json

    bandit = str(Path(sys.executable).parent / "bandit")
    r = subprocess.run([bandit, "-q", "-r", "backend", "qgis_rsfm", "training", "-x", "tests", "-f", "json"],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ})
    report = json.loads(r.stdout)
    issues = [f"{i['filename']}:{i['line_number']} {i['test_id']} ({i['issue_severity']}): {i['issue_text']}"
              for i in report["results"]]
    assert not issues, "\n".join(issues)
    assert not report["errors"], report["errors"]
    assert r.returncode == 0, r.stderr
    scanned = {Path(f).parts[0] for f in report["metrics"] if f != "_totals"}
    assert scanned == {"backend", "qgis_rsfm", "training"}, scanned
    bare = []
    for top in ("backend", "qgis_rsfm", "training"):
        for py in (REPO / top).rglob("*.py"):
            for n, line in enumerate(py.read_text(encoding="utf-8").splitlines(), 1):
                if "# nosec" in line and not line.split("# nosec", 1)[1].strip()[:1] == "B":
                    bare.append(f"{py.relative_to(REPO)}:{n}")
    assert not bare, f"bare '# nosec' (name the check, e.g. '# nosec B603'): {bare}"
