"""Helpers of the reliability tests: the backend tests' Api/assert_error, job bodies, backend subprocesses.

(A module with its own name: test files importing ``conftest`` would get whichever conftest pytest loaded last.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "fixtures"))

import importlib.util  # noqa: E402

import make_fixtures as mf  # noqa: E402, F401 - re-exported for the tests

# the Api helper and assert_error of the backend tests (loaded under another name: both files are "conftest")
_spec = importlib.util.spec_from_file_location("backend_tests_conftest", HERE.parent / "backend" / "conftest.py")
_bc = importlib.util.module_from_spec(_spec)
sys.modules["backend_tests_conftest"] = _bc
_spec.loader.exec_module(_bc)
Api, assert_error = _bc.Api, _bc.assert_error


REPO = HERE.parents[1]
SEG = "semantic_segmentation"


def seg_job(model: str, raster: Path, out_dir: Path, **options: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"task": SEG, "model": model, "inputs": {"raster": str(raster)},
                            "output_dir": str(out_dir)}
    if options:
        body["options"] = options
    return body


@dataclass
class Backend:
    """A real ``python -m backend serve`` subprocess on loopback."""

    proc: subprocess.Popen
    url: str
    token: str
    log_path: Path
    extra: dict = field(default_factory=dict)

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait(self, job_id: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, job = self.call("GET", f"/api/v1/jobs/{job_id}")
            assert status == 200, job
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish in {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_backend(tmp: Path, token: str, *, models: Path, extra_env: dict[str, str] | None = None,
                  preexec=None, log_name: str = "backend.log", log_level: str = "DEBUG",
                  wrap: list[str] | None = None) -> Backend:
    """Start the backend as a subprocess (stderr to a log file) and wait for its ready line.

    ``wrap`` is a command prefix that must ``exec`` the backend command given after it (e.g. ``unshare``), so
    that the backend keeps the subprocess's pid.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSFM_")}
    env.update(OMP_NUM_THREADS="1", RSFM_TOKEN=token, RSFM_MODELS_PATH=str(models), RSFM_THREADS="1",
               RSFM_DEVICE="cpu", PYTHONPATH=str(REPO))
    env.update(extra_env or {})
    log_path = tmp / log_name
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
    cmd = [sys.executable, "-m", "backend", "serve", "--port", "0", "--log-level", log_level]
    proc = subprocess.Popen([*(wrap or []), *cmd],
                            stdout=subprocess.PIPE, stderr=log, env=env, cwd=str(REPO), preexec_fn=preexec)
    log.close()
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise AssertionError(f"backend did not start: {log_path.read_text()[-2000:]}")
    ready = json.loads(line)
    assert ready["event"] == "ready", ready
    return Backend(proc, ready["url"], token, log_path)
