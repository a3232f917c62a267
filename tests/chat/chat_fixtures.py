"""Tiny perception outputs with KNOWN content for the chat tests (written into a temp dir, a few KB).

Raster: 200 x 100 px, 3 bands, EPSG:32640, 2 m pixels, origin (500000, 2800000) → 400 m x 200 m = 0.08 km².

Land cover (class-index GeoTIFF, classes background, water, building, vegetation, road):
  * water       cols 0-99 (all rows)          10,000 px = 50 %   = 0.04 km²  (west half)
  * building    cols 100-149, rows 0-49        2,500 px = 12.5 % = 0.01 km²  (north-east)
  * vegetation  the rest                       7,500 px = 37.5 % = 0.03 km²
  * background, road: absent

Detections (GeoPackage, fields class_name, score; the detector's classes ship, vehicle, airplane are in the
layer metadata key ``classes``):
  * 3 ships in the water (two north-west, one south-west), scores 0.95, 0.90, 0.80
  * 2 vehicles north-east, scores 0.85, 0.70; plus 1 vehicle at score 0.10 (below the 0.3 threshold)
  * airplane: none

Change against a later image ``raster_later.tif`` (same grid, acquired 2025-06-01): ``change.tif`` (class 0 "no
change", 1 "change", names in band-1 tags CLASS_<i> as ``backend.outputs`` writes them) and its polygons
``change_polygons.gpkg`` (layer ``changes``, fields class_id, class_name, area_m2):
  * region A  cols 150-199, rows 0-19   1,000 px = 4,000 m²  (north-east)
  * region B  cols 10-29,   rows 80-89    200 px =   800 m²  (south-west)
  → 1,200 of 20,000 px changed = 6 % = 4,800 m², 83.3 % of it in the north-east quarter.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np

ORIGIN_X, ORIGIN_Y, RES_M = 500000.0, 2800000.0, 2.0
WIDTH, HEIGHT = 200, 100
SEG_CLASSES = ["background", "water", "building", "vegetation", "road"]
DET_CLASSES = ["ship", "vehicle", "airplane"]
CHANGE_CLASSES = ["no change", "change"]
CHANGE_REGIONS = [(150, 0, 200, 20), (10, 80, 30, 90)]  # pixel boxes (x0, y0, x1, y1), largest first
# class, score, pixel box (x0, y0, x1, y1)
OBJECTS = [
    ("ship", 0.95, (10, 10, 20, 30)),
    ("ship", 0.90, (40, 20, 50, 40)),
    ("ship", 0.80, (30, 70, 40, 90)),
    ("vehicle", 0.85, (160, 10, 164, 14)),
    ("vehicle", 0.70, (170, 30, 174, 34)),
    ("vehicle", 0.10, (120, 80, 124, 84)),
]


def px_to_map(c: float, r: float) -> tuple[float, float]:
    return ORIGIN_X + RES_M * c, ORIGIN_Y - RES_M * r


def make_fixture(root: Path) -> dict[str, str]:
    """Write raster.tif, landcover.tif (+ .qml), detections.gpkg and the change pair (raster_later.tif,
    change.tif, change_polygons.gpkg) under ``root``; return their paths."""
    import pyogrio
    import rasterio
    import shapely
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    root.mkdir(parents=True, exist_ok=True)
    tf = from_origin(ORIGIN_X, ORIGIN_Y, RES_M, RES_M)
    crs = CRS.from_epsg(32640)
    img = np.random.default_rng(0).integers(0, 255, (3, HEIGHT, WIDTH), dtype=np.uint8)
    raster = root / "raster.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=3, dtype="uint8",
                       crs=crs, transform=tf) as dst:
        dst.write(img)
        dst.update_tags(TIFFTAG_DATETIME="2024:05:01 10:00:00")
        for i, n in enumerate(["red", "green", "blue"], 1):
            dst.set_band_description(i, n)
    seg = np.full((HEIGHT, WIDTH), 3, np.uint8)
    seg[:, :100] = 1
    seg[:50, 100:150] = 2
    lc = root / "landcover.tif"
    with rasterio.open(lc, "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=1, dtype="uint8", crs=crs,
                       transform=tf, nodata=255) as dst:
        dst.write(seg, 1)
        dst.write_colormap(1, {0: (0, 0, 0), 1: (0, 0, 255), 2: (255, 0, 0), 3: (0, 255, 0), 4: (128, 128, 128)})
    entries = "\n".join(f'<paletteEntry value="{i}" label="{n}" color="#000000" alpha="255"/>'
                        for i, n in enumerate(SEG_CLASSES))
    lc.with_suffix(".qml").write_text(
        f"<qgis><pipe><rasterrenderer type=\"paletted\"><colorPalette>{entries}</colorPalette>"
        "</rasterrenderer></pipe></qgis>")
    geoms, cls, score = [], [], []
    for c, s, (x0, y0, x1, y1) in OBJECTS:
        (mx0, my0), (mx1, my1) = px_to_map(x0, y1), px_to_map(x1, y0)
        geoms.append(shapely.to_wkb(shapely.box(mx0, my0, mx1, my1)))
        cls.append(c)
        score.append(s)
    det = root / "detections.gpkg"
    pyogrio.raw.write(str(det), np.array(geoms, dtype=object),
                      [np.array(cls, dtype=object), np.array(score, dtype=np.float64)],
                      ["class_name", "score"], layer="detections", driver="GPKG", geometry_type="Polygon",
                      crs="EPSG:32640", layer_metadata={"classes": json.dumps(DET_CLASSES)})
    later = root / "raster_later.tif"
    with rasterio.open(later, "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=3, dtype="uint8",
                       crs=crs, transform=tf) as dst:
        changed = img.copy()
        for x0, y0, x1, y1 in CHANGE_REGIONS:
            changed[:, y0:y1, x0:x1] = 255 - changed[:, y0:y1, x0:x1]
        dst.write(changed)
        dst.update_tags(TIFFTAG_DATETIME="2025:06:01 10:00:00")
    cmap = np.zeros((HEIGHT, WIDTH), np.uint8)
    for x0, y0, x1, y1 in CHANGE_REGIONS:
        cmap[y0:y1, x0:x1] = 1
    change = root / "change.tif"
    with rasterio.open(change, "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=1, dtype="uint8", crs=crs,
                       transform=tf, nodata=255) as dst:
        dst.write(cmap, 1)
        dst.update_tags(1, **{f"CLASS_{i}": n for i, n in enumerate(CHANGE_CLASSES)})
    polys = []
    for x0, y0, x1, y1 in CHANGE_REGIONS:
        (mx0, my0), (mx1, my1) = px_to_map(x0, y1), px_to_map(x1, y0)
        polys.append(shapely.box(mx0, my0, mx1, my1))
    cpoly = root / "change_polygons.gpkg"
    pyogrio.raw.write(str(cpoly), np.array([shapely.to_wkb(p) for p in polys], dtype=object),
                      [np.ones(len(polys), np.int32), np.array(["change"] * len(polys), dtype=object),
                       np.array([p.area for p in polys])], ["class_id", "class_name", "area_m2"], layer="changes",
                      driver="GPKG", geometry_type="Polygon", crs="EPSG:32640")
    return {"raster": str(raster), "landcover": str(lc), "detections": str(det), "raster_later": str(later),
            "change": str(change), "change_polygons": str(cpoly)}


@contextmanager
def serve_loopback(handler: type) -> Iterator[str]:
    """Run ``handler`` (a ``BaseHTTPRequestHandler``) on a free 127.0.0.1 port; yields its ``/v1`` base URL."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    finally:
        srv.shutdown()
