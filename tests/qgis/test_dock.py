"""The dock runs real jobs as QgsTasks against the live backend: a segmentation result comes back as a
valid, styled, georeferenced layer; Cancel stops the backend job and adds nothing; the dialogs work."""

from __future__ import annotations

import pytest

pytest.importorskip("qgis.core")

from conftest import wait_for  # noqa: E402


def test_health_and_models_reach_every_page(dock, fixtures_index):
    assert dock.health["status"] == "ok"
    assert "models" in dock.health_label.text()
    for task, page in dock.pages.items():
        # one fixture per task (plus any package bundled in resources/models, served by every backend)
        fixtures = [m for m in page.models if m.id.startswith("rsfm-fixture-")]
        assert len(fixtures) == (1 if task in fixtures_index["models"] else 0), task
        assert all(m.task == task for m in page.models)
        assert {m.id for m in page.models} == {m.id for m in dock.models if m.task == task}
    dock.poll_health()  # the periodic check runs off the main thread and reports back through a signal
    assert dock._polling
    assert wait_for(lambda: not dock._polling, 30)
    assert dock.health is not None and "jobs running" in dock.health_label.text()


def test_segmentation_job_adds_a_georeferenced_styled_layer(dock, project, rasters, tmp_path, add_raster):
    from qgis.core import QgsRasterLayer

    src = add_raster(rasters["rgb"], "fixture rgb")
    page = dock.pages["semantic_segmentation"]
    page.layer_box.setLayer(src)
    assert page.current_model().id == "rsfm-fixture-semantic-segmentation"
    assert page.run_button.isEnabled(), page.fit_label.text()
    page.out_widget.setFilePath(str(tmp_path))
    page.vectorize_check.setChecked(True)
    task = page.run_job()
    assert task is not None, page.status_label.text()
    assert wait_for(lambda: page.task is None, 120), "job did not finish"
    page.vectorize_check.setChecked(False)
    assert type(page.last_outcome).__name__ == "Success", page.status_label.text()
    assert len(page.last_layers) == 2, "a class raster and its polygons"
    out, polys = page.last_layers
    assert polys.isValid() and polys.crs() == src.crs() and polys.featureCount() > 0
    assert polys.renderer().type() in ("categorizedSymbol", "singleSymbol")
    assert isinstance(out, QgsRasterLayer) and out.isValid()
    assert out.crs() == src.crs()
    assert out.extent().toString(3) == src.extent().toString(3)
    assert (out.width(), out.height()) == (src.width(), src.height())
    # styled by the backend's .qml (a paletted class raster), and provenance recorded
    assert out.renderer().type() == "paletted"
    assert "rsfm-fixture-semantic-segmentation" in out.metadata().abstract()
    assert out.customProperty("rsfm/source_layer") == "fixture rgb"
    assert project.layerTreeRoot().findGroup("RSFM results").findLayer(out.id()) is not None
    assert page.progress.value() == 100


def test_visible_extent_area_sends_a_bbox(dock, project, rasters, iface, tmp_path, add_raster):
    src = add_raster(rasters["rgb"], "fixture rgb")
    canvas = iface.mapCanvas()
    canvas.setDestinationCrs(src.crs())
    e = src.extent()
    from qgis.core import QgsRectangle

    canvas.setExtent(QgsRectangle(e.xMinimum(), e.yMinimum(), e.center().x(), e.yMaximum()))
    page = dock.pages["semantic_segmentation"]
    page.layer_box.setLayer(src)
    page.area_box.setCurrentIndex(1)
    spec = page.build_spec(str(tmp_path))
    spec.prepare(spec.request)
    bbox = spec.request["options"]["bbox"]
    assert bbox[0] == pytest.approx(e.xMinimum()) and bbox[2] < e.xMaximum()
    assert spec.request["inputs"]["raster"] == rasters["rgb"]


def test_one_band_layer_hides_three_band_models_with_reason(dock, project, rasters, add_raster):
    src = add_raster(rasters["one_band"], "one band")
    page = dock.pages["semantic_segmentation"]
    page.layer_box.setLayer(src)
    assert page.model_box.count() == 0 and not page.run_button.isEnabled()
    assert "fits this layer" in page.fit_label.text()
    page.show_all.setChecked(True)
    assert page.model_box.count() == len(page.models) >= 1  # every segmentation model needs 3 bands
    assert "needs 3 bands" in page.fit_label.text() and not page.run_button.isEnabled()
    page.show_all.setChecked(False)


def test_cancel_stops_the_backend_job_and_adds_no_layer(dock, project, client, tmp_path, add_raster, big_raster):
    # A raster big enough that the job is still running when Cancel arrives (~400 tiles of 64 px).
    src = add_raster(big_raster, "big")
    n_layers = len(project.mapLayers())
    page = dock.pages["semantic_segmentation"]
    page.layer_box.setLayer(src)
    out_dir = tmp_path / "out"
    page.out_widget.setFilePath(str(out_dir))
    task = page.run_job()
    assert task is not None, page.status_label.text()
    assert wait_for(lambda: task.job_id is not None or page.task is None, 60)
    page.cancel_job()
    assert wait_for(lambda: page.task is None, 60), "cancel did not finish the task"
    assert type(page.last_outcome).__name__ == "Canceled", page.status_label.text()
    assert client.job(task.job_id).state == "cancelled"
    assert len(project.mapLayers()) == n_layers and page.last_layers == []
    assert not [p for p in out_dir.rglob("*") if p.suffix in (".tif", ".gpkg")], "partial output left behind"
    assert "Cancelled" in page.status_label.text()


def test_model_browser_shows_cards_and_fitness(dock, project, rasters, add_raster):
    from qgis_rsfm.gui.model_browser import ModelBrowserDialog

    one = add_raster(rasters["one_band"], "one band")
    dlg = ModelBrowserDialog(dock.models, dock.iface)
    assert dlg.list.count() == len(dock.models) >= 1
    dlg.task_combo.setCurrentIndex(dlg.task_combo.findData("semantic_segmentation"))
    assert dlg.list.count() == len([m for m in dock.models if m.task == "semantic_segmentation"])
    dlg.list.setCurrentRow(next(i for i in range(dlg.list.count())
                                if "rsfm-fixture-semantic-segmentation" in dlg.list.item(i).text()))
    html = dlg.card.toHtml()
    assert "rsfm-fixture-semantic-segmentation" in html and "building" in html and "CC0-1.0" in html
    dlg.layer_box.setLayer(one)
    assert "needs 3 bands" in dlg.card.toHtml()
    dlg.fit_only.setChecked(True)
    assert dlg.list.count() == 0
    dlg.close()


def test_self_test_passes_and_report_redacts_token(qgis_app, backend, client):
    from qgis_rsfm.gui.selftest import diagnostics_report, run_self_test

    result = run_self_test(lambda: client)
    assert result.ok, [(c.name, c.detail) for c in result.checks]
    names = [c.name for c in result.checks]
    assert names[:3] == ["Backend answers", "Device", "Models installed"]
    assert "Tiny model run" in names and "CRS round-trip" in names
    report = diagnostics_report(result, backend.log_tail())
    assert "[PASS] CRS round-trip" in report
    assert backend.state.token not in report


def test_settings_dialog_round_trip(qgis_app, tmp_path):
    from qgis_rsfm.gui.settings_dialog import SettingsDialog
    from qgis_rsfm.settings import RsfmSettings

    before = RsfmSettings.load()
    dlg = SettingsDialog()
    dlg.dirs_list.addItem(str(tmp_path))
    dlg.device_combo.setCurrentText("cpu")
    new = dlg.collect()
    assert new.model_dirs[-1] == str(tmp_path) and new.device == "cpu"
    new.save()
    assert RsfmSettings.load() == new
    before.save()
    dlg.close()


def test_selected_polygons_area_is_reprojected_into_the_raster_crs(dock, project, rasters, tmp_path, add_raster):
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsFeature,
        QgsGeometry,
        QgsRectangle,
        QgsVectorLayer,
    )

    src = add_raster(rasters["rgb"], "fixture rgb")
    e = src.extent()
    # A polygon over the raster's upper-left quarter, stored in WGS 84 (a different CRS than the raster).
    quarter = QgsRectangle(e.xMinimum() + 5, e.center().y(), e.center().x(), e.yMaximum() - 5)
    to_wgs = QgsCoordinateTransform(src.crs(), QgsCoordinateReferenceSystem("EPSG:4326"), project)
    poly = QgsVectorLayer("Polygon?crs=EPSG:4326", "aoi", "memory")
    f = QgsFeature()
    f.setGeometry(QgsGeometry.fromRect(to_wgs.transformBoundingBox(quarter)))
    poly.dataProvider().addFeatures([f])
    project.addMapLayer(poly)
    page = dock.pages["semantic_segmentation"]
    page.layer_box.setLayer(src)
    page.area_box.setCurrentIndex(2)
    page.mask_box.setLayer(poly)
    from qgis_rsfm.layers import InputError

    with pytest.raises(InputError, match="no features are selected"):
        page.build_spec(str(tmp_path))
    poly.selectAll()
    spec = page.build_spec(str(tmp_path))
    spec.prepare(spec.request)
    bbox = spec.request["options"]["bbox"]
    assert bbox[0] == pytest.approx(quarter.xMinimum(), abs=1.0)
    assert bbox[3] == pytest.approx(quarter.yMaximum(), abs=1.0)
    assert bbox[2] < e.xMaximum() and bbox[1] > e.yMinimum()
    page.area_box.setCurrentIndex(0)
