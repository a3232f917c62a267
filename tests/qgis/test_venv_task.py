""""Create backend venv" for real: python -m venv + pip install, as the QgsTask the settings dialog runs.
Offline: the requirement is a small wheel built here, so pip needs no index."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import zipfile

import pytest

pytest.importorskip("qgis.core")


def _wheel(tmp_path):
    """A minimal pure-Python wheel (module rsfm_probe) written by hand."""
    name, ver = "rsfm_probe", "0.0.1"
    files = {
        f"{name}.py": b"VALUE = 42\n",
        f"{name}-{ver}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n".encode(),
        f"{name}-{ver}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{name}-{ver}.dist-info/RECORD,,")
    files[f"{name}-{ver}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    whl = tmp_path / f"{name}-{ver}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return whl


@pytest.mark.slow
def test_create_venv_task_installs_the_requirement(qgis_app, tmp_path):
    from qgis_rsfm.launcher import venv_python
    from qgis_rsfm.tasks.venv_task import CreateVenvTask

    venv = tmp_path / "venv"
    task = CreateVenvTask(str(venv), str(_wheel(tmp_path)))
    assert task.run(), task.message + "\n" + "\n".join(task.log[-20:])
    assert task.ok and "ready" in task.message
    py = venv_python(venv)
    out = subprocess.run([str(py), "-c", "import rsfm_probe; print(rsfm_probe.VALUE)"], capture_output=True, text=True)
    assert out.stdout.strip() == "42"
    assert task.progress() > 0


def test_bad_requirement_is_explained(qgis_app, tmp_path):
    from qgis_rsfm.tasks.venv_task import CreateVenvTask

    task = CreateVenvTask(str(tmp_path / "venv"), str(tmp_path / "missing.whl"), python=str(tmp_path / "nope"))
    assert not task.run()
    assert "could not run Python" in task.message or "failed" in task.message
