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


# -- change detection against a second raster ("Compare with") ------------------------------------------------
@pytest.fixture
def change_model(fixtures_index) -> str:
    """The fixture change-detection model id (the backend picks it: the only installed change model)."""
    if "change_detection" not in fixtures_index["models"]:
        pytest.skip(f"no change fixture model: {fixtures_index['skipped_models'].get('change_detection')}")
    return "rsfm-fixture-change-detection"


def _changed_copy(src: str, dst: str) -> str:
    """A copy of ``src`` (same CRS, transform and bands) with a red block painted in the north-east: the
    "later" image of the same place."""
    from osgeo import gdal

    gdal.UseExceptions()
    ds = gdal.GetDriverByName("GTiff").CreateCopy(dst, gdal.Open(src))
    for b in range(1, ds.RasterCount + 1):
        band = ds.GetRasterBand(b)
        arr = band.ReadAsArray()
        arr[20:60, 120:180] = 255 if b == 1 else 0
        band.WriteArray(arr)
    ds = None
    return dst


@pytest.fixture
def later_layer(project, chat_files, tmp_path):
    from qgis.core import QgsRasterLayer

    lyr = QgsRasterLayer(_changed_copy(chat_files["raster"], str(tmp_path / "later.tif")), "later scene")
    assert lyr.isValid()
    project.addMapLayer(lyr)
    return lyr


def test_request_with_compare_layer(panel, project, chat_files, later_layer):
    from qgis.core import QgsRasterLayer

    assert panel.compare_combo.currentLayer() is None  # empty by default: no change detection asked for
    body = panel.build_request("What changed?")
    assert "compare_with" not in body and "compare_order" not in body
    panel.compare_combo.setLayer(later_layer)
    body = panel.build_request("What changed?")
    assert body["compare_with"] == later_layer.source() and body["compare_order"] == "later"
    assert body["raster"] == chat_files["raster"]
    panel.compare_order_combo.setCurrentIndex(1)
    assert panel.build_request("What changed?")["compare_order"] == "earlier"
    # the selected raster itself, or another layer of the same file, is refused in plain words (in the status)
    panel.compare_combo.setLayer(panel.raster_combo.currentLayer())
    panel.ask("What changed?")
    assert "choose a different image to compare with" in panel.status.text() and "'scene'" in panel.status.text()
    assert not panel.busy() and panel._turns == []
    again = QgsRasterLayer(chat_files["raster"], "scene again")
    project.addMapLayer(again)
    panel.compare_combo.setLayer(again)
    with pytest.raises(ValueError, match="choose a different image to compare with"):
        panel.build_request("What changed?")
    # a raster that is not a GDAL file (here a computed virtual raster) cannot be sent to the backend
    uri = ("?crs=EPSG:32640&extent=500000,2799800,500400,2800000&width=200&height=100&formula=%22r@1%22"
           f"&r:uri={chat_files['raster']}&r:provider=gdal")
    virt = QgsRasterLayer(uri, "computed", "virtualraster")
    assert virt.isValid() and virt.providerType() != "gdal"
    project.addMapLayer(virt)
    panel.compare_combo.setLayer(virt)
    panel.ask("What changed?")
    assert "'computed'" in panel.status.text() and "GeoTIFF" in panel.status.text()
    assert not panel.busy() and panel._turns == []


def test_change_ids_link_and_scoreless_regions_are_drawn(panel, project):
    from qgis.core import NULL

    from qgis_rsfm.chat_panel import SCRATCH_LAYER_NAME

    out = panel._linkify("C3 is new; O1 stayed [F2].")
    assert '<a href="rsfm:C3">C3</a>' in out and '<a href="rsfm:O1">O1</a>' in out and 'href="rsfm:F2"' in out
    ring = [[500240.0, 2799900.0], [500300.0, 2799900.0], [500300.0, 2799960.0], [500240.0, 2799960.0],
            [500240.0, 2799900.0]]
    # a change region as the backend returns it: no score
    ans = {"text": "1 change region: C1 [F7].", "crs": "EPSG:32640", "cited": ["F7"], "mode": "template",
           "objects": [{"id": "C1", "fact": "F7", "class": "change", "score": None,
                        "pixel_box_xyxy": [120, 20, 150, 50], "centre": [500270.0, 2799930.0],
                        "geometry": {"type": "Polygon", "coordinates": [ring]}}]}
    panel._turns.append({"question": "What changed?", "answer": ans})
    panel._add_citations(ans)
    layer = project.mapLayersByName(SCRATCH_LAYER_NAME)[0]
    feats = list(layer.getFeatures())
    assert len(feats) == 1
    f = feats[0]
    assert f["object_id"] == "C1" and f["fact"] == "F7" and f["class_name"] == "change"
    score = f["score"]
    assert score is None or score == NULL, score
    assert panel.zoom_to("C1") and panel.zoom_to("F7")
    assert panel.iface.mapCanvas().extent().contains(500270, 2799930)


def test_change_question_end_to_end(panel, later_layer, change_model):
    """The real backend runs the fixture change model on the selected raster against the compare layer and
    answers the change question from the change facts."""
    panel.compare_combo.setLayer(later_layer)
    a = ask(panel, "What changed?")
    assert a["intent"] == "change", a
    assert a["verification"]["ok"], a["verification"]
    assert "chang" in a["text"].lower() and a["cited"], a["text"]
    # the seeded fixture model finds no change on this pair (drawing cited regions: the test above)
    assert a["text"].startswith("Nothing changed in this area: 0% of it changed"), a["text"]


# -- selected polygons ----------------------------------------------------------------------------------------
@pytest.fixture
def west_polygon(project):
    """A polygon layer in EPSG:4326 (not the raster's CRS) with one polygon over the raster's columns 0-40
    (x 500000-500080 in EPSG:32640): two of the three ships lie inside."""
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsFeature,
        QgsGeometry,
        QgsVectorLayer,
    )

    lyr = QgsVectorLayer("Polygon?crs=EPSG:4326", "fields", "memory")
    geom = QgsGeometry.fromWkt("POLYGON ((500000 2799800, 500080 2799800, 500080 2800000, 500000 2800000, "
                               "500000 2799800))")
    geom.transform(QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32640"),
                                          QgsCoordinateReferenceSystem("EPSG:4326"), project))
    f = QgsFeature()
    f.setGeometry(geom)
    lyr.dataProvider().addFeatures([f])
    project.addMapLayer(lyr)
    return lyr


def test_ask_about_selected_polygons(panel, west_polygon):
    panel.polygons_combo.setLayer(west_polygon)
    panel.ask("How many ships are there?")
    assert "no features are selected in 'fields'" in panel.status.text() and not panel.busy()
    west_polygon.selectAll()
    body = panel.build_request("How many ships are there?")
    assert body["aoi"]["type"] == "FeatureCollection" and "bbox" not in body
    xs = [p[0] for p in body["aoi"]["features"][0]["geometry"]["coordinates"][0]]
    assert min(xs) == pytest.approx(500000, abs=0.5) and max(xs) == pytest.approx(500080, abs=0.5)  # raster CRS
    a = ask(panel, "How many ships are there?")
    assert a["text"].startswith("There are 2 ship detections") and a["verification"]["ok"], a["text"]
    panel.extent_check.setChecked(True)
    with pytest.raises(ValueError, match="not both"):
        panel.build_request("How many ships are there?")
