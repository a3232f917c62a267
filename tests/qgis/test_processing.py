"""Every Processing algorithm through processing.run against the live backend and fixture models; bad
inputs give plain-words errors; the provider follows QGIS's house rules."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("qgis.core")

ALGS = {
    "rsfm:segment": "semantic_segmentation",
    "rsfm:classify": "scene_classification",
    "rsfm:detect": "object_detection",
    "rsfm:detect_rotated": "rotated_detection",
    "rsfm:instances": "instance_segmentation",
    "rsfm:change": "change_detection",
}


@pytest.fixture(scope="module")
def provider(qgis_app):
    from qgis.core import QgsApplication

    from qgis_rsfm.processing.provider import RsfmProvider

    reg = QgsApplication.processingRegistry()
    prov = reg.providerById("rsfm")
    if prov is None:
        prov = RsfmProvider()
        reg.addProvider(prov)
    yield prov
    reg.removeProvider(prov)


def _run(alg_id, params):
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    context = QgsProcessingContext()
    feedback = QgsProcessingFeedback()
    return processing.run(alg_id, params, context=context, feedback=feedback)


def _grid(path):
    from osgeo import gdal, osr

    ds = gdal.Open(path)
    srs = osr.SpatialReference(wkt=ds.GetProjection())
    return ds.GetGeoTransform(), (ds.RasterXSize, ds.RasterYSize), srs


def test_house_rules(provider):
    """QGIS's GenericAlgorithmsTest rules: tags, help, short description style."""
    assert {a.id() for a in provider.algorithms()} == set(ALGS) | {"rsfm:status"}
    for alg in provider.algorithms():
        assert alg.tags(), alg.id()
        assert alg.shortHelpString(), alg.id()
        d = alg.shortDescription()
        assert d and d[0].isupper() and d.endswith("."), (alg.id(), d)
        assert re.match(r"^[A-Z][a-z]+s\b", d), f"{alg.id()}: short description must start with a verb in -s: {d}"
        assert "<" not in d and not d.lower().startswith("this algorithm")
        assert alg.displayName() and alg.group() and alg.groupId() == "models"
        assert alg.createInstance().name() == alg.name()
        for p in alg.parameterDefinitions():
            assert p.name() == p.name().upper(), f"{alg.id()} parameter {p.name()} must be UPPER case"


def test_segment_writes_georeferenced_output(provider, backend, rasters, tmp_path):
    out = _run("rsfm:segment", {"INPUT": rasters["rgb"], "VECTORIZE": True, "OUTPUT_FOLDER": str(tmp_path)})
    assert out["OUTPUT"].endswith(".tif") and out["OUTPUT"].startswith(str(tmp_path))
    gt_in, size_in, srs_in = _grid(rasters["rgb"])
    gt_out, size_out, srs_out = _grid(out["OUTPUT"])
    assert size_out == size_in and gt_out == pytest.approx(gt_in) and srs_out.IsSame(srs_in)
    assert list(tmp_path.glob("*.gpkg")), "VECTORIZE=True must also write polygons"


def test_segment_respects_extent(provider, backend, rasters, tmp_path):
    from osgeo import gdal

    gt, (w, h), _ = _grid(rasters["rgb"])
    # The left half, in the raster's CRS: "xmin,xmax,ymin,ymax [EPSG:32640]".
    xmin, ymax = gt[0], gt[3]
    extent = f"{xmin},{xmin + 48 * gt[1]},{ymax + h * gt[5]},{ymax} [EPSG:32640]"
    out = _run("rsfm:segment", {"INPUT": rasters["rgb"], "EXTENT": extent, "OUTPUT_FOLDER": str(tmp_path)})
    ds = gdal.Open(out["OUTPUT"])
    assert ds.RasterXSize <= 49 and ds.GetGeoTransform()[0] == pytest.approx(xmin)


@pytest.mark.parametrize("alg_id", ["rsfm:detect", "rsfm:detect_rotated", "rsfm:instances", "rsfm:classify"])
def test_vector_algorithms(provider, backend, fixtures_index, rasters, tmp_path, alg_id):
    from qgis.core import QgsVectorLayer

    task = ALGS[alg_id]
    if task not in fixtures_index["models"]:
        pytest.skip(f"no {task} fixture model yet: {fixtures_index['skipped_models'].get(task)}")
    params = {"INPUT": rasters["rgb"], "OUTPUT_FOLDER": str(tmp_path)}
    if alg_id != "rsfm:classify":
        params["SCORE_THRESHOLD"] = 0.0
    out = _run(alg_id, params)
    assert out["JOB_ID"]
    path = out["OUTPUT"]
    lyr = QgsVectorLayer(path, "out", "ogr") if path.endswith(".gpkg") else None
    if lyr is not None:
        assert lyr.isValid() and lyr.crs().authid() == "EPSG:32640"


def test_change(provider, backend, fixtures_index, rasters, tmp_path):
    if "change_detection" not in fixtures_index["models"]:
        pytest.skip(f"no change fixture model yet: {fixtures_index['skipped_models'].get('change_detection')}")
    out = _run("rsfm:change", {"INPUT": rasters["rgb"], "INPUT_AFTER": rasters["rgb_after"],
                               "OUTPUT_FOLDER": str(tmp_path)})
    gt_in, size_in, _ = _grid(rasters["rgb"])
    gt_out, size_out, _ = _grid(out["OUTPUT"])
    assert size_out == size_in and gt_out == pytest.approx(gt_in)


def test_one_band_raster_to_three_band_model_is_refused_in_plain_words(provider, backend, rasters, tmp_path):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException) as exc:
        _run("rsfm:segment", {"INPUT": rasters["one_band"], "MODEL": "rsfm-fixture-semantic-segmentation",
                              "OUTPUT_FOLDER": str(tmp_path)})
    msg = str(exc.value)
    assert "3 bands" in msg and "1" in msg and "layer" in msg
    assert not list(tmp_path.glob("*.tif"))


def test_raster_without_crs_is_refused_in_plain_words(provider, backend, rasters, tmp_path):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException) as exc:
        _run("rsfm:segment", {"INPUT": rasters["no_crs"], "OUTPUT_FOLDER": str(tmp_path)})
    assert "coordinate reference system" in str(exc.value)


def test_unknown_model_lists_the_available_ones(provider, backend, rasters, tmp_path):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException) as exc:
        _run("rsfm:segment", {"INPUT": rasters["rgb"], "MODEL": "no-such-model", "OUTPUT_FOLDER": str(tmp_path)})
    assert "no-such-model" in str(exc.value) and "rsfm-fixture-semantic-segmentation" in str(exc.value)


def test_coarse_gsd_is_refused_unless_allowed(provider, backend, rasters, tmp_path):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException) as exc:
        _run("rsfm:segment", {"INPUT": rasters["coarse_gsd"], "OUTPUT_FOLDER": str(tmp_path / "a")})
    assert "30 m" in str(exc.value) and "resample" in str(exc.value)
    out = _run("rsfm:segment", {"INPUT": rasters["coarse_gsd"], "ALLOW_GSD_MISMATCH": True,
                                "OUTPUT_FOLDER": str(tmp_path / "b")})
    assert out["OUTPUT"].endswith(".tif")


def test_cancel_reaches_the_backend(provider, backend, client, tmp_path, big_raster):
    """feedback.cancel() during the run cancels the backend job; nothing is written."""
    import threading

    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback

    path = big_raster
    feedback = QgsProcessingFeedback()
    before = {j.id for j in client.jobs()}

    def cancel_when_submitted():
        for _ in range(600):
            if {j.id for j in client.jobs()} - before:
                feedback.cancel()
                return
            threading.Event().wait(0.05)

    t = threading.Thread(target=cancel_when_submitted, daemon=True)
    t.start()
    out_dir = tmp_path / "out"
    with pytest.raises(QgsProcessingException, match="cancelled"):
        processing.run("rsfm:segment", {"INPUT": path, "OUTPUT_FOLDER": str(out_dir)},
                       context=QgsProcessingContext(), feedback=feedback)
    t.join(5)
    new = [j for j in client.jobs() if j.id not in before]
    assert len(new) == 1 and new[0].state == "cancelled"
    assert not [p for p in out_dir.rglob("*") if p.suffix in (".tif", ".gpkg")]


def test_status_lists_models_for_a_task(provider, backend, client, fixtures_index):
    import json

    # The backend also serves the packages bundled in resources/models (e.g. the trained land-cover model).
    out = _run("rsfm:status", {"TASK": 1})  # 1 = semantic_segmentation
    status = json.loads(out["OUTPUT"])
    assert status["backend"]["api_version"] == 1
    ids = [m["id"] for m in status["models"]]
    assert "rsfm-fixture-semantic-segmentation" in ids
    assert sorted(ids) == sorted(m.id for m in client.models("semantic_segmentation"))
    assert out["MODEL_COUNT"] == len(ids)
    everything = _run("rsfm:status", {})
    assert everything["MODEL_COUNT"] == len(client.models()) >= len(fixtures_index["models"])
