"""Selected polygons limit a job to their shapes (options.aoi), in real headless QGIS against the live backend.

Two of three polygons of a layer stored in WGS 84 (the raster is in UTM 40N) are selected; segmentation through
processing.run and through the dock's "Selected polygons" area must write nodata outside them and classes
inside; per-polygon scene classification must give one feature per selected polygon with its source fid, a
valid geometry and the raster's CRS. The reference inside mask is computed here with QGIS geometry predicates
on the pixel centres (the backend uses rasterio), so both sides are independent.
"""

from __future__ import annotations

import pytest

pytest.importorskip("qgis.core")

from conftest import wait_for  # noqa: E402

NODATA = 255


@pytest.fixture(scope="module")
def provider(qgis_app):
    from qgis.core import QgsApplication

    from qgis_rsfm.processing.provider import RsfmProvider

    reg = QgsApplication.processingRegistry()
    prov = reg.providerById("rsfm")
    added = prov is None
    if added:
        prov = RsfmProvider()
        reg.addProvider(prov)
    yield prov
    if added:
        reg.removeProvider(prov)


def _px_rect(src, c0, r0, c1, r1):
    """A QgsGeometry rectangle from pixel corners of raster layer ``src`` (in its CRS)."""
    from qgis.core import QgsGeometry, QgsRectangle

    e, rx, ry = src.extent(), src.rasterUnitsPerPixelX(), src.rasterUnitsPerPixelY()
    return QgsGeometry.fromRect(QgsRectangle(e.xMinimum() + c0 * rx, e.yMaximum() - r1 * ry,
                                             e.xMinimum() + c1 * rx, e.yMaximum() - r0 * ry))


@pytest.fixture
def polygons(project, rasters, add_raster):
    """(raster layer, WGS 84 polygon layer with 3 features of which 2 are selected, selected fids)."""
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsFeature,
        QgsGeometry,
        QgsVectorLayer,
    )

    src = add_raster(rasters["rgb"], "fixture rgb")
    holed = _px_rect(src, 4, 4, 44, 36).difference(_px_rect(src, 14, 12, 30, 26))  # a polygon with a hole
    multi = QgsGeometry.collectGeometry([_px_rect(src, 60, 6, 90, 16), _px_rect(src, 56, 50, 92, 58)])
    other = _px_rect(src, 10, 60, 40, 76)  # not selected
    to_wgs = QgsCoordinateTransform(src.crs(), QgsCoordinateReferenceSystem("EPSG:4326"), project)
    lyr = QgsVectorLayer("MultiPolygon?crs=EPSG:4326", "parcels", "memory")
    feats = []
    for g in (holed, multi, other):
        g = QgsGeometry(g)
        g.convertToMultiType()
        assert g.transform(to_wgs) == 0
        f = QgsFeature()
        f.setGeometry(g)
        feats.append(f)
    assert lyr.dataProvider().addFeatures(feats)
    project.addMapLayer(lyr)
    ids = sorted(f.id() for f in lyr.getFeatures())
    lyr.selectByIds(ids[:2])
    return src, lyr, ids[:2]


def _context():
    """A Processing context on the current project (the polygon layer is found there by id)."""
    from qgis.core import QgsProcessingContext, QgsProject

    ctx = QgsProcessingContext()
    ctx.setProject(QgsProject.instance())
    return ctx


def _inside(src, lyr, fids):
    """Reference mask (rows x cols of the raster) of pixel centres inside the selected polygons."""
    import numpy as np
    from qgis.core import QgsCoordinateTransform, QgsFeatureRequest, QgsGeometry, QgsPointXY, QgsProject

    xf = QgsCoordinateTransform(lyr.crs(), src.crs(), QgsProject.instance())
    geoms = []
    for f in lyr.getFeatures(QgsFeatureRequest().setFilterFids(fids)):
        g = QgsGeometry(f.geometry())
        g.transform(xf)
        geoms.append(g)
    e, rx, ry = src.extent(), src.rasterUnitsPerPixelX(), src.rasterUnitsPerPixelY()
    mask = np.zeros((src.height(), src.width()), dtype=bool)
    for r in range(src.height()):
        for c in range(src.width()):
            p = QgsGeometry.fromPointXY(QgsPointXY(e.xMinimum() + (c + 0.5) * rx, e.yMaximum() - (r + 0.5) * ry))
            mask[r, c] = any(g.contains(p) for g in geoms)
    return mask


def _check_raster(path, src, inside):
    """The class raster is nodata exactly outside the selected polygons (on the part of the raster it covers)."""
    import numpy as np
    from osgeo import gdal

    ds = gdal.Open(path)
    band = ds.GetRasterBand(1)
    assert band.GetNoDataValue() == NODATA
    got = band.ReadAsArray()
    gt = ds.GetGeoTransform()
    e = src.extent()
    c0 = round((gt[0] - e.xMinimum()) / gt[1])
    r0 = round((e.yMaximum() - gt[3]) / -gt[5])
    sub = inside[r0: r0 + got.shape[0], c0: c0 + got.shape[1]]
    assert sub.sum() == inside.sum(), "the output covers every inside pixel"
    assert (got[~sub] == NODATA).all()
    assert (got[sub] != NODATA).all()
    assert np.count_nonzero(~sub) > 300, "the polygons leave plenty of outside pixels in their bounding box"


def test_processing_segment_with_selected_polygons(provider, backend, polygons, tmp_path):
    import processing
    from qgis.core import QgsProcessingFeatureSourceDefinition, QgsProcessingFeedback

    src, lyr, fids = polygons
    inside = _inside(src, lyr, fids)
    assert 1000 < inside.sum() < 2000
    out = processing.run("rsfm:segment", {
        "INPUT": src, "AOI": QgsProcessingFeatureSourceDefinition(lyr.id(), True),
        "OUTPUT_FOLDER": str(tmp_path)}, context=_context(), feedback=QgsProcessingFeedback())
    _check_raster(out["OUTPUT"], src, inside)


def test_dock_selected_polygons_sends_the_shapes(dock, polygons, tmp_path):
    src, lyr, fids = polygons
    page = dock.pages["semantic_segmentation"]
    page.layer_box.setLayer(src)
    page.area_box.setCurrentIndex(2)
    page.mask_box.setLayer(lyr)
    page.out_widget.setFilePath(str(tmp_path))
    try:
        spec = page.build_spec(str(tmp_path / "probe"))
        aoi = spec.request["options"]
        assert "aoi" not in aoi  # added by prepare() on the worker thread, like the bbox
        spec.prepare(spec.request)
        aoi = spec.request["options"]["aoi"]
        assert [f["properties"]["fid"] for f in aoi["features"]] == fids
        task = page.run_job()
        assert task is not None, page.status_label.text()
        assert wait_for(lambda: page.task is None, 120), "job did not finish"
        assert type(page.last_outcome).__name__ == "Success", page.status_label.text()
        raster = page.last_layers[0]
        assert raster.crs() == src.crs()
        _check_raster(raster.source(), src, _inside(src, lyr, fids))
        stats = page.last_outcome.job.result["stats"]
        assert "tiles_skipped" in stats and stats["parameters"]["aoi"]["polygons"] == 2
    finally:
        page.area_box.setCurrentIndex(0)


def test_classify_per_selected_polygon(provider, backend, dock, polygons, tmp_path):
    import processing
    from qgis.core import (
        QgsProcessingException,
        QgsProcessingFeatureSourceDefinition,
        QgsProcessingFeedback,
        QgsVectorLayer,
    )

    src, lyr, fids = polygons
    params = {"INPUT": src, "AOI": QgsProcessingFeatureSourceDefinition(lyr.id(), True), "CLASSIFY_PER": 1,
              "OUTPUT_FOLDER": str(tmp_path)}
    out = processing.run("rsfm:classify", params, context=_context(), feedback=QgsProcessingFeedback())
    vl = QgsVectorLayer(out["OUTPUT"] + "|layername=polygon_scenes", "scenes", "ogr")
    assert vl.isValid()
    assert vl.crs() == src.crs()
    feats = list(vl.getFeatures())
    assert sorted(f["source_fid"] for f in feats) == fids
    for f in feats:
        assert f.geometry().isGeosValid()
        assert f["class_name"] and 0 < f["score"] <= 1 and f["model"]
    # the feature's geometry is the selected polygon's own (reprojected), not a tile
    areas = sorted(round(f.geometry().area()) for f in feats)
    assert areas == sorted([40 * 32 - 16 * 14, 30 * 10 + 36 * 8])
    with pytest.raises(QgsProcessingException, match="per polygon needs polygons"):
        processing.run("rsfm:classify", {**params, "AOI": None}, context=_context(),
                       feedback=QgsProcessingFeedback())
    # the dock's scene page offers the same mode: it selects the "Selected polygons" area and sends classify_per
    page = dock.pages["scene_classification"]
    page.layer_box.setLayer(src)
    page.mask_box.setLayer(lyr)
    page.per_box.setCurrentIndex(1)
    try:
        assert page.area_box.currentIndex() == 2
        spec = page.build_spec(str(tmp_path / "dock"))
        assert spec.request["options"]["classify_per"] == "polygon"
        task = page.run_job()
        assert task is not None, page.status_label.text()
        assert wait_for(lambda: page.task is None, 120), "job did not finish"
        assert type(page.last_outcome).__name__ == "Success", page.status_label.text()
        (layer,) = page.last_layers
        assert layer.featureCount() == 2 and layer.crs() == src.crs()
        assert sorted(f["source_fid"] for f in layer.getFeatures()) == fids
    finally:
        page.area_box.setCurrentIndex(0)
        assert page.per_box.currentIndex() == 0


def test_processing_change_with_polygons(provider, backend, fixtures_index, rasters, polygons, tmp_path):
    import processing
    from qgis.core import QgsProcessingFeatureSourceDefinition, QgsProcessingFeedback

    if "change_detection" not in fixtures_index["models"]:
        pytest.skip(f"no change fixture model yet: {fixtures_index['skipped_models'].get('change_detection')}")
    src, lyr, fids = polygons
    out = processing.run("rsfm:change", {
        "INPUT": src, "INPUT_AFTER": rasters["rgb_after"], "AOI": QgsProcessingFeatureSourceDefinition(lyr.id(), True),
        "OUTPUT_FOLDER": str(tmp_path)}, context=_context(), feedback=QgsProcessingFeedback())
    _check_raster(out["OUTPUT"], src, _inside(src, lyr, fids))
