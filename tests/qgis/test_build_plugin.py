"""The plugin zip has one root folder qgis_rsfm/ with metadata, icons and code, and nothing else."""

from __future__ import annotations

import configparser
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import build_plugin  # noqa: E402


def test_zip_layout(tmp_path):
    path = build_plugin.build(tmp_path)
    assert path.name == "qgis_rsfm-0.1.0.zip"
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert {n.split("/")[0] for n in names} == {"qgis_rsfm"}
        for must in ("qgis_rsfm/__init__.py", "qgis_rsfm/metadata.txt", "qgis_rsfm/plugin.py",
                     "qgis_rsfm/client.py", "qgis_rsfm/processing/provider.py", "qgis_rsfm/icons/rsfm.svg"):
            assert must in names, must
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/tests/" in n]
        cp = configparser.ConfigParser(interpolation=None)
        cp.read_string(z.read("qgis_rsfm/metadata.txt").decode())
        icon = cp["general"]["icon"]
        assert f"qgis_rsfm/{icon}" in names
        assert "def classFactory" in z.read("qgis_rsfm/__init__.py").decode()
        # the compiled German translation ships (byte-identical), its .ts source does not
        assert "qgis_rsfm/i18n/rsfm_de.qm" in names
        assert z.read("qgis_rsfm/i18n/rsfm_de.qm") == (REPO / "qgis_rsfm" / "i18n" / "rsfm_de.qm").read_bytes()
        assert not [n for n in names if n.endswith(".ts")]


def test_diverging_metadata_copy_is_refused(tmp_path):
    import shutil

    import pytest

    fake = tmp_path / "repo"
    shutil.copytree(REPO / "qgis_rsfm", fake / "qgis_rsfm", ignore=shutil.ignore_patterns("__pycache__"))
    (fake / "metadata.txt").write_text((REPO / "metadata.txt").read_text() + "\n# changed\n")
    with pytest.raises(SystemExit, match="identical copy"):
        build_plugin.files_to_pack(fake)


def test_uncompiled_translation_is_refused(tmp_path):
    import shutil

    import pytest

    fake = tmp_path / "repo"
    shutil.copytree(REPO / "qgis_rsfm", fake / "qgis_rsfm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "metadata.txt", fake / "metadata.txt")
    assert build_plugin.files_to_pack(fake)  # as committed: every .ts has its .qm
    (fake / "qgis_rsfm" / "i18n" / "rsfm_de.qm").unlink()
    with pytest.raises(SystemExit, match="rsfm_de.ts not compiled"):
        build_plugin.files_to_pack(fake)
