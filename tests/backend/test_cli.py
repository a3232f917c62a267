"""``python -m backend serve`` as a real subprocess: ready line, token handling, loopback only."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from backend.cli import read_or_create_token
from backend.settings import Settings


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "RSFM_TOKEN" and not k.startswith("RSFM_")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _start(args, env):
    return subprocess.Popen([sys.executable, "-m", "backend", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _get(url, token):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_with_token_file_created(tmp_path):
    token_file = tmp_path / "sub" / "token"
    proc = _start(["--token-file", str(token_file), "--models-dir", str(tmp_path / "none")], _env())
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready" and ready["api_version"] == 1 and ready["pid"] == proc.pid
        assert ready["url"].startswith("http://127.0.0.1:")
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32
        assert token not in " ".join(proc.args)
        status, body = _get(ready["url"] + "/api/v1/health", token)
        assert status == 200 and body["status"] == "ok"
        status, body = _get(ready["url"] + "/api/v1/health", None)
        assert status == 401 and body["error"]["code"] == "unauthorized"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert json.loads(out.strip().splitlines()[-1])["event"] == "stopped"


def test_serve_with_env_token(tmp_path):
    proc = _start([], _env(RSFM_TOKEN="t" * 40))
    try:
        ready = json.loads(proc.stdout.readline())
        assert _get(ready["url"] + "/api/v1/models", "t" * 40)[0] == 200
        assert _get(ready["url"] + "/api/v1/models", "u" * 40)[0] == 401
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.parametrize("args,env,message", [
    ([], {}, "no API token"),
    (["--host", "0.0.0.0"], {"RSFM_TOKEN": "t" * 40}, "loopback"),
    ([], {"RSFM_TOKEN": "short"}, "16 characters"),
])
def test_serve_refuses(args, env, message):
    proc = _start(args, _env(**env))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert message in err
    assert '"ready"' not in out


def test_token_file_permissions(tmp_path):
    f = tmp_path / "tok"
    f.write_text("x" * 40)
    f.chmod(0o644)
    with pytest.raises(SystemExit, match="chmod 600"):
        read_or_create_token(str(f), env={})
    f.chmod(0o600)
    assert read_or_create_token(str(f), env={}) == "x" * 40
    assert read_or_create_token(str(f), env={"RSFM_TOKEN": "y" * 20}) == "y" * 20


def test_settings_env_and_cli():
    s = Settings.resolve({"workers": 3, "models_dir": ["/c"]},
                         env={"RSFM_WORKERS": "2", "RSFM_THREADS": "5", "RSFM_MODELS_PATH": f"/a{os.pathsep}/b"})
    assert s.workers == 3 and s.threads == 5
    assert s.models_dir == ["/a", "/b", "/c"]
    with pytest.raises(ValueError, match="RSFM_PORT"):
        Settings.resolve({}, env={"RSFM_PORT": "eighty"})


def test_settings_command_lists_every_setting():
    out = subprocess.run([sys.executable, "-m", "backend", "settings"], capture_output=True, text=True,
                         check=True, env=_env()).stdout
    names = {s["name"] for s in json.loads(out)}
    from backend.settings import SETTINGS

    assert names == {s.name for s in SETTINGS}
    assert all(s.help for s in SETTINGS)


@pytest.mark.slow
def test_sigterm_during_a_job_leaves_no_files(tmp_path, fx):
    from make_fixtures import write_fixture_raster

    raster = write_fixture_raster(tmp_path / "big.tif", width=768, height=768)
    out = tmp_path / "out"
    token = "s" * 40
    proc = _start(["--models-dir", str(fx["models"])], _env(RSFM_TOKEN=token))
    try:
        url = json.loads(proc.stdout.readline())["url"]
        body = json.dumps({"task": "semantic_segmentation", "model": fx["seg_id"], "inputs": {"raster": str(raster)},
                           "output_dir": str(out), "options": {"batch_size": 1}}).encode()
        req = urllib.request.Request(url + "/api/v1/jobs", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            job = json.loads(r.read())
        import time

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status, job = _get(f"{url}/api/v1/jobs/{job['id']}", token)
            if job["state"] == "running" and job["progress"] > 0.02:
                break
            assert job["state"] in ("queued", "running"), job
            time.sleep(0.05)
        assert job["state"] == "running" and job["progress"] < 0.9, job
        assert any(out.iterdir())  # the temporary GeoTIFF exists while the job runs
        proc.terminate()
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert list(out.iterdir()) == []  # cancelled at the next tile; its temporary outputs were removed


def test_serve_help_lists_every_setting():
    from backend.settings import SETTINGS

    out = subprocess.run([sys.executable, "-m", "backend", "serve", "--help"], capture_output=True, text=True,
                         check=True, env=_env()).stdout
    for s in SETTINGS:
        assert "--" + s.name.replace("_", "-") in out
    assert "--token-file" in out and "--token " not in out  # the token itself is never a flag


def test_settings_are_validated():
    with pytest.raises(ValueError, match="runtime"):
        Settings.resolve({"runtime": "tensorflow"}, env={})
    with pytest.raises(ValueError, match="workers"):
        Settings.resolve({}, env={"RSFM_WORKERS": "0"})
