"""Model browser + Hub in real QGIS: a loopback Hub (tests/hubserver, seeded by hub_seed.py in the backend
venv) and a second real backend whose Hub endpoint is that server (as the plugin's "Hub endpoint" setting
does through HF_ENDPOINT). The browser lists the Hub's RSFM models next to the installed ones, installs one
as a QgsTask with progress and Cancel, and the installed model reaches the dock's pickers."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

from conftest import REPO, backend_python, wait_for  # noqa: E402


@pytest.fixture(scope="module")
def hub(fixtures_index, tmp_path_factory):
    """The loopback Hub with the segmentation fixture pushed as rsfm/seg-hub and rsfm/seg-hub-slow."""
    pkg = fixtures_index["models"]["semantic_segmentation"]
    root = tmp_path_factory.mktemp("hubroot")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HOME=str(root / "hf_home"))
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen([backend_python(), str(Path(__file__).with_name("hub_seed.py")), str(root / "hub"), pkg],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=str(REPO))
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail(f"loopback Hub did not start:\n{proc.stderr.read()[-3000:]}")
    ready = json.loads(line)
    yield ready
    proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def hub_backend(qgis_app, hub, tmp_path_factory):
    """A second real backend (own state dir, own empty HF cache, no model folders) using the loopback Hub."""
    from qgis_rsfm.launcher import BackendConfig, BackendLauncher

    state = tmp_path_factory.mktemp("hub_backend_state")
    lau = BackendLauncher(state)
    lau.start(BackendConfig(python=backend_python(), device="cpu", model_dirs=[], hf_endpoint=hub["url"],
                            extra_env={"RSFM_THREADS": "1", "HF_HOME": str(state / "hf_home"),
                                       "HF_HUB_DISABLE_XET": "1"},
                            startup_timeout_s=120))
    yield lau
    lau.stop()


@pytest.fixture
def hub_dock(qgis_app, iface, hub_backend, project):
    from qgis_rsfm.gui.dock import RsfmDock

    d = RsfmDock(iface, iface.mainWindow(), auto_start=False)
    d.client = hub_backend.client  # this dock talks to the Hub-enabled backend, not the session one
    task = d.start_backend()
    assert wait_for(lambda: task not in d._background, 60), "start_backend task did not finish"
    assert d.health is not None, d.health_label.text()
    yield d
    d.shutdown()
    d.deleteLater()


def _items(dlg) -> list[str]:
    return [dlg.list.item(i).text() for i in range(dlg.list.count())]


def _select(dlg, text: str) -> None:
    row = next(i for i in range(dlg.list.count()) if dlg.list.item(i).text() == text)
    dlg.list.setCurrentRow(row)


def test_browser_lists_hub_models_and_installs_one_into_the_pickers(hub_dock, hub, hub_backend):
    page = hub_dock.pages["semantic_segmentation"]
    assert not [m for m in page.models if m.id.startswith("hf://")], "no Hub model is installed at first"
    dlg = hub_dock.open_model_browser()
    assert dlg.hub_button.isVisible() and not dlg.install_button.isEnabled()
    task = dlg.search_hub()
    assert task is not None
    assert wait_for(lambda: dlg.hub_task is None, 60), "Hub listing did not finish"
    assert hub["url"] in dlg.hub_label.text() and "2 RSFM models, 2 not installed" in dlg.hub_label.text()
    assert sorted(t for t in _items(dlg) if t.startswith("☁")) == ["☁ rsfm/seg-hub", "☁ rsfm/seg-hub-slow"]
    dlg.task_combo.setCurrentIndex(dlg.task_combo.findData("object_detection"))
    assert not [t for t in _items(dlg) if t.startswith("☁")], "Hub entries are filtered by task like installed ones"
    dlg.task_combo.setCurrentIndex(dlg.task_combo.findData("semantic_segmentation"))
    _select(dlg, "☁ rsfm/seg-hub")
    card = dlg.card.toPlainText()
    assert "not installed yet" in card and "cc0-1.0" in card.lower() and "rsfm-semantic-segmentation" in card, card
    assert dlg.install_button.isEnabled()

    progress_seen: list[int] = []
    dlg.install_progress.valueChanged.connect(progress_seen.append)
    assert not dlg.install_progress.isVisible(), "no progress bar before anything is installed"
    install = dlg.install_current()
    assert install is not None and dlg.install_cancel.isEnabled() and not dlg.install_button.isEnabled()
    assert dlg.install_progress.isVisible()
    assert wait_for(lambda: dlg.install_task is None, 120), "install did not finish"
    assert type(dlg.last_install).__name__ == "Success", dlg.hub_label.text()
    pinned = f"hf://rsfm/seg-hub@{hub['repos']['rsfm/seg-hub']}"
    assert dlg.last_install.job.task == "hub_install"
    assert progress_seen and progress_seen[-1] == 100
    assert "Installed rsfm/seg-hub" in dlg.hub_label.text()
    # model_installed -> the dock reloads the models -> every picker and the open browser know it
    assert wait_for(lambda: any(m.id == pinned for m in page.models), 60), [m.id for m in page.models]
    assert pinned in [m.id for m in hub_backend.client().models()]
    assert page.model_box.findData(pinned) >= 0
    assert "☁ rsfm/seg-hub" not in _items(dlg) and "☁ rsfm/seg-hub-slow" in _items(dlg)
    installed = next(m for m in page.models if m.id == pinned)
    assert any(t.endswith(installed.name) and not t.startswith("☁") for t in _items(dlg)), \
        "the installed model is listed with the installed ones"
    dlg.close()


def test_install_can_be_cancelled_and_installs_nothing(hub_dock, hub, hub_backend):
    dlg = hub_dock.open_model_browser()
    dlg.search_hub()
    assert wait_for(lambda: dlg.hub_task is None, 60)
    _select(dlg, "☁ rsfm/seg-hub-slow")
    task = dlg.install_current()
    assert task is not None
    assert wait_for(lambda: task.job_id is not None or dlg.install_task is None, 60)
    # The backend reports download progress (files arrive every 1.5 s): the bar moves before Cancel.
    assert wait_for(lambda: 0 < dlg.install_progress.value() < 100 or dlg.install_task is None, 30)
    assert dlg.install_task is not None, "the slow install finished before it could be cancelled"
    dlg.cancel_install()
    assert wait_for(lambda: dlg.install_task is None, 60), "cancel did not finish the install task"
    assert type(dlg.last_install).__name__ == "Canceled", dlg.hub_label.text()
    assert "Cancelled; rsfm/seg-hub-slow was not installed" in dlg.hub_label.text()
    assert hub_backend.client().job(task.job_id).state == "cancelled"
    slow = f"hf://rsfm/seg-hub-slow@{hub['repos']['rsfm/seg-hub-slow']}"
    assert slow not in [m.id for m in hub_backend.client().models()]
    assert dlg.install_button.isEnabled() and not dlg.install_cancel.isEnabled()
    dlg.close()


def test_unreachable_hub_is_reported_in_plain_words(qgis_app, hub_backend):
    """A backend whose Hub endpoint answers nothing: the browser says so instead of hanging or crashing."""
    from qgis_rsfm.client import RsfmClient
    from qgis_rsfm.gui.model_browser import ModelBrowserDialog

    def dead():  # a backend URL where nothing listens stands in for "backend down" during the listing
        return RsfmClient("http://127.0.0.1:9", token="x", timeout_s=2)

    dlg = ModelBrowserDialog([], client_factory=dead)
    dlg.search_hub()
    assert wait_for(lambda: dlg.hub_task is None, 60)
    assert "could not list models" in dlg.hub_label.text() and "does not answer" in dlg.hub_label.text()
    assert dlg.hub_button.isEnabled()
    dlg.close()

