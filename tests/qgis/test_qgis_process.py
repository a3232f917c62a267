"""`qgis_process run rsfm:segment` from the shell, like a user install: the plugin zip built by
scripts/build_plugin.py is unpacked into a folder on QGIS_PLUGINPATH, enabled with `qgis_process plugins
enable`, and reuses the session's backend through the state file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

REPO = Path(__file__).resolve().parents[2]


def find_qgis_process() -> str | None:
    """The real qgis_process executable, as a user's install has it.

    Debian's /usr/bin/qgis_process is a shell wrapper around qgis_process.bin (and may add options that
    3.22 rejects), so the .bin next to it wins; QGIS_PROCESS overrides both.
    """
    if os.environ.get("QGIS_PROCESS"):
        return os.environ["QGIS_PROCESS"]
    for name in ("qgis_process.bin", "qgis_process"):
        p = shutil.which(name)
        if p:
            return p
    for p in ("/usr/bin/qgis_process.bin", "/usr/lib/qgis/qgis_process",
              "/Applications/QGIS.app/Contents/MacOS/bin/qgis_process"):
        if Path(p).is_file():
            return p
    return None


@pytest.fixture(scope="module")
def qp_env(tmp_path_factory, backend):
    exe = find_qgis_process()
    if exe is None:
        pytest.skip("qgis_process is not installed")
    root = tmp_path_factory.mktemp("qgis_process")
    plugins = root / "plugins"
    plugins.mkdir()
    sys.path.insert(0, str(REPO / "scripts"))
    import build_plugin

    with zipfile.ZipFile(build_plugin.build(root / "dist")) as z:
        z.extractall(plugins)
    assert (plugins / "qgis_rsfm" / "icons" / "rsfm.svg").is_file()
    env = dict(os.environ, HOME=str(root / "home"), QGIS_PLUGINPATH=str(plugins), QT_QPA_PLATFORM="offscreen")
    # RSFM_STATE_DIR (set by the session) points the plugin at the running backend.
    out = subprocess.run([exe, "plugins", "enable", "qgis_rsfm"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return exe, env


def test_list_shows_the_provider(qp_env):
    exe, env = qp_env
    out = subprocess.run([exe, "list"], env=env, capture_output=True, text=True, timeout=120)
    for alg in ("rsfm:segment", "rsfm:classify", "rsfm:detect", "rsfm:detect_rotated", "rsfm:instances",
                "rsfm:change", "rsfm:status"):
        assert alg in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


def test_run_segment_from_the_shell(qp_env, rasters, tmp_path):
    exe, env = qp_env
    out = subprocess.run([exe, "--json", "run", "rsfm:segment", "--", f"INPUT={rasters['rgb']}",
                          f"OUTPUT_FOLDER={tmp_path}"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout[out.stdout.index("{"):])
    path = result["results"]["OUTPUT"]
    assert Path(path).is_file() and path.startswith(str(tmp_path))
    from osgeo import gdal

    a, b = gdal.Open(rasters["rgb"]), gdal.Open(path)
    assert a.GetGeoTransform() == pytest.approx(b.GetGeoTransform())
    assert (a.RasterXSize, a.RasterYSize) == (b.RasterXSize, b.RasterYSize)


def test_bad_input_fails_with_a_plain_message(qp_env, rasters, tmp_path):
    exe, env = qp_env
    out = subprocess.run([exe, "run", "rsfm:segment", "--", f"INPUT={rasters['no_crs']}",
                          f"OUTPUT_FOLDER={tmp_path}"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "coordinate reference system" in out.stdout + out.stderr
