"""Checking a raster against a model package before anything runs.

:func:`inspect_raster` returns every problem (typed :class:`~backend.errors.RsfmError`) and warning at once,
so ``POST /models/{id}/check`` can list them all; :func:`plan_raster` raises the first problem and returns a
:class:`RasterPlan` (bands to read, window, GSD) for the engine.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window, from_bounds

from backend.aoi import Aoi, parse_aoi
from backend.errors import (
    BadRequestError,
    IncompatibleRasterError,
    InputNotFoundError,
    RasterReadError,
    RsfmError,
)
from training.package import PackageConfig

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
GSD_REFUSE_FACTOR = 4.0  # beyond range/4 .. range*4 the model is refused unless allow_gsd_mismatch


@dataclass
class RasterPlan:
    """What the engine reads: ``path``, 1-based ``bands``, ``window`` (pixels), raster metadata."""

    path: str
    bands: list[int]
    window: Window
    width: int
    height: int
    dtype: str
    crs_wkt: str
    transform: Any  # affine.Affine of the full raster
    gsd_m: float
    nodata: float | None
    warnings: list[str] = field(default_factory=list)
    aoi: Aoi | None = None  # options.aoi (raster CRS); the window is its bounds (and the bbox's)

    @property
    def window_transform(self):
        return rasterio.windows.transform(self.window, self.transform)


def open_raster(path: str | os.PathLike):
    """Open a raster for reading with a clear error for missing, unreadable or non-raster files."""
    p = Path(path)
    if not p.is_absolute():
        raise BadRequestError(f"raster path {str(path)!r} is relative; send an absolute path")
    if not p.exists():
        raise InputNotFoundError(f"raster {p} does not exist; check the path (the backend runs on this machine)")
    if not p.is_file():
        raise RasterReadError(f"{p} is not a file; give the path of a GeoTIFF or another GDAL raster")
    try:
        return rasterio.open(p)
    except RasterioIOError as exc:
        raise RasterReadError(f"{p} cannot be read as a raster ({_short(exc)}); it may be corrupt or not a "
                              "raster format GDAL knows — re-export it as GeoTIFF") from None


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def pixel_size_m(src) -> float:
    """Mean ground sample distance in metres (geographic CRSs converted at the raster's centre latitude)."""
    t = src.transform
    rx, ry = math.hypot(t.a, t.d), math.hypot(t.b, t.e)
    crs = src.crs
    if crs is None:
        return float("nan")
    if crs.is_geographic:
        lat = src.xy(src.height / 2, src.width / 2)[1]
        m_per_deg = 111_320.0
        return float((rx * m_per_deg * math.cos(math.radians(lat)) + ry * m_per_deg) / 2)
    try:
        factor = crs.linear_units_factor[1]
    except Exception:  # noqa: BLE001 - CRSs without units: assume metres
        factor = 1.0
    return float((rx + ry) / 2 * factor)


def _select_bands(src, config: PackageConfig, requested: list[int] | None) -> tuple[list[int], list[RsfmError]]:
    need = config.band_count
    names = ", ".join(config.bands)
    if requested is not None:
        if (not isinstance(requested, list) or not all(isinstance(b, int) and not isinstance(b, bool)
                                                        for b in requested)):
            return [], [BadRequestError("options.bands must be a list of 1-based band numbers, e.g. [1, 2, 3]")]
        bad = [b for b in requested if not 1 <= b <= src.count]
        if bad:
            return [], [IncompatibleRasterError(
                f"options.bands {requested} names bands {bad} but the raster has bands 1..{src.count}",
                code="invalid_band_selection", expected_bands=need, got_bands=src.count)]
        if len(requested) != need:
            return [], [IncompatibleRasterError(
                f"options.bands selects {len(requested)} bands but the model needs {need} ({names})",
                code="band_count_mismatch", expected_bands=need, got_bands=len(requested))]
        return list(requested), []
    if src.count == need:
        return list(range(1, need + 1)), []
    # An alpha band (e.g. RGBA exports) is not data: drop it when that makes the count right.
    non_alpha = [i + 1 for i, ci in enumerate(src.colorinterp) if ci.name != "alpha"]
    if len(non_alpha) == need:
        return non_alpha, []
    return [], [IncompatibleRasterError(
        f"the raster has {src.count} bands but model {config.name!r} expects {need} ({names}); "
        f"choose {need} bands with options.bands (1-based), e.g. {list(range(1, need + 1))}",
        code="band_count_mismatch", expected_bands=need, got_bands=src.count)]


def _bbox_window(src, bbox: Any) -> tuple[Window | None, list[RsfmError]]:
    full = Window(0, 0, src.width, src.height)
    if bbox is None:
        return full, []
    if (not isinstance(bbox, list) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        return None, [BadRequestError("options.bbox must be [minx, miny, maxx, maxy] in the raster's CRS")]
    minx, miny, maxx, maxy = (float(v) for v in bbox)
    if not (minx < maxx and miny < maxy):
        return None, [BadRequestError(f"options.bbox {bbox} is empty; it needs minx < maxx and miny < maxy")]
    win = _intersect(_bounds_window(src, minx, miny, maxx, maxy), full)
    if win is None:
        b = src.bounds
        return None, [IncompatibleRasterError(
            f"options.bbox {bbox} does not overlap the raster (bounds {b.left:.3f}, {b.bottom:.3f}, "
            f"{b.right:.3f}, {b.top:.3f} in its CRS); give the bbox in the raster's CRS", code="bbox_outside")]
    return win, []


def _bounds_window(src, minx: float, miny: float, maxx: float, maxy: float) -> Window:
    win = from_bounds(minx, miny, maxx, maxy, transform=src.transform)
    return win.round_offsets(op="floor").round_lengths(op="ceil")


def _intersect(a: Window, b: Window) -> Window | None:
    """Integer intersection of two windows, or None when they share no pixel."""
    try:
        win = a.intersection(b)
    except rasterio.errors.WindowError:
        return None
    if win.width <= 0 or win.height <= 0:
        return None
    return Window(int(win.col_off), int(win.row_off), int(win.width), int(win.height))


def _window(src, bbox: Any, aoi_raw: Any = None) -> tuple[Window | None, Aoi | None, list[RsfmError]]:
    """Processing window from ``bbox`` and/or ``aoi`` (the AOI's bounds, intersected with the bbox)."""
    import shapely

    win, errs = _bbox_window(src, bbox)
    if errs or aoi_raw is None:
        return win, None, errs
    try:
        aoi = parse_aoi(aoi_raw)
    except RsfmError as exc:
        return None, None, [exc]
    b = src.bounds
    footprint = shapely.box(b.left, b.bottom, b.right, b.top)
    if not aoi.geom.intersects(footprint) or aoi.geom.touches(footprint):
        ab = aoi.bounds
        crs = src.crs.to_string() if src.crs is not None else "its CRS"
        return None, None, [IncompatibleRasterError(
            f"options.aoi (bounds {ab[0]:.3f}, {ab[1]:.3f}, {ab[2]:.3f}, {ab[3]:.3f}) does not overlap the raster "
            f"(bounds {b.left:.3f}, {b.bottom:.3f}, {b.right:.3f}, {b.top:.3f}); send the polygons in the raster's "
            f"CRS ({crs}) and select polygons that lie on the raster", code="aoi_outside")]
    ab = aoi.bounds  # clamped to the raster first: huge coordinates must not overflow the pixel window
    awin = _intersect(_bounds_window(src, max(ab[0], b.left), max(ab[1], b.bottom), min(ab[2], b.right),
                                     min(ab[3], b.top)), win)
    if awin is None:
        return None, None, [IncompatibleRasterError(
            f"options.bbox {bbox} and options.aoi do not overlap; drop the bbox or choose polygons inside it",
            code="aoi_outside")]
    return awin, aoi, []


MAX_WINDOW_PIXELS = 40_000_000_000  # 200k x 200k px (a 40 GB class raster): larger areas need a bbox


def inspect_raster(config: PackageConfig, path: str, options: dict | None = None
                   ) -> tuple[RasterPlan | None, list[RsfmError], list[str]]:
    """Check ``path`` against ``config``; return ``(plan or None, problems, warnings)``. Never raises RsfmError."""
    options = options or {}
    problems: list[RsfmError] = []
    warnings: list[str] = []
    try:
        src = open_raster(path)
    except RsfmError as exc:
        return None, [exc], warnings
    with src:
        if src.width <= 0 or src.height <= 0 or src.count <= 0:
            return None, [IncompatibleRasterError(f"{path} is empty ({src.width}x{src.height} px, "
                                                  f"{src.count} bands)", code="empty_raster")], warnings
        if any(dt not in SUPPORTED_DTYPES for dt in src.dtypes):
            problems.append(IncompatibleRasterError(
                f"{path} has pixel type {src.dtypes[0]}; supported types are {', '.join(SUPPORTED_DTYPES)} — "
                "convert it (e.g. gdal_translate -ot Float32)", code="unsupported_dtype"))
        bands, errs = _select_bands(src, config, options.get("bands"))
        problems += errs
        if src.crs is None:
            problems.append(IncompatibleRasterError(
                f"{path} has no coordinate reference system, so outputs could not be placed on a map; "
                "assign one (QGIS: Layer Properties > Source, or gdal_edit.py -a_srs EPSG:XXXX)",
                code="missing_crs"))
        t = src.transform
        if t.b != 0 or t.d != 0:
            problems.append(IncompatibleRasterError(
                f"{path} has a rotated or sheared geotransform; warp it to a north-up grid first "
                "(gdalwarp in.tif out.tif)", code="rotated_raster"))
        if t.is_identity and src.crs is None:
            pass  # already reported as missing CRS
        gsd = pixel_size_m(src)
        if src.crs is not None and math.isfinite(gsd):
            lo, hi = config.gsd_range_m or (config.gsd_m, config.gsd_m)
            if gsd < lo / GSD_REFUSE_FACTOR or gsd > hi * GSD_REFUSE_FACTOR:
                msg = (f"the raster's pixel size is {gsd:.3g} m but model {config.name!r} works at {lo:g}-{hi:g} m "
                       f"(more than {GSD_REFUSE_FACTOR:g}x off); resample the raster to about {config.gsd_m:g} m, "
                       "or set allow_gsd_mismatch to run anyway")
                if options.get("allow_gsd_mismatch"):
                    warnings.append(msg)
                else:
                    problems.append(IncompatibleRasterError(msg, code="gsd_mismatch"))
            elif not lo <= gsd <= hi:
                warnings.append(f"the raster's pixel size {gsd:.3g} m is outside the model's range {lo:g}-{hi:g} m; "
                                "results may be poor")
        dtype = src.dtypes[0]
        if dtype != config.input_dtype and dtype in SUPPORTED_DTYPES:
            warnings.append(f"the raster is {dtype} but the model's statistics are for {config.input_dtype}; "
                            "values are used as they are")
        win, aoi, errs = _window(src, options.get("bbox"), options.get("aoi"))
        problems += errs
        if win is not None and int(win.width) * int(win.height) > MAX_WINDOW_PIXELS:
            # checked before anything is allocated: the output's tile index alone grows with the pixel count
            problems.append(IncompatibleRasterError(
                f"{path} is {int(win.width)} x {int(win.height)} px in the processed area, more than the "
                f"{MAX_WINDOW_PIXELS:.0e} px one job may cover; pass a bbox option to process a part of it, "
                "or split the raster (gdal_retile.py)", code="raster_too_large"))
        # A truncated file opens fine and fails on read: read the last row of the window now.
        if win is not None and bands and not problems:
            try:
                src.read(bands, window=Window(win.col_off, win.row_off + win.height - 1, win.width, 1))
            except (RasterioIOError, rasterio.errors.RasterioError) as exc:
                problems.append(RasterReadError(f"{path} is damaged: reading its last rows failed "
                                                f"({_short(exc)}); re-export or re-download it"))
        if problems:
            return None, problems, warnings
        nodata = src.nodatavals[bands[0] - 1]
        plan = RasterPlan(path=str(path), bands=bands, window=win, width=src.width, height=src.height,
                          dtype=dtype, crs_wkt=src.crs.to_wkt(), transform=src.transform, gsd_m=gsd,
                          nodata=None if nodata is None or (isinstance(nodata, float) and np.isnan(nodata))
                          else float(nodata), warnings=warnings, aoi=aoi)
        return plan, [], warnings


def plan_raster(config: PackageConfig, path: str, options: dict | None = None) -> RasterPlan:
    """Like :func:`inspect_raster` but raises the first problem."""
    plan, problems, _ = inspect_raster(config, path, options)
    if problems or plan is None:
        raise problems[0] if problems else RasterReadError(f"{path} could not be planned; check the file")
    return plan
