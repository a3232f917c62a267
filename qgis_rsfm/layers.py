"""Layers in and out: what the backend is given for a QGIS layer, and how its outputs come back as layers.

* File layers (GDAL) go by path. Other layers (WMS, XYZ, WCS, memory, virtual) are rendered into a
  temporary GeoTIFF at the model's ground sample distance with ``QgsRasterFileWriter``.
* Areas ("whole layer", "visible extent", "selected polygons") become a ``bbox`` in the raster's CRS;
  selected polygons also become an ``aoi`` (GeoJSON FeatureCollection in the raster's CRS) so the backend
  processes only their inside, not their bounding box.
* Outputs are loaded with the ``.qml`` style the backend wrote and carry provenance in their metadata.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCsException,
    QgsFeature,
    QgsGeometry,
    QgsLayerMetadata,
    QgsMapLayer,
    QgsProject,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsRectangle,
    QgsUnitTypes,
    QgsVectorLayer,
    QgsWkbTypes,
)

from .client import Job
from .fitness import LayerFacts

GDAL_FILE_PROVIDERS = ("gdal",)
MAX_AOI_VERTICES = 50_000  # the backend's limit (backend/aoi.py); a request body holds about this many
MAX_RENDER_PX = 12000  # per side; a web layer rendered bigger than this is almost always a mistake
EARTH_M_PER_DEG = 111_320.0


class InputError(ValueError):
    """A layer or area cannot be used as model input; the message says why and what to do."""


# -- facts ---------------------------------------------------------------------------------------------
def file_path(layer: QgsRasterLayer) -> str | None:
    """The file behind a GDAL raster layer, or None for web/memory layers and GDAL URLs."""
    if layer.providerType() not in GDAL_FILE_PROVIDERS:
        return None
    src = layer.source().split("|")[0]
    return src if os.path.isfile(src) else None


def is_rgba_rendered(layer: QgsRasterLayer) -> bool:
    """True for layers whose provider yields colour images (ARGB32), e.g. WMS and XYZ tiles."""
    dt = layer.dataProvider().dataType(1)
    return dt in (Qgis.DataType.ARGB32, Qgis.DataType.ARGB32_Premultiplied)


def layer_gsd_m(layer: QgsRasterLayer) -> float | None:
    """Ground sample distance of a file layer in metres per pixel (None for web layers).

    Geographic CRSs are converted at the extent's centre latitude (1 degree = 111.32 km x cos(lat)).
    """
    if file_path(layer) is None and layer.providerType() != "gdal":
        return None
    if not layer.crs().isValid():
        return None
    res = layer.rasterUnitsPerPixelX()
    if not res or res <= 0:
        return None
    units = layer.crs().mapUnits()
    if units == QgsUnitTypes.DistanceUnit.DistanceDegrees:
        lat = layer.extent().center().y()
        return res * EARTH_M_PER_DEG * max(math.cos(math.radians(lat)), 0.01)
    factor = QgsUnitTypes.fromUnitToUnitFactor(units, QgsUnitTypes.DistanceUnit.DistanceMeters)
    return res * factor


def layer_facts(layer: QgsRasterLayer) -> LayerFacts:
    """The facts :func:`fitness.check_fitness` needs about a raster layer."""
    crs = layer.crs()
    rgba = is_rgba_rendered(layer)
    return LayerFacts(
        name=layer.name(),
        band_count=4 if rgba else layer.bandCount(),
        gsd_m=layer_gsd_m(layer),
        has_crs=crs.isValid(),
        crs_units=QgsUnitTypes.toString(crs.mapUnits()) if crs.isValid() else "",
        is_file=file_path(layer) is not None,
    )


# -- areas ---------------------------------------------------------------------------------------------
def to_layer_crs(rect: QgsRectangle, src_crs: QgsCoordinateReferenceSystem, layer: QgsMapLayer) -> QgsRectangle:
    """``rect`` (in ``src_crs``) as a rectangle in the layer's CRS."""
    if not src_crs.isValid() or src_crs == layer.crs():
        return QgsRectangle(rect)
    tr = QgsCoordinateTransform(src_crs, layer.crs(), QgsProject.instance().transformContext())
    return tr.transformBoundingBox(rect)


def clip_to_layer(rect: QgsRectangle, layer: QgsMapLayer) -> QgsRectangle:
    """Intersection of ``rect`` with the layer's extent.

    Raises:
        InputError: they do not overlap.
    """
    out = rect.intersect(layer.extent())
    if out.isEmpty() or out.width() <= 0 or out.height() <= 0:
        raise InputError(f"the chosen area does not overlap layer '{layer.name()}'; pan the map onto the "
                         "layer or choose 'Whole layer'")
    return out


def selected_features_extent(vlayer: QgsVectorLayer, raster: QgsMapLayer) -> QgsRectangle:
    """Bounding box of the selected features of ``vlayer`` in the raster's CRS.

    Raises:
        InputError: nothing is selected.
    """
    feats = list(vlayer.getSelectedFeatures())
    if not feats:
        raise InputError(f"no features are selected in '{vlayer.name()}'; select polygons with the "
                         "selection tool or choose another area")
    rect = QgsRectangle()
    rect.setMinimal()
    for f in feats:
        if f.hasGeometry():
            rect.combineExtentWith(f.geometry().boundingBox())
    return clip_to_layer(to_layer_crs(rect, vlayer.crs(), raster), raster)


def features_aoi(features, src_crs: QgsCoordinateReferenceSystem, raster: QgsMapLayer,
                 layer_name: str = "the polygon layer") -> tuple[dict, QgsRectangle]:
    """Polygon features as the backend's ``options.aoi``: a GeoJSON FeatureCollection in the raster's CRS.

    Each feature keeps its QGIS feature id as ``properties.fid`` (per-polygon classification writes it back as
    ``source_fid``). Returns ``(feature collection, its bounding box in the raster's CRS)``.

    Raises:
        InputError: no polygon, a non-polygon or invalid geometry (with the fix: "Fix geometries"), a
            transformation failure, or more vertices than the backend accepts.
    """
    crs = raster.crs()
    xform = None
    if src_crs.isValid() and crs.isValid() and src_crs != crs:
        xform = QgsCoordinateTransform(src_crs, crs, QgsProject.instance().transformContext())
    precision = 9 if crs.isGeographic() else 4  # ~0.1 mm in either case
    out, vertices = [], 0
    rect = QgsRectangle()
    rect.setMinimal()
    for f in features:
        f = QgsFeature(f)
        if not f.hasGeometry() or f.geometry().isEmpty():
            continue
        geom = QgsGeometry(f.geometry())
        if geom.type() != QgsWkbTypes.GeometryType.PolygonGeometry:
            raise InputError(f"feature {f.id()} of '{layer_name}' is not a polygon; choose a polygon layer")
        if QgsWkbTypes.isCurvedType(geom.wkbType()):
            geom = QgsGeometry(geom.constGet().segmentize())
        if not geom.isGeosValid():
            errors = geom.validateGeometry()
            why = errors[0].what() if errors else "invalid geometry"
            raise InputError(f"feature {f.id()} of '{layer_name}' has an invalid geometry ({why}); repair the "
                             "layer with Vector > Geometry Tools > Fix Geometries and select the fixed polygons")
        if xform is not None:
            try:
                geom.transform(xform)
            except QgsCsException as exc:
                raise InputError(f"feature {f.id()} of '{layer_name}' cannot be transformed into the raster's "
                                 f"CRS {crs.authid()} ({exc}); check both layers' CRSs") from None
        vertices += geom.constGet().nCoordinates()
        if vertices > MAX_AOI_VERTICES:
            raise InputError(f"the selected polygons have more than {MAX_AOI_VERTICES} vertices; simplify them "
                             "(Vector > Geometry Tools > Simplify, tolerance about one pixel) or select fewer")
        rect.combineExtentWith(geom.boundingBox())
        out.append({"type": "Feature", "geometry": json.loads(geom.asJson(precision)),
                    "properties": {"fid": int(f.id())}})
    if not out:
        raise InputError(f"no polygons with a geometry in '{layer_name}'; select polygons with the selection "
                         "tool or choose another area")
    return {"type": "FeatureCollection", "features": out}, rect


def selected_features_aoi(vlayer: QgsVectorLayer, raster: QgsMapLayer) -> tuple[dict, QgsRectangle]:
    """The selected polygons of ``vlayer`` as ``options.aoi`` in the raster's CRS, and their bounding box
    (clipped to the raster; see :func:`features_aoi`).

    Raises:
        InputError: nothing selected, no overlap with the raster, or a geometry problem.
    """
    feats = sorted(vlayer.getSelectedFeatures(), key=lambda f: f.id())  # a stable request (resume, provenance)
    if not feats:
        raise InputError(f"no features are selected in '{vlayer.name()}'; select polygons with the "
                         "selection tool or choose another area")
    aoi, rect = features_aoi(feats, vlayer.crs(), raster, vlayer.name())
    return aoi, clip_to_layer(rect, raster)


# -- input preparation ---------------------------------------------------------------------------------
@dataclass
class PreparedInput:
    """A raster path for the backend plus the bbox (raster CRS) to process, or None for all of it."""

    path: str
    bbox: list[float] | None
    rendered: bool = False
    bands: list[int] | None = None


def render_to_geotiff(layer: QgsRasterLayer, extent: QgsRectangle, gsd_m: float, out_path: str) -> str:
    """Render ``extent`` (layer CRS) of any raster layer into a GeoTIFF at ``gsd_m`` metres per pixel.

    Colour providers (WMS/XYZ) are written as RGBA through the layer's renderer; others as raw values.

    Raises:
        InputError: the area is too large at that resolution, or the writer fails.
    """
    crs = layer.crs()
    if not crs.isValid():
        raise InputError(f"layer '{layer.name()}' has no CRS; assign one before running a model")
    if crs.mapUnits() == QgsUnitTypes.DistanceUnit.DistanceDegrees:
        lat = extent.center().y()
        res = gsd_m / (EARTH_M_PER_DEG * max(math.cos(math.radians(lat)), 0.01))
    else:
        res = gsd_m / QgsUnitTypes.fromUnitToUnitFactor(crs.mapUnits(), QgsUnitTypes.DistanceUnit.DistanceMeters)
    ncols, nrows = max(1, round(extent.width() / res)), max(1, round(extent.height() / res))
    if ncols > MAX_RENDER_PX or nrows > MAX_RENDER_PX:
        raise InputError(
            f"rendering '{layer.name()}' at {gsd_m:g} m per pixel needs {ncols} x {nrows} pixels (limit "
            f"{MAX_RENDER_PX}); zoom in and choose 'Visible extent', or select a smaller polygon")
    pipe = QgsRasterPipe()
    provider = layer.dataProvider().clone()
    if not pipe.set(provider):
        raise InputError(f"cannot read layer '{layer.name()}' through its data provider")
    writer = QgsRasterFileWriter(out_path)
    writer.setOutputFormat("GTiff")
    if is_rgba_rendered(layer):
        pipe.set(layer.renderer().clone())
        writer.setOutputProviderKey("gdal")
    err = writer.writeRaster(pipe, ncols, nrows, extent, crs, QgsProject.instance().transformContext())
    if err != QgsRasterFileWriter.WriterError.NoError:
        raise InputError(f"could not render layer '{layer.name()}' to {out_path} (writer error {int(err)}); "
                         "check free disk space and that the layer draws on the map")
    return out_path


def prepare_input(layer: QgsRasterLayer, area: QgsRectangle | None, model_gsd_m: float | None,
                  tmp_dir: str | None = None) -> PreparedInput:
    """Turn a layer (+ optional area in the layer's CRS) into what a JobRequest needs.

    Raises:
        InputError: no CRS, empty overlap, or a web layer too large to render.
    """
    if not layer.isValid():
        raise InputError(f"layer '{layer.name()}' is not valid (file moved or unreadable)")
    if not layer.crs().isValid():
        raise InputError(f"layer '{layer.name()}' has no coordinate reference system; assign one "
                         "(Layer Properties > Source) or georeference the raster first")
    path = file_path(layer)
    if path is not None:
        bbox = None
        if area is not None:
            a = clip_to_layer(area, layer)
            bbox = [a.xMinimum(), a.yMinimum(), a.xMaximum(), a.yMaximum()]
        return PreparedInput(path=path, bbox=bbox)
    # Rendered layers: the temporary file already is the area.
    extent = clip_to_layer(area, layer) if area is not None else layer.extent()
    folder = tmp_dir or tempfile.mkdtemp(prefix="rsfm_render_")
    out = str(Path(folder) / f"{_safe(layer.name())}_render.tif")
    render_to_geotiff(layer, extent, model_gsd_m or 1.0, out)
    bands = [1, 2, 3] if is_rgba_rendered(layer) else None  # drop alpha for RGB models
    return PreparedInput(path=out, bbox=None, rendered=True, bands=bands)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60] or "layer"


# -- outputs -------------------------------------------------------------------------------------------
def provenance_text(job: Job, source_name: str, request: dict | None = None) -> str:
    opts = (request or {}).get("options", {})
    when = job.updated or datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = [f"Created by RSFM job {job.id} ({job.task}).", f"Model: {job.model}",
             f"Source layer: {source_name}", f"Time: {when}"]
    if opts:
        lines.append("Options: " + ", ".join(f"{k}={v}" for k, v in sorted(opts.items())))
    lines += [f"Warning: {w}" for w in job.warnings]
    return "\n".join(lines)


def load_job_outputs(job: Job, source_name: str, request: dict | None = None,
                     project: QgsProject | None = None, group_name: str | None = None) -> list[QgsMapLayer]:
    """Create layers for a finished job's outputs, style them and add them to the project.

    Must run on the main thread (``QgsTask.finished``).

    Returns:
        The added layers (invalid outputs are skipped and reported by raising at the end).

    Raises:
        InputError: an output file could not be opened as a layer.
    """
    project = project or QgsProject.instance()
    layers: list[QgsMapLayer] = []
    bad: list[str] = []
    prov = provenance_text(job, source_name, request)
    for out in job.outputs:
        name = out.name or Path(out.path).stem
        if out.kind == "vector":
            uri = out.path + (f"|layername={out.layer}" if out.layer else "")
            lyr: QgsMapLayer = QgsVectorLayer(uri, name, "ogr")
        else:
            lyr = QgsRasterLayer(out.path, name, "gdal")
        if not lyr.isValid():
            bad.append(out.path)
            continue
        if out.style and os.path.isfile(out.style):
            lyr.loadNamedStyle(out.style)
        md = QgsLayerMetadata(lyr.metadata())
        md.setIdentifier(f"rsfm:{job.id}")
        md.setTitle(name)
        md.setAbstract(prov)
        md.setKeywords({"rsfm": ["rsfm", job.task, job.model]})
        lyr.setMetadata(md)
        lyr.setCustomProperty("rsfm/job_id", job.id)
        lyr.setCustomProperty("rsfm/model", job.model)
        lyr.setCustomProperty("rsfm/task", job.task)
        lyr.setCustomProperty("rsfm/source_layer", source_name)
        layers.append(lyr)
    if layers:
        if group_name:
            root = project.layerTreeRoot()
            group = root.findGroup(group_name) or root.insertGroup(0, group_name)
            for lyr in layers:
                project.addMapLayer(lyr, False)
                group.addLayer(lyr)
        else:
            for lyr in layers:
                project.addMapLayer(lyr)
    if bad:
        raise InputError("the backend wrote outputs QGIS cannot open: " + ", ".join(bad))
    return layers
