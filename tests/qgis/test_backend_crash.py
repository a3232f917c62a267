"""A backend killed in the middle of a job: the dock's task ends as Failed with a plain message (no hang,
no traceback), and the next Run restarts the backend through the launcher and succeeds.

Uses its own backend (own state folder) so killing it cannot disturb the session backend other tests use.
"""

from __future__ import annotations

import os
import signal

import pytest

pytest.importorskip("qgis.core")

from conftest import backend_python, wait_for  # noqa: E402


def _big_raster(path: str) -> str:
    """1024 x 1024 RGB, ~400 tiles of the fixture model: still running when the backend is killed."""
    import numpy as np
    from osgeo import gdal, osr

    ds = gdal.GetDriverByName("GTiff").Create(path, 1024, 1024, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((500000.0, 1.0, 0.0, 2800000.0, 0.0, -1.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32640)
    ds.SetProjection(srs.ExportToWkt())
    for b in range(3):
        ds.GetRasterBand(b + 1).WriteArray(np.random.default_rng(b).integers(0, 255, (1024, 1024), dtype=np.uint8))
    ds = None
    return path


def test_killed_backend_fails_the_task_in_plain_words_and_is_restarted_on_the_next_run(
        qgis_app, iface, project, fixtures_index, rasters, tmp_path):
    from qgis.core import QgsRasterLayer

    from qgis_rsfm.gui.task_page import TASK_DEFS, TaskPage
    from qgis_rsfm.launcher import BackendConfig, BackendLauncher

    models_dir = str(os.path.dirname(fixtures_index["models"]["semantic_segmentation"]))
    config = BackendConfig(python=backend_python(), device="cpu", model_dirs=[models_dir],
                           extra_env={"RSFM_THREADS": "1"}, startup_timeout_s=120)
    lau = BackendLauncher(tmp_path / "state")
    # What service.get_client() does for the dock: reuse a live backend, else (re)start one.
    page = TaskPage(next(t for t in TASK_DEFS if t.task == "semantic_segmentation"), iface,
                    lambda: lau.ensure_running(config), lambda: tmp_path / "out")
    try:
        page.set_models(lau.ensure_running(config).models())
        first_pid = lau.state.pid
        big = QgsRasterLayer(_big_raster(str(tmp_path / "big.tif")), "big")
        project.addMapLayer(big)
        page.layer_box.setLayer(big)
        task = page.run_job()
        assert task is not None, page.status_label.text()
        assert wait_for(lambda: task.job_id is not None or page.task is None, 60)
        assert page.task is not None, f"the job ended before the kill: {page.status_label.text()}"
        os.kill(first_pid, signal.SIGKILL)
        assert wait_for(lambda: page.task is None, 60), "the task hangs after the backend died"
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
        assert lau.state is not None and lau.state.pid != first_pid
        assert page.last_layers and page.last_layers[0].isValid()
    finally:
        lau.stop()
