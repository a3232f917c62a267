"""A backend killed in the middle of a job.

* Once: the job task restarts the backend through the launcher, resumes the job from its block journal
  (``POST /jobs/{id}/resume``) and ends as Success; the result equals a clean run of the same job pixel for pixel.
* Twice (a crash the task cannot survive): the task ends as Failed with a plain message (no hang, no
  traceback), and the next Run restarts the backend through the launcher and succeeds.

Each test uses its own backend (own state folder) so killing it cannot disturb the session backend.
"""

from __future__ import annotations

import os
import signal

import pytest

pytest.importorskip("qgis.core")

from conftest import backend_python, wait_for, write_noise_raster  # noqa: E402


def _setup(iface, fixtures_index, tmp_path, extra_env: dict[str, str]):
    from qgis_rsfm.gui.task_page import TASK_DEFS, TaskPage
    from qgis_rsfm.launcher import BackendConfig, BackendLauncher

    models_dir = str(os.path.dirname(fixtures_index["models"]["semantic_segmentation"]))
    config = BackendConfig(python=backend_python(), device="cpu", model_dirs=[models_dir],
                           extra_env={"RSFM_THREADS": "1", **extra_env}, startup_timeout_s=120)
    lau = BackendLauncher(tmp_path / "state")
    # What service.get_client() does for the dock: reuse a live backend, else (re)start one.
    page = TaskPage(next(t for t in TASK_DEFS if t.task == "semantic_segmentation"), iface,
                    lambda: lau.ensure_running(config), lambda: tmp_path / "out")
    return lau, config, page


def _dispose(page) -> None:
    """Delete the page's widgets now, so they do not react to the next test's project changes."""
    from qgis.PyQt.QtCore import QCoreApplication, QEvent

    page.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)


def _tif(outcome) -> str:
    return next(o.path for o in outcome.job.outputs if o.path.endswith(".tif"))


def test_backend_killed_once_is_restarted_and_the_job_resumes_to_the_clean_result(
        qgis_app, iface, project, fixtures_index, tmp_path):
    import numpy as np
    from osgeo import gdal
    from qgis.core import QgsRasterLayer

    # Small blocks: the 512 x 512 raster is 16 journalled blocks, so a kill lands between blocks.
    lau, config, page = _setup(iface, fixtures_index, tmp_path, {"RSFM_BLOCK_SIZE_PX": "128"})
    try:
        page.set_models(lau.ensure_running(config).models())
        first_pid = lau.state.pid
        big = QgsRasterLayer(write_noise_raster(str(tmp_path / "big.tif"), 512), "big")
        project.addMapLayer(big)
        page.layer_box.setLayer(big)
        task = page.run_job()
        assert task is not None, page.status_label.text()
        statuses: list[str] = []
        task.status_changed.connect(statuses.append)
        # Some blocks done (journalled), not all: kill the backend there.
        assert wait_for(lambda: task.progress() >= 30 or page.task is None, 150)
        assert page.task is not None, f"the job ended before the kill: {page.status_label.text()}"
        os.kill(first_pid, signal.SIGKILL)
        assert wait_for(lambda: page.task is None, 240), "the task hangs after the backend died"
        outcome = page.last_outcome
        assert type(outcome).__name__ == "Success", (outcome, page.status_label.text())
        assert task.restarts == 1 and lau.state is not None and lau.state.pid != first_pid
        resumed = [w for w in outcome.job.warnings if w.startswith("resumed: ")]
        assert resumed and not resumed[0].startswith("resumed: 0 "), outcome.job.warnings
        assert any(s.startswith("backend restarted, resuming from block ") for s in statuses), statuses
        assert page.last_layers and all(lyr.isValid() for lyr in page.last_layers)
        resumed_px = gdal.Open(_tif(outcome)).ReadAsArray()

        # The same job on the live backend, uninterrupted: the same pixels.
        task = page.run_job()
        assert task is not None, page.status_label.text()
        assert wait_for(lambda: page.task is None, 240), "the clean run did not finish"
        clean = page.last_outcome
        assert type(clean).__name__ == "Success" and task.restarts == 0, page.status_label.text()
        clean_px = gdal.Open(_tif(clean)).ReadAsArray()
        assert resumed_px.shape == clean_px.shape == (512, 512)
        assert np.array_equal(resumed_px, clean_px)
    finally:
        lau.stop()
        _dispose(page)


def test_backend_killed_twice_fails_the_task_in_plain_words_and_is_restarted_on_the_next_run(
        qgis_app, iface, project, fixtures_index, rasters, tmp_path):
    from qgis.core import QgsRasterLayer

    lau, config, page = _setup(iface, fixtures_index, tmp_path, {})
    try:
        page.set_models(lau.ensure_running(config).models())
        first_pid = lau.state.pid
        big = QgsRasterLayer(write_noise_raster(str(tmp_path / "big.tif")), "big")
        project.addMapLayer(big)
        page.layer_box.setLayer(big)
        task = page.run_job()
        assert task is not None, page.status_label.text()
        assert wait_for(lambda: task.job_id is not None or page.task is None, 60)
        assert page.task is not None, f"the job ended before the kill: {page.status_label.text()}"
        os.kill(first_pid, signal.SIGKILL)
        # The first crash is survived: a new backend resumes the job ...
        assert wait_for(lambda: task.status_message == "backend restarted, resuming the job"
                        or task.status_message.startswith("backend restarted, resuming from")
                        or page.task is None, 180)
        assert page.task is not None, f"the job ended before the second kill: {page.status_label.text()}"
        second_pid = lau.state.pid
        assert second_pid != first_pid
        # ... the second is not.
        os.kill(second_pid, signal.SIGKILL)
        assert wait_for(lambda: page.task is None, 60), "the task hangs after the backend died again"
        outcome = page.last_outcome
        assert type(outcome).__name__ == "Failed" and outcome.code == "backend_unreachable", outcome
        status = page.status_label.text()
        assert "backend stopped while the job was running" in status and "Run again" in status, status
        assert "Traceback" not in status and page.last_layers == [] and page.run_button.isEnabled()

        # The next action restarts the backend (a new process) and the job goes through.
        small = QgsRasterLayer(rasters["rgb"], "small")
        project.addMapLayer(small)
        page.layer_box.setLayer(small)
        task = page.run_job()
        assert task is not None, page.status_label.text()
        assert wait_for(lambda: page.task is None, 150), "the run after the restart did not finish"
        assert type(page.last_outcome).__name__ == "Success", page.status_label.text()
        assert lau.state is not None and lau.state.pid not in (first_pid, second_pid)
        assert page.last_layers and page.last_layers[0].isValid()
    finally:
        lau.stop()
        _dispose(page)


def test_cancel_while_the_task_restarts_the_backend_cancels_the_job(
        qgis_app, iface, project, fixtures_index, tmp_path):
    from qgis.core import QgsRasterLayer

    lau, config, page = _setup(iface, fixtures_index, tmp_path, {"RSFM_BLOCK_SIZE_PX": "128"})
    try:
        page.set_models(lau.ensure_running(config).models())
        first_pid = lau.state.pid
        big = QgsRasterLayer(write_noise_raster(str(tmp_path / "big.tif")), "big")
        project.addMapLayer(big)
        page.layer_box.setLayer(big)
        task = page.run_job()
        assert task is not None, page.status_label.text()
        assert wait_for(lambda: task.job_id is not None or page.task is None, 60)
        assert page.task is not None, f"the job ended before the kill: {page.status_label.text()}"
        os.kill(first_pid, signal.SIGKILL)
        assert wait_for(lambda: task.restarts == 1 or page.task is None, 60), "the crash was not noticed"
        page.cancel_job()  # while the backend restarts (or just after the resume): either way the job stops
        assert wait_for(lambda: page.task is None, 180), "the task hangs after Cancel"
        assert type(page.last_outcome).__name__ == "Canceled", (page.last_outcome, page.status_label.text())
        assert page.last_layers == [] and page.run_button.isEnabled()
        # Nothing is left running in the restarted backend.
        if lau.state is not None and lau.state.pid != first_pid:
            jobs = lau.client().jobs()
            assert all(j.finished for j in jobs), [(j.id, j.state) for j in jobs]
    finally:
        lau.stop()
        _dispose(page)


def test_a_backend_dying_mid_answer_reads_as_unreachable(qgis_app):
    """A server that closes the socket halfway through its answer (what a SIGKILL does) gives
    BackendUnreachableError, the error the job task resumes on, not an internal IncompleteRead."""
    import http.server
    import threading

    from qgis_rsfm.client import BackendUnreachableError, RsfmClient

    class Truncating(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b'{"id": "')
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Truncating)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        client = RsfmClient(f"http://127.0.0.1:{srv.server_address[1]}", "t", timeout_s=10)
        with pytest.raises(BackendUnreachableError) as err:
            client.job("0" * 32)
        assert err.value.code == "backend_unreachable"
    finally:
        srv.shutdown()
        srv.server_close()
