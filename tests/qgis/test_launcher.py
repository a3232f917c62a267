"""Launcher and client against a real backend: token never on argv, 0600 state file shared between
launchers (two QGIS windows), typed errors, and a dead backend is restarted."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

from conftest import backend_python  # noqa: E402


def test_state_file_is_private_and_token_not_on_argv(backend):
    from qgis_rsfm.launcher import STATE_FILE_NAME

    st = Path(backend.state_dir) / STATE_FILE_NAME
    assert stat.S_IMODE(st.stat().st_mode) == 0o600
    cmdline = Path(f"/proc/{backend.state.pid}/cmdline").read_bytes().decode()
    assert backend.state.token not in cmdline
    assert "backend" in cmdline and "serve" in cmdline


def test_second_launcher_reuses_the_running_backend(backend):
    from qgis_rsfm.launcher import BackendLauncher

    other = BackendLauncher(backend.state_dir)  # e.g. a second QGIS window or qgis_process
    client = other.ensure_running(None)
    assert client.base_url == backend.state.url and not other.owned
    other.stop()  # not the owner: must leave the backend running
    assert backend.client().is_alive()


def test_typed_errors(backend, client, rasters):
    from qgis_rsfm.client import (
        AuthError,
        BackendUnreachableError,
        IncompatibleRasterError,
        NotFoundError,
        RsfmClient,
    )

    with pytest.raises(AuthError) as exc:
        RsfmClient(backend.state.url, "x" * 32).health()
    assert exc.value.http_status == 401
    with pytest.raises(NotFoundError):
        client.model("no-such-model")
    with pytest.raises(NotFoundError):
        client.job("0" * 32)
    with pytest.raises(BackendUnreachableError) as exc:
        RsfmClient("http://127.0.0.1:9", "t").health(timeout_s=2)
    assert "does not answer" in exc.value.message
    check = client.check("rsfm-fixture-semantic-segmentation", rasters["one_band"])
    assert not check.ok and any("band" in p for p in check.problems)
    bad = {"task": "semantic_segmentation", "model": "rsfm-fixture-semantic-segmentation",
           "inputs": {"raster": rasters["no_crs"]}, "output_dir": "/tmp/rsfm-never"}
    try:  # refused at submission (422) or as a failed job; either way in plain words
        job = client.wait(client.submit(bad).id, timeout_s=60)
        assert job.state == "failed"
        message = job.error_message
    except IncompatibleRasterError as exc:
        message = exc.message
    assert "coordinate reference system" in message

def test_dead_backend_is_restarted(tmp_path, fixtures_index):
    from qgis_rsfm.launcher import BackendConfig, BackendLauncher

    models_dir = str(Path(next(iter(fixtures_index["models"].values()))).parent)
    config = BackendConfig(python=backend_python(), device="cpu", model_dirs=[models_dir],
                           extra_env={"RSFM_THREADS": "1"}, startup_timeout_s=120)
    lau = BackendLauncher(tmp_path / "state")
    try:
        first = lau.start(config)
        os.kill(first.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while lau.client().is_alive(timeout_s=1) and time.monotonic() < deadline:
            time.sleep(0.1)
        client = lau.ensure_running(config)
        assert lau.state.pid != first.pid and client.is_alive()
        assert lau.read_state().pid == lau.state.pid
    finally:
        lau.stop()
    assert lau.read_state() is None, "stop() removes the state file of a backend it owned"


def test_missing_python_is_explained(tmp_path):
    from qgis_rsfm.launcher import BackendConfig, BackendLauncher, LauncherError

    with pytest.raises(LauncherError) as exc:
        BackendLauncher(tmp_path).start(BackendConfig(python=str(tmp_path / "nope" / "python")))
    assert "does not exist" in str(exc.value) and "Create backend venv" in str(exc.value)
