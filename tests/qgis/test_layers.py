"""Layer input handling with real QGIS layers: file layers go by path, web (XYZ) and GeoPackage-raster
layers are rendered to a GeoTIFF at the model's pixel size; layer facts and the fitness rules."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qgis.core")

TILE_PX = 256
WORLD_M = 40075016.68557849


def _write_tiles(root, zoom: int = 1):
    from osgeo import gdal

    tiles = {}
    for x in range(2 ** zoom):
        for y in range(2 ** zoom):
            (root / str(zoom) / str(x)).mkdir(parents=True, exist_ok=True)
            px = np.random.default_rng(x * 10 + y).integers(0, 255, (3, TILE_PX, TILE_PX), dtype=np.uint8)
            mem = gdal.GetDriverByName("MEM").Create("", TILE_PX, TILE_PX, 3, gdal.GDT_Byte)
            for b in range(3):
                mem.GetRasterBand(b + 1).WriteArray(px[b])
            gdal.GetDriverByName("PNG").CreateCopy(str(root / str(zoom) / str(x) / f"{y}.png"), mem)
            tiles[(x, y)] = px
    return tiles


def test_xyz_layer_is_rendered_at_model_gsd(qgis_app, tmp_path):
    from osgeo import gdal
    from qgis.core import QgsRasterLayer, QgsRectangle

    from qgis_rsfm.layers import InputError, layer_facts, prepare_input

    tiles = _write_tiles(tmp_path / "tiles")
    lyr = QgsRasterLayer(f"type=xyz&url=file://{tmp_path}/tiles/{{z}}/{{x}}/{{y}}.png&zmin=1&zmax=1", "xyz", "wms")
    assert lyr.isValid()
    facts = layer_facts(lyr)
    assert facts.band_count == 4 and not facts.is_file and facts.gsd_m is None
    with pytest.raises(InputError, match="Visible extent"):
        prepare_input(lyr, None, 1.0, str(tmp_path))  # the whole web map at 1 m is absurd
    area = QgsRectangle(1000, 1000, 1200, 1150)  # 200 m x 150 m in EPSG:3857, just NE of (0, 0)
    prep = prepare_input(lyr, area, 1.0, str(tmp_path))
    assert prep.rendered and prep.bbox is None and prep.bands == [1, 2, 3]
    ds = gdal.Open(prep.path)
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (200, 150, 4)
    assert ds.GetGeoTransform() == pytest.approx((1000.0, 1.0, 0.0, 1150.0, 0.0, -1.0))
    # The area lies in tile (x=1, y=0), column 0, last row: every rendered pixel has that tile pixel's colour.
    expected = tiles[(1, 0)][:, TILE_PX - 1, 0]
    got = [int(ds.GetRasterBand(b + 1).ReadAsArray()[75, 100]) for b in range(3)]
    assert got == expected.tolist()


def test_gpkg_raster_is_rendered_raw(qgis_app, rasters, tmp_path):
    from osgeo import gdal
    from qgis.core import QgsRasterLayer

    from qgis_rsfm.layers import file_path, prepare_input

    gpkg = tmp_path / "r.gpkg"
    gdal.Translate(str(gpkg), rasters["rgb"], format="GPKG", creationOptions=["RASTER_TABLE=rgb"])
    lyr = QgsRasterLayer(f"GPKG:{gpkg}:rgb", "gpkg raster")
    assert lyr.isValid() and file_path(lyr) is None
    prep = prepare_input(lyr, None, 1.0, str(tmp_path))
    a, b = gdal.Open(rasters["rgb"]), gdal.Open(prep.path)
    assert (b.RasterXSize, b.RasterYSize) == (a.RasterXSize, a.RasterYSize)
    assert np.array_equal(a.GetRasterBand(2).ReadAsArray(), b.GetRasterBand(2).ReadAsArray())


def test_file_layer_goes_by_path_and_area_becomes_bbox(qgis_app, rasters):
    from qgis.core import QgsRasterLayer, QgsRectangle

    from qgis_rsfm.layers import InputError, prepare_input

    lyr = QgsRasterLayer(rasters["rgb"], "rgb")
    e = lyr.extent()
    prep = prepare_input(lyr, QgsRectangle(e.xMinimum() - 50, e.yMinimum(), e.center().x(), e.yMaximum()), 1.0)
    assert prep.path == rasters["rgb"] and not prep.rendered
    assert prep.bbox == pytest.approx([e.xMinimum(), e.yMinimum(), e.center().x(), e.yMaximum()])
    with pytest.raises(InputError, match="does not overlap"):
        prepare_input(lyr, QgsRectangle(0, 0, 10, 10), 1.0)


def test_geographic_layer_gsd_is_estimated_in_metres(qgis_app, tmp_path):
    from osgeo import gdal, osr
    from qgis.core import QgsRasterLayer

    from qgis_rsfm.layers import layer_facts

    path = str(tmp_path / "geo.tif")
    ds = gdal.GetDriverByName("GTiff").Create(path, 10, 10, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((55.0, 1e-5, 0, 25.0, 0, -1e-5))  # ~1 m at 25 deg N
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    ds.SetProjection(srs.ExportToWkt())
    ds = None
    facts = layer_facts(QgsRasterLayer(path, "geo"))
    assert facts.crs_units.lower().startswith("deg")
    assert facts.gsd_m == pytest.approx(1.0, rel=0.02)


def test_fitness_rules():
    from qgis_rsfm.fitness import LayerFacts, check_fitness

    cfg = {"name": "m", "bands": ["red", "green", "blue"], "gsd_m": 1.0, "gsd_range_m": [0.5, 2.0]}
    ok = check_fitness(cfg, LayerFacts("a", 3, 1.0))
    assert ok.ok and not ok.warnings
    few = check_fitness(cfg, LayerFacts("a", 1, 1.0))
    assert not few.ok and "needs 3 bands" in few.problems[0] and "has 1" in few.problems[0]
    many = check_fitness(cfg, LayerFacts("a", 4, 1.0))
    assert many.ok and "first 3" in many.warnings[0]
    nocrs = check_fitness(cfg, LayerFacts("a", 3, None, has_crs=False))
    assert not nocrs.ok and "coordinate reference system" in nocrs.problems[0]
    near = check_fitness(cfg, LayerFacts("a", 3, 3.0))
    assert near.ok and "outside" in near.warnings[0]
    far = check_fitness(cfg, LayerFacts("a", 3, 30.0))
    assert not far.ok and "resample" in far.problems[0]
    allowed = check_fitness(cfg, LayerFacts("a", 3, 30.0), allow_gsd_mismatch=True)
    assert allowed.ok and allowed.warnings
    deg = check_fitness(cfg, LayerFacts("a", 3, 1.0, crs_units="degrees"))
    assert deg.ok and "degrees" in deg.warnings[0]
