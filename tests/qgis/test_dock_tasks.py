"""The dock's sparse-task pages (scene classification, object detection, rotated detection, instance
segmentation) run end to end in a real headless QGIS against the live backend and the fixture models: the
page is picked in the task list, Run is pressed, the QgsTask finishes, and the added layer is checked as a
user would rely on it — reopened from the written GeoPackage, valid geometries in the raster's CRS, the
documented fields (CONTRACTS.md "Outputs per task"), a by-class style, and provenance in the features and the
layer metadata. Cancel from the dock leaves no layer and no file behind.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

from conftest import wait_for  # noqa: E402

# task -> (GeoPackage layer name, documented fields): docs/CONTRACTS.md "Outputs per task"
OUTPUTS = {
    "scene_classification": ("scenes", {"class_id", "class_name", "score"}),
    "object_detection": ("detections", {"class_id", "class_name", "score", "area_m2"}),
    "rotated_detection": ("rotated_detections",
                          {"class_id", "class_name", "score", "angle_deg", "length_m", "width_m"}),
    "instance_segmentation": ("instances", {"class_id", "class_name", "score", "area_m2"}),
}
PROVENANCE_FIELDS = {"model", "parameters", "source", "created"}
_SCENES = {"desert": "#fdbf6f", "urban": "#e31a1c", "water": "#1f78b4"}  # tests/fixtures/make_fixtures.py
_OBJECTS = {"ship": "#1f78b4", "vehicle": "#ff7f00"}
CLASS_COLOURS = {"scene_classification": _SCENES, "object_detection": _OBJECTS, "rotated_detection": _OBJECTS,
                 "instance_segmentation": _OBJECTS}
FIXTURE_CLASSES = {task: list(colours) for task, colours in CLASS_COLOURS.items()}  # in class-id order


def _fixture_id(task: str) -> str:
    return f"rsfm-fixture-{task.replace('_', '-')}"


def _open_page(dock, task: str, src):
    """Pick the task in the dock's task list (as a user would) and set layer and fixture model."""
    idx = dock.task_combo.findData(task)
    assert idx >= 0, f"no '{task}' entry in the dock's task list"
    dock.task_combo.setCurrentIndex(idx)
    page = dock.pages[task]
    assert dock.stack.currentWidget() is page
    page.layer_box.setLayer(src)
    # the backend may also serve bundled real models for this task; the test runs the fixture
    mi = page.model_box.findData(_fixture_id(task))
    assert mi >= 0, f"fixture model not offered for {task}: {page.fit_label.text()}"
    page.model_box.setCurrentIndex(mi)
    assert page.current_model().id == _fixture_id(task)
    return page


def _run_from_dock(page, out_dir: Path, timeout_s: float = 180):
    """Press Run, wait for the QgsTask to finish; returns the task."""
    page.out_widget.setFilePath(str(out_dir))
    assert page.run_button.isEnabled(), page.fit_label.text()
    page.run_button.click()
    task = page.task
    assert task is not None, page.status_label.text()
    assert not page.run_button.isEnabled() and page.cancel_button.isEnabled()
    assert wait_for(lambda: page.task is None, timeout_s), "job did not finish"
    return task


@pytest.mark.parametrize("task", list(OUTPUTS))
def test_sparse_task_from_the_dock_adds_a_valid_documented_styled_layer(
        task, dock, project, rasters, fixtures_index, client, tmp_path, add_raster):
    from qgis.core import QgsVectorLayer, QgsWkbTypes

    if task not in fixtures_index["models"]:
        pytest.skip(f"no {task} fixture model: {fixtures_index['skipped_models'].get(task)}")
    src = add_raster(rasters["rgb"], "fixture rgb")
    page = _open_page(dock, task, src)
    if page.threshold_spin is not None:
        page.threshold_spin.setValue(0.0)  # seeded random weights score low: keep every detection
    n_before = len(project.mapLayers())
    job_task = _run_from_dock(page, tmp_path / "out")
    assert type(page.last_outcome).__name__ == "Success", page.status_label.text()
    assert page.progress.value() == 100 and "Done: 1 layer added" in page.status_label.text()

    # exactly one vector layer added to the project, in the results group
    assert len(page.last_layers) == 1
    lyr = page.last_layers[0]
    assert isinstance(lyr, QgsVectorLayer) and lyr.isValid()
    assert len(project.mapLayers()) == n_before + 1 and project.mapLayer(lyr.id()) is lyr
    assert project.layerTreeRoot().findGroup("RSFM results").findLayer(lyr.id()) is not None

    # reopened straight from the GeoPackage the backend wrote
    layer_name, fields = OUTPUTS[task]
    gpkg = lyr.source().split("|")[0]
    assert gpkg.endswith(".gpkg") and Path(gpkg).is_file() and Path(gpkg).parent.parent == tmp_path / "out"
    reopened = QgsVectorLayer(f"{gpkg}|layername={layer_name}", "reopened", "ogr")
    assert reopened.isValid(), f"layer '{layer_name}' missing from {gpkg}"
    assert reopened.crs() == src.crs() and lyr.crs() == src.crs()
    assert QgsWkbTypes.geometryType(reopened.wkbType()) == QgsWkbTypes.GeometryType.PolygonGeometry
    names = set(reopened.fields().names())
    assert fields <= names, f"missing documented fields {fields - names}"
    assert PROVENANCE_FIELDS <= names, f"missing provenance fields {PROVENANCE_FIELDS - names}"
    feats = list(reopened.getFeatures())
    assert len(feats) == lyr.featureCount() > 0, "no features: the fixture model should find something"

    raster_extent = src.extent()
    for f in feats:
        g = f.geometry()
        assert not g.isNull() and g.isGeosValid(), f"invalid geometry in feature {f.id()}: {g.asWkt(2)[:200]}"
        assert g.area() > 0
        if task == "rotated_detection":  # a box at an angle keeps its shape: only its centre must be inside
            assert raster_extent.contains(g.centroid().asPoint()), f"box {f.id()} is centred off the raster"
        else:
            bb = g.boundingBox()
            assert raster_extent.buffered(1e-6).contains(bb), f"feature {f.id()} lies off the raster: {bb.toString(2)}"
        assert f["class_name"] in FIXTURE_CLASSES[task]
        assert FIXTURE_CLASSES[task][f["class_id"]] == f["class_name"]
        assert 0.0 <= f["score"] <= 1.0
        # provenance on every feature
        model_id, _, revision = f["model"].partition("@")  # "<id>@<revision>"
        assert model_id == _fixture_id(task) and revision
        params = json.loads(f["parameters"])  # what the backend really used: the dock's options arrived
        assert params["tile_size_px"] == 64  # the fixture package's default (the dock left "model default")
        if page.threshold_spin is not None:
            assert params["score_threshold"] == 0.0
        assert f["source"] == rasters["rgb"]
        assert f["created"][:4].isdigit() and "T" in f["created"]
    _check_task_geometry(task, feats, raster_extent)

    # styled by the backend's .qml: a categorized renderer on class_id, one category per class in the
    # model's colour, so every feature is drawn in its class's colour
    assert Path(gpkg).with_suffix(".qml").is_file()
    r = lyr.renderer()
    assert r.type() == "categorizedSymbol", r.type()
    assert r.classAttribute() == "class_id"
    cats = {str(c.value()): c for c in r.categories()}
    for class_id, (name, colour) in enumerate(CLASS_COLOURS[task].items()):
        cat = cats[str(class_id)]
        assert cat.label() == name and cat.renderState()
        assert cat.symbol().symbolLayer(0).strokeColor().name() == colour, (name, colour)
    assert {str(f["class_id"]) for f in feats} <= set(cats)

    # provenance in the GeoPackage layer's own metadata (what other GIS tools see) ...
    from osgeo import ogr

    ds = ogr.Open(gpkg)
    gmd = ds.GetLayerByName(layer_name).GetMetadata()
    ds = None
    assert PROVENANCE_FIELDS <= set(gmd), gmd
    assert gmd["model"] == feats[0]["model"] and gmd["source"] == rasters["rgb"]
    # ... and in QGIS's layer metadata and custom properties
    md = lyr.metadata()
    assert md.identifier() == f"rsfm:{job_task.job_id}"
    assert _fixture_id(task) in md.abstract() and "Source layer: fixture rgb" in md.abstract()
    assert set(md.keywords("rsfm")) >= {"rsfm", task, _fixture_id(task)}
    assert lyr.customProperty("rsfm/job_id") == job_task.job_id
    assert lyr.customProperty("rsfm/task") == task
    assert lyr.customProperty("rsfm/model") == _fixture_id(task)
    assert client.job(job_task.job_id).state == "succeeded"
    assert page.run_button.isEnabled() and not page.cancel_button.isEnabled()


def _check_task_geometry(task: str, feats: list, extent) -> None:
    """What each task's geometry must look like, beyond validity."""
    if task == "scene_classification":
        # a grid of cells: no two overlap and together they cover the raster (one cell per tile)
        total = sum(f.geometry().area() for f in feats)
        assert total == pytest.approx(extent.area(), rel=1e-6), (total, extent.area())
        for i, a in enumerate(feats):
            for b in feats[i + 1:]:
                assert a.geometry().intersection(b.geometry()).area() < 1e-6
            assert len(a.geometry().asPolygon()[0]) == 5, "a cell is a rectangle"
    elif task == "object_detection":
        for f in feats:  # axis-aligned boxes whose area_m2 is the box's area (CRS in metres)
            g = f.geometry()
            assert g.area() == pytest.approx(g.boundingBox().area(), rel=1e-6)
            assert f["area_m2"] == pytest.approx(g.area(), rel=1e-3)
    elif task == "rotated_detection":
        for f in feats:  # a rectangle of length x width at the stated angle
            g = f.geometry()
            assert f["length_m"] >= f["width_m"] > 0
            assert g.area() == pytest.approx(f["length_m"] * f["width_m"], rel=1e-3)
            _, _, angle, w, h = g.orientedMinimumBoundingBox()
            assert sorted((w, h)) == pytest.approx(sorted((f["length_m"], f["width_m"])), rel=1e-3)
            assert math.isfinite(f["angle_deg"]) and -360.0 <= f["angle_deg"] <= 360.0
    elif task == "instance_segmentation":
        for f in feats:  # outlines (MultiPolygon), not boxes; area_m2 is the outline's area
            g = f.geometry()
            assert g.isMultipart()
            assert f["area_m2"] == pytest.approx(g.area(), rel=1e-3)


def test_cancel_from_the_dock_leaves_no_detection_layer(dock, project, client, fixtures_index, tmp_path,
                                                        add_raster, big_raster):
    task = "object_detection"
    if task not in fixtures_index["models"]:
        pytest.skip(f"no {task} fixture model: {fixtures_index['skipped_models'].get(task)}")
    src = add_raster(big_raster, "big")
    page = _open_page(dock, task, src)
    n_layers = len(project.mapLayers())
    out_dir = tmp_path / "out"
    page.out_widget.setFilePath(str(out_dir))
    page.run_button.click()
    job_task = page.task
    assert job_task is not None, page.status_label.text()
    assert wait_for(lambda: job_task.job_id is not None or page.task is None, 60)
    assert page.task is not None, "the job finished before Cancel could be pressed; make big_raster bigger"
    page.cancel_button.click()
    assert wait_for(lambda: page.task is None, 60), "cancel did not finish the task"
    assert type(page.last_outcome).__name__ == "Canceled", page.status_label.text()
    assert client.job(job_task.job_id).state == "cancelled"
    assert page.last_layers == [] and len(project.mapLayers()) == n_layers
    assert project.layerTreeRoot().findGroup("RSFM results") is None
    left = [p for p in out_dir.rglob("*") if p.is_file()]
    assert not left, f"files left behind after cancel: {left}"
    assert "Cancelled" in page.status_label.text()
    assert page.run_button.isEnabled() and not page.cancel_button.isEnabled()
