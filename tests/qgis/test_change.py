"""Change detection end to end in real QGIS: a before and an after layer in DIFFERENT CRSs go through the
dock's change page and through rsfm:change; the result lies on the before layer's grid. Small overlap is
a warning shown in plain words; no overlap is refused in plain words, naming the layers."""

from __future__ import annotations

import pytest

pytest.importorskip("qgis.core")

from conftest import wait_for  # noqa: E402


@pytest.fixture
def change_model(fixtures_index):
    if "change_detection" not in fixtures_index["models"]:
        pytest.skip(f"no change fixture model: {fixtures_index['skipped_models'].get('change_detection')}")
    return "rsfm-fixture-change-detection"


def _warp(src: str, dst: str, crs: str = "EPSG:3857", src_win: tuple[int, int, int, int] | None = None,
          shift_m: float = 0.0) -> str:
    """``src`` reprojected to ``crs`` (optionally a pixel window of it, optionally moved east by ``shift_m``)."""
    from osgeo import gdal

    gdal.UseExceptions()
    if src_win is not None or shift_m:
        ds = gdal.Open(src)
        gt = ds.GetGeoTransform()
        x0, y0, w, h = src_win or (0, 0, ds.RasterXSize, ds.RasterYSize)
        ulx, uly = gt[0] + x0 * gt[1] + shift_m, gt[3] + y0 * gt[5]
        tmp = dst + ".part.tif"
        gdal.Translate(tmp, ds, srcWin=[x0, y0, w, h], outputBounds=[ulx, uly, ulx + w * gt[1], uly + h * gt[5]])
        ds = None
        src = tmp
    gdal.Warp(dst, src, dstSRS=crs, resampleAlg="bilinear")
    return dst


def _add(project, path, name):
    from qgis.core import QgsRasterLayer

    lyr = QgsRasterLayer(path, name)
    assert lyr.isValid(), path
    project.addMapLayer(lyr)
    return lyr


def _run_page(page, before, after, out_dir):
    page.layer_box.setLayer(before)
    page.after_box.setLayer(after)
    page.out_widget.setFilePath(str(out_dir))
    assert page.run_button.isEnabled(), page.fit_label.text()
    task = page.run_job()
    assert task is not None, page.status_label.text()
    assert wait_for(lambda: page.task is None, 120), "change job did not finish"
    return page.last_outcome


def test_change_page_with_after_in_another_crs_writes_on_the_before_grid(dock, project, rasters, change_model,
                                                                         tmp_path):
    from qgis.core import QgsRasterLayer, QgsVectorLayer

    before = _add(project, rasters["rgb"], "before (UTM 40N)")
    after = _add(project, _warp(rasters["rgb_after"], str(tmp_path / "after_3857.tif")), "after (Web Mercator)")
    assert before.crs().authid() == "EPSG:32640" and after.crs().authid() == "EPSG:3857"
    page = dock.pages["change_detection"]
    assert page.current_model() is None or page.current_model().id == change_model
    page.vectorize_check.setChecked(True)
    outcome = _run_page(page, before, after, tmp_path / "out")
    page.vectorize_check.setChecked(False)
    assert type(outcome).__name__ == "Success", page.status_label.text()
    assert outcome.request["inputs"]["raster_after"].endswith("after_3857.tif")
    rasters_out = [lyr for lyr in page.last_layers if isinstance(lyr, QgsRasterLayer)]
    vectors_out = [lyr for lyr in page.last_layers if isinstance(lyr, QgsVectorLayer)]
    assert len(rasters_out) == 1 and len(vectors_out) == 1, page.last_layers
    out = rasters_out[0]
    assert out.crs() == before.crs()
    assert out.extent().toString(3) == before.extent().toString(3)
    assert (out.width(), out.height()) == (before.width(), before.height())
    assert vectors_out[0].crs() == before.crs()
    assert "overlap on only" not in page.status_label.text()  # full overlap: no warning
    assert page.status_label.text().startswith("Done")


def test_change_page_warns_in_plain_words_when_overlap_is_small(dock, project, rasters, change_model, tmp_path):
    from osgeo import gdal

    w = gdal.Open(rasters["rgb_after"]).RasterXSize
    # Only the right ~30 % of the after image, reprojected: the images overlap on about a third.
    part = _warp(rasters["rgb_after"], str(tmp_path / "after_part.tif"), src_win=(int(w * 0.7), 0, w - int(w * 0.7),
                                                                                   gdal.Open(rasters["rgb_after"]).RasterYSize))
    before = _add(project, rasters["rgb"], "before")
    after = _add(project, part, "after part")
    outcome = _run_page(dock.pages["change_detection"], before, after, tmp_path / "out")
    assert type(outcome).__name__ == "Success", dock.pages["change_detection"].status_label.text()
    status = dock.pages["change_detection"].status_label.text()
    assert "⚠ The two rasters overlap on only" in status and "nodata" in status, status
    assert any("overlap on only" in w for w in outcome.job.warnings)


def test_change_page_refuses_images_that_do_not_overlap(dock, project, rasters, change_model, tmp_path):
    before = _add(project, rasters["rgb"], "before")
    far = _add(project, _warp(rasters["rgb_after"], str(tmp_path / "far.tif"), shift_m=50_000.0), "after elsewhere")
    n_layers = len(project.mapLayers())
    page = dock.pages["change_detection"]
    outcome = _run_page(page, before, far, tmp_path / "out")
    assert type(outcome).__name__ == "Failed" and outcome.code == "rasters_do_not_overlap", outcome
    status = page.status_label.text()
    assert "'before'" in status and "'after elsewhere'" in status and "do not overlap" in status, status
    assert len(project.mapLayers()) == n_layers and page.last_layers == []


def test_change_algorithm_with_two_crs_and_plain_refusal(qgis_app, backend, rasters, change_model, tmp_path):
    import processing
    from osgeo import gdal, osr
    from qgis.core import (
        QgsApplication,
        QgsProcessingContext,
        QgsProcessingException,
        QgsProcessingFeedback,
    )

    from qgis_rsfm.processing.provider import RsfmProvider

    reg = QgsApplication.processingRegistry()
    added = reg.providerById("rsfm") is None
    if added:
        reg.addProvider(RsfmProvider())
    try:
        after = _warp(rasters["rgb_after"], str(tmp_path / "after_4326.tif"), crs="EPSG:4326")
        out = processing.run("rsfm:change", {"INPUT": rasters["rgb"], "INPUT_AFTER": after, "MODEL": change_model,
                                             "OUTPUT_FOLDER": str(tmp_path / "a")},
                             context=QgsProcessingContext(), feedback=QgsProcessingFeedback())
        src, res = gdal.Open(rasters["rgb"]), gdal.Open(out["OUTPUT"])
        assert (res.RasterXSize, res.RasterYSize) == (src.RasterXSize, src.RasterYSize)
        assert res.GetGeoTransform() == pytest.approx(src.GetGeoTransform())
        assert osr.SpatialReference(wkt=res.GetProjection()).IsSame(osr.SpatialReference(wkt=src.GetProjection()))

        class Recorder(QgsProcessingFeedback):
            warnings: list[str] = []

            def pushWarning(self, text: str) -> None:  # noqa: N802 - QGIS API
                self.warnings.append(text)
                super().pushWarning(text)

        w = gdal.Open(rasters["rgb_after"]).RasterXSize
        part = _warp(rasters["rgb_after"], str(tmp_path / "part.tif"), crs="EPSG:4326",
                     src_win=(int(w * 0.7), 0, w - int(w * 0.7), src.RasterYSize))
        fb = Recorder()
        processing.run("rsfm:change", {"INPUT": rasters["rgb"], "INPUT_AFTER": part,
                                       "OUTPUT_FOLDER": str(tmp_path / "c")}, context=QgsProcessingContext(),
                       feedback=fb)
        assert any("overlap on only" in t for t in fb.warnings), fb.warnings
        far = _warp(rasters["rgb_after"], str(tmp_path / "far.tif"), crs="EPSG:4326", shift_m=50_000.0)
        with pytest.raises(QgsProcessingException, match="do not overlap, so there is nothing to compare"):
            processing.run("rsfm:change", {"INPUT": rasters["rgb"], "INPUT_AFTER": far,
                                           "OUTPUT_FOLDER": str(tmp_path / "b")},
                           context=QgsProcessingContext(), feedback=QgsProcessingFeedback())
        assert not list((tmp_path / "b").glob("*.tif"))
    finally:
        if added:
            reg.removeProvider(reg.providerById("rsfm"))
