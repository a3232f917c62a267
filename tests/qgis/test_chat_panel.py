"""The chat panel in real QGIS against the real backend (template answers: no LM load in this test).

Run: QT_QPA_PLATFORM=offscreen /usr/bin/python3 -m pytest tests/qgis/test_chat_panel.py -q
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.qgis.conftest import REPO, backend_python, wait_for


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory) -> dict:
    """The chat test fixture (tests/chat/chat_fixtures.py), written by the backend's Python (rasterio)."""
    out = tmp_path_factory.mktemp("chatfx")
    code = ("import json, sys, pathlib; sys.path.insert(0, 'tests/chat'); from chat_fixtures import make_fixture; "
            f"print(json.dumps(make_fixture(pathlib.Path({str(out)!r}))))")
    proc = subprocess.run([backend_python(), "-c", code], capture_output=True, text=True, cwd=str(REPO), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def panel(qgis_app, project, iface, client, chat_files):
    from qgis.core import QgsRasterLayer, QgsVectorLayer

    from qgis_rsfm.chat_panel import ChatPanel

    raster = QgsRasterLayer(chat_files["raster"], "scene")
    lc = QgsRasterLayer(chat_files["landcover"], "land cover")
    det = QgsVectorLayer(chat_files["detections"] + "|layername=detections", "detections", "ogr")
    assert raster.isValid() and lc.isValid() and det.isValid()
    project.addMapLayers([raster, lc, det])
    p = ChatPanel(lambda: client, iface)
    p.raster_combo.setLayer(raster)
    p.landcover_combo.setLayer(lc)
    p.objects_combo.setLayer(det)
    iface.mapCanvas().setDestinationCrs(raster.crs())
    iface.mapCanvas().setExtent(raster.extent())
    yield p
    p.deleteLater()


def ask(p, q):
    n = len(p._turns)
    p.ask(q)
    assert wait_for(lambda: len(p._turns) > n or "color:#b00" in p.status.styleSheet(), 90), p.status.text()
    assert len(p._turns) > n, p.status.text()
    return p._turns[-1]["answer"]


def test_request_from_widgets(panel, iface, chat_files):
    body = panel.build_request("How many ships?")
    assert body["raster"] == chat_files["raster"]
    assert body["outputs"] == [{"path": chat_files["landcover"], "task": "semantic_segmentation"},
                               {"path": chat_files["detections"], "task": "object_detection", "layer": "detections"}]
    assert body["backend"] == "template" and "bbox" not in body
    panel.extent_check.setChecked(True)
    c = iface.mapCanvas()
    from qgis.core import QgsRectangle

    c.setExtent(QgsRectangle(500000, 2799800, 500200, 2800000))  # west half
    bbox = panel.build_request("x")["bbox"]
    assert bbox[0] == pytest.approx(500000, abs=1) and bbox[2] <= 500400
    panel.backend_combo.setCurrentIndex(2)
    assert panel.build_request("x")["backend"]["base_url"] == "http://127.0.0.1:8080/v1"


def test_ask_draw_zoom_save(panel, iface, project, tmp_path):
    from qgis.core import QgsApplication

    from qgis_rsfm.chat_panel import SCRATCH_LAYER_NAME

    streamed: list[str] = []
    panel.answered.connect(lambda a: streamed.append(panel._partial))
    a = ask(panel, "How many ships are there?")
    assert "3 ship" in a["text"] and a["verification"]["ok"]
    assert streamed and streamed[0].strip() == a["text"]  # the text arrived through the polled stream
    html = panel.transcript.toHtml()
    assert 'href="rsfm:F' in html and "How many ships" in html
    layer = project.mapLayersByName(SCRATCH_LAYER_NAME)[0]
    assert layer.featureCount() == 3 and layer.crs().authid() == "EPSG:32640"
    assert sorted(f["object_id"] for f in layer.getFeatures()) == ["O1", "O2", "O4"]
    # clicking a citation zooms the canvas to the object (O1: x 500020-500040, y 2799940-2799980)
    assert panel.zoom_to("O1")
    ext = iface.mapCanvas().extent()
    assert ext.contains(500030, 2799960) and ext.width() < 200
    assert not panel.zoom_to("O99")
    # follow-up question uses the history
    b = ask(panel, "And where are they?")
    assert "O1" in b["text"]
    out = tmp_path / "chat.md"
    panel.save_conversation(str(out))
    md = out.read_text()
    assert "**Q:** How many ships are there?" in md and "3 ship" in md
    assert json.loads(Path(str(out) + ".json").read_text())[0]["question"] == "How many ships are there?"
    panel.copy_conversation()
    assert "How many ships" in QgsApplication.clipboard().text()


def test_absent_and_unknown(panel):
    assert ask(panel, "Is there an airplane?")["text"].startswith("No airplane")
    assert "cannot tell" in ask(panel, "How many helicopters are there?")["text"]


def test_errors_are_shown(panel, project):
    panel.raster_combo.setLayer(None)
    panel.ask("How many ships?")
    assert "select a raster layer" in panel.status.text()
    # a backend error (bad outputs path) comes back as a readable message
    from qgis.core import QgsRasterLayer

    bogus = QgsRasterLayer(str(Path(panel.landcover_combo.currentLayer().source()).with_name("raster.tif")), "r2")
    project.addMapLayer(bogus)
    panel.raster_combo.setLayer(bogus)
    panel.models_edit.setText("semantic_segmentation")
    panel.ask("How many ships?")
    assert "task=model-id" in panel.status.text()
