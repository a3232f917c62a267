"""Fixtures for the plugin tests in a real headless QGIS (run with QGIS's Python, not the venv):

    QT_QPA_PLATFORM=offscreen RSFM_BACKEND_PYTHON=/work/main/.venv/bin/python \
        /usr/bin/python3 -m pytest tests/qgis -q

One QgsApplication (with Processing) and one real backend (started through the plugin's launcher, serving
the shared fixture model packages) per session. With CI=true a missing QGIS is an error, not a skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROCESSING_PLUGINS = "/usr/share/qgis/python/plugins"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

try:
    import qgis.core  # noqa: F401
    HAVE_QGIS = True
except ImportError:
    HAVE_QGIS = False
    if CI:
        raise RuntimeError("CI=true but 'import qgis' fails: run these tests with QGIS's Python "
                           "(/usr/bin/python3 with python3-qgis installed)") from None

if HAVE_QGIS:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if PROCESSING_PLUGINS not in sys.path:
        sys.path.append(PROCESSING_PLUGINS)


def pytest_collection_modifyitems(config, items):
    if HAVE_QGIS:
        return
    skip = pytest.mark.skip(reason="QGIS is not importable in this Python; run with /usr/bin/python3")
    for item in items:
        if "tests/qgis" in str(item.fspath):
            item.add_marker(skip)


def backend_python() -> str:
    p = os.environ.get("RSFM_BACKEND_PYTHON") or str(REPO / ".venv" / "bin" / "python")
    if not Path(p).is_file():
        pytest.fail(f"backend Python {p} not found; set RSFM_BACKEND_PYTHON to the venv with torch")
    return p


@pytest.fixture(scope="session")
def qgis_app(tmp_path_factory):
    """The QgsApplication (GUI-enabled, offscreen) with Processing initialised and a throw-away profile."""
    from qgis.core import QgsApplication

    profile = tmp_path_factory.mktemp("qgis_profile")
    os.environ["RSFM_STATE_DIR"] = str(profile / "rsfm")
    app = QgsApplication([], True, str(profile))
    app.setPrefixPath("/usr", True)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    yield app
    # exitQgis() at interpreter exit crashes some 3.22 builds; the process ends right after anyway.


def _fixture_cache_key() -> str:
    h = hashlib.sha256()
    for p in [REPO / "tests" / "fixtures" / "make_fixtures.py", REPO / "training" / "package.py",
              *sorted((REPO / "training" / "models").rglob("*.py"))]:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def build_fixtures(out: Path) -> dict:
    """Run make_fixtures.py (all tasks at once; if another engineer's model in progress breaks that, task by
    task so the others still get built). Returns the merged JSON index."""
    script = str(REPO / "tests" / "fixtures" / "make_fixtures.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)

    def run(*extra):
        return subprocess.run([backend_python(), script, str(out), *extra], capture_output=True, text=True,
                              env=env, cwd=str(REPO), timeout=300)

    proc = run()
    if proc.returncode == 0:
        return json.loads(proc.stdout)
    merged: dict = {"models": {}, "skipped_models": {}, "rasters": {}}
    tasks = ["semantic_segmentation", "object_detection", "instance_segmentation", "rotated_detection",
             "scene_classification", "change_detection"]
    for task in tasks:
        p = run("--tasks", task)
        if p.returncode != 0:
            merged["skipped_models"][task] = "fixture build failed: " + p.stderr.strip().splitlines()[-1]
            continue
        idx = json.loads(p.stdout)
        merged["models"].update(idx["models"])
        merged["skipped_models"].update(idx["skipped_models"])
        merged["rasters"] = idx["rasters"]
    if "semantic_segmentation" not in merged["models"]:
        pytest.fail(f"cannot build the segmentation fixture:\n{proc.stderr[-3000:]}")
    return merged


@pytest.fixture(scope="session")
def fixtures_index() -> dict:
    """Fixture model packages + rasters built by tests/fixtures/make_fixtures.py in the backend's Python.

    Cached in the temp folder by a hash of the builder and the model code (building needs torch: ~10 s).
    """
    out = Path(tempfile.gettempdir()) / f"rsfm_qgis_fixtures_{_fixture_cache_key()}"
    index_file = out / "index.json"
    if not index_file.is_file():
        index_file.parent.mkdir(parents=True, exist_ok=True)
        index_file.write_text(json.dumps(build_fixtures(out)))
    return json.loads(index_file.read_text())


@pytest.fixture(scope="session")
def backend(qgis_app, fixtures_index, tmp_path_factory):
    """One real backend for the session, started by the plugin's launcher; the plugin finds it via the
    state file in RSFM_STATE_DIR (as a second QGIS window would)."""
    from qgis_rsfm.launcher import BackendConfig, BackendLauncher

    models_dir = str(Path(next(iter(fixtures_index["models"].values()))).parent)
    launcher = BackendLauncher(os.environ["RSFM_STATE_DIR"])
    launcher.start(BackendConfig(python=backend_python(), device="cpu", model_dirs=[models_dir],
                                 extra_env={"RSFM_THREADS": "1"}, startup_timeout_s=120))
    yield launcher
    launcher.stop()


@pytest.fixture(scope="session")
def client(backend):
    return backend.client()


@pytest.fixture
def rasters(fixtures_index) -> dict:
    return fixtures_index["rasters"]


@pytest.fixture
def project(qgis_app):
    from qgis.core import QgsProject

    p = QgsProject.instance()
    p.clear()
    yield p
    p.clear()


@pytest.fixture(scope="session")
def iface(qgis_app):
    from qgis_interface import QgisTestInterface

    return QgisTestInterface()


def write_noise_raster(path: str, size_px: int = 1024) -> str:
    """A 3-band uint8 GeoTIFF (EPSG:32640, 1 m) of seeded noise, big enough that a job is still running
    when a test cancels it (~400 tiles of 64 px)."""
    import numpy as np
    from osgeo import gdal, osr

    ds = gdal.GetDriverByName("GTiff").Create(path, size_px, size_px, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((500000.0, 1.0, 0.0, 2800000.0, 0.0, -1.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32640)
    ds.SetProjection(srs.ExportToWkt())
    rng = np.random.default_rng
    for b in range(3):
        ds.GetRasterBand(b + 1).WriteArray(rng(b).integers(0, 255, (size_px, size_px), dtype=np.uint8))
    ds = None
    return path


@pytest.fixture
def big_raster(tmp_path) -> str:
    """Path of a fresh :func:`write_noise_raster` GeoTIFF in the test's tmp folder (for the cancel tests:
    big enough that a job is still running when Cancel arrives)."""
    return write_noise_raster(str(tmp_path / "big.tif"))


@pytest.fixture
def add_raster(project):
    """``add_raster(path, name)``: open a file as a QgsRasterLayer, check it is valid, add it to the project."""
    from qgis.core import QgsRasterLayer

    def add(path: str, name: str):
        lyr = QgsRasterLayer(path, name)
        assert lyr.isValid(), f"QGIS cannot open {path}"
        project.addMapLayer(lyr)
        return lyr

    return add


def wait_for(predicate, timeout_s: float = 60.0) -> bool:
    """Spin the Qt event loop until ``predicate()`` is true (task-manager callbacks need the loop)."""
    import time

    from qgis.core import QgsApplication

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        QgsApplication.processEvents()
        if predicate():
            return True
        time.sleep(0.02)
    QgsApplication.processEvents()
    return bool(predicate())


@pytest.fixture
def dock(qgis_app, iface, backend, project):
    """The RSFM dock connected to the session backend (models loaded)."""
    from qgis_rsfm.gui.dock import RsfmDock

    d = RsfmDock(iface, iface.mainWindow(), auto_start=False)
    task = d.start_backend()
    assert wait_for(lambda: task not in d._background, 60), "start_backend task did not finish"
    assert d.health is not None, d.health_label.text()
    yield d
    d.shutdown()
    d.deleteLater()


@pytest.fixture(scope="session", autouse=True)
def _stop_backends_started_by_the_plugin():
    """A test that makes the plugin start its own backend must not leave it running."""
    yield
    if HAVE_QGIS:
        from qgis_rsfm import service

        service.shutdown()
