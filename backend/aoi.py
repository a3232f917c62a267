"""Areas of interest: ``options.aoi`` polygons that limit a job to their shapes, not their bounding box.

* :func:`parse_aoi` validates the GeoJSON (Polygon, MultiPolygon, Feature or FeatureCollection of those, in
  the raster's CRS) into an :class:`Aoi`: every problem is answered with what to change.
* :class:`AoiGrid` is the AOI in pixel coordinates of the processing window. The engine asks it which tiles
  overlap the AOI (:meth:`AoiGrid.overlaps`, geometric, vectorised: the others are not run at all) and for the
  inside mask of a read window (:meth:`AoiGrid.mask`, ``rasterio.features.rasterize`` of the AOI clipped to
  that window, pixel-centre rule), so no raster-sized mask is ever held in memory.
* :func:`run_polygon_classification` gives each AOI feature one scene class (``classify_per: "polygon"``).

Why geometric tile tests are safe: a pixel whose centre lies in the AOI has its square overlapping the AOI, so
a tile whose box does not overlap the AOI (with positive area) holds no inside pixel; skipping it changes
no output pixel inside the AOI.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from rasterio.windows import Window

from backend.errors import BadRequestError

MAX_AOI_VERTICES = 50_000  # a 1 MB request body holds about this many vertices anyway
MAX_AOI_FEATURES = 10_000
_FIX_HINT = ("repair it first, e.g. with QGIS Processing 'Fix geometries' (native:fixgeometries), then select "
             "the fixed polygons")


@dataclass(frozen=True)
class AoiFeature:
    """One polygon feature of the AOI: ``fid`` (the caller's feature id) and its (Multi)Polygon in raster CRS."""

    fid: Any
    geom: Any  # shapely Polygon or MultiPolygon


@dataclass
class Aoi:
    """The validated AOI: its features and their union (raster CRS)."""

    features: list[AoiFeature]
    geom: Any  # union of the features' geometries (shapely)
    vertices: int
    digest: str  # sha256 of the normalised geometry: part of the resume-journal fingerprint

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return tuple(float(v) for v in self.geom.bounds)  # type: ignore[return-value]

    def summary(self) -> dict[str, Any]:
        """Small description for provenance and job statistics (the geometry itself can be large)."""
        return {"polygons": len(self.features), "vertices": self.vertices,
                "bounds": [round(v, 6) for v in self.bounds], "sha256": self.digest[:16]}


def _err(msg: str, code: str = "invalid_aoi") -> BadRequestError:
    return BadRequestError(f"options.aoi: {msg}", code=code)


def _fid(feature: dict[str, Any], index: int) -> Any:
    props = feature.get("properties")
    if isinstance(props, dict) and isinstance(props.get("fid"), (int, str)) and not isinstance(props["fid"], bool):
        return props["fid"]
    fid = feature.get("id")
    if isinstance(fid, (int, str)) and not isinstance(fid, bool):
        return fid
    return index


def _geometry(obj: Any, where: str):
    """A GeoJSON geometry object -> valid shapely (Multi)Polygon, or a BadRequestError saying what is wrong."""
    import shapely
    from shapely.geometry import shape

    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise _err(f"{where} has no geometry; give a GeoJSON Polygon or MultiPolygon")
    gtype = obj["type"]
    if gtype not in ("Polygon", "MultiPolygon"):
        raise _err(f"{where} is a {gtype}, not a polygon; only Polygon and MultiPolygon geometries can limit "
                   "the processed area (buffer points or lines into polygons first)")
    if not isinstance(obj.get("coordinates"), list):
        raise _err(f"{where} has no 'coordinates' array")
    try:
        geom = shape(obj)
    except Exception as exc:  # noqa: BLE001 - shapely raises many types for malformed coordinates
        raise _err(f"{where} is not a valid GeoJSON {gtype} ({str(exc)[:200]}); each ring is a list of "
                   "[x, y] positions, closed (first = last), at least 4 positions") from None
    coords = shapely.get_coordinates(geom)
    if coords.size == 0 or geom.is_empty:
        raise _err(f"{where} is empty")
    if not np.isfinite(coords).all():
        raise _err(f"{where} has non-finite coordinates (NaN or infinity)")
    if not geom.is_valid:
        reason = shapely.is_valid_reason(geom)
        raise _err(f"{where} is an invalid geometry ({reason}); {_FIX_HINT}")
    if geom.area <= 0:
        raise _err(f"{where} has zero area")
    return geom


def parse_aoi(value: Any) -> Aoi:
    """Validate ``options.aoi``: a GeoJSON Polygon/MultiPolygon, a Feature, or a FeatureCollection of polygon
    features, in the raster's CRS. A feature's id is ``properties.fid``, else its GeoJSON ``id``, else its
    position (0-based).

    Raises:
        BadRequestError: code ``invalid_aoi`` (not a polygon, malformed, invalid geometry) or
            ``aoi_too_complex`` (more than :data:`MAX_AOI_VERTICES` vertices or :data:`MAX_AOI_FEATURES`
            features).
    """
    import shapely

    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise _err("must be a GeoJSON object: a Polygon, a MultiPolygon or a FeatureCollection of polygon "
                   "features, in the raster's CRS")
    kind = value["type"]
    if kind == "FeatureCollection":
        feats = value.get("features")
        if not isinstance(feats, list) or not feats:
            raise _err("the FeatureCollection has no features; select at least one polygon")
        if len(feats) > MAX_AOI_FEATURES:
            raise _err(f"{len(feats)} features is more than the {MAX_AOI_FEATURES} allowed; select fewer "
                       "polygons or dissolve them (native:dissolve)", code="aoi_too_complex")
    elif kind == "Feature":
        feats = [value]
    else:
        feats = [{"type": "Feature", "geometry": value, "properties": {}}]
    features: list[AoiFeature] = []
    vertices = 0
    for i, f in enumerate(feats):
        if not isinstance(f, dict) or f.get("type") != "Feature":
            raise _err(f"features[{i}] is not a GeoJSON Feature")
        fid = _fid(f, i)
        where = "the geometry" if kind not in ("FeatureCollection", "Feature") else f"feature {fid!r}"
        geom = _geometry(f.get("geometry"), where)
        vertices += int(shapely.get_num_coordinates(geom))
        if vertices > MAX_AOI_VERTICES:
            raise _err(f"the polygons have more than {MAX_AOI_VERTICES} vertices; simplify them (QGIS Processing "
                       "'Simplify', native:simplifygeometries, with a tolerance of about one pixel) or select "
                       "fewer polygons", code="aoi_too_complex")
        features.append(AoiFeature(fid, geom))
    geoms = [f.geom for f in features]
    try:
        union = shapely.union_all(geoms) if len(geoms) > 1 else geoms[0]
    except shapely.errors.GEOSException as exc:
        raise _err(f"the polygons cannot be merged ({str(exc)[:200]}); {_FIX_HINT}") from None
    digest = hashlib.sha256(b"".join(shapely.to_wkb(g) for g in geoms)
                            + json.dumps([f.fid for f in features], default=str).encode()).hexdigest()
    return Aoi(features=features, geom=union, vertices=vertices, digest=digest)


# -- the AOI on the pixel grid ---------------------------------------------------------------------------

def to_pixels(geom, transform):
    """``geom`` (CRS) in pixel coordinates (col, row) of the grid with affine ``transform``."""
    from shapely.affinity import affine_transform

    inv = ~transform
    return affine_transform(geom, [inv.a, inv.b, inv.d, inv.e, inv.c, inv.f])


def mask_window(geom_px, col: int, row: int, height: int, width: int) -> np.ndarray:
    """Boolean ``height x width`` mask of the pixels (centre rule) of the window at ``(row, col)`` that lie in
    ``geom_px`` (pixel coordinates of the same grid). Only the part of the geometry in the window is burnt."""
    import shapely
    from affine import Affine
    from rasterio.features import rasterize

    box = shapely.box(col, row, col + width, row + height)
    if geom_px.contains(box):
        return np.ones((height, width), dtype=bool)
    if not geom_px.intersects(box) or geom_px.touches(box):
        return np.zeros((height, width), dtype=bool)
    part = geom_px.intersection(box)
    if part.is_empty:
        return np.zeros((height, width), dtype=bool)
    out = rasterize([part], out_shape=(height, width), transform=Affine.translation(col, row), fill=0,
                    default_value=1, dtype="uint8")
    return out.astype(bool)


def overlaps_boxes(geom_px, rows0, cols0, rows1, cols1) -> np.ndarray:
    """For boxes given by arrays of pixel spans, whether each shares area with ``geom_px`` (not only a border)."""
    import shapely

    boxes = shapely.box(np.asarray(cols0, dtype=float), np.asarray(rows0, dtype=float),
                        np.asarray(cols1, dtype=float), np.asarray(rows1, dtype=float))
    boxes = np.atleast_1d(boxes)
    if boxes.size == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(shapely.intersects(geom_px, boxes) & ~shapely.touches(geom_px, boxes), dtype=bool)


class AoiGrid:
    """The AOI in pixel coordinates of a processing window (``window_transform``)."""

    def __init__(self, aoi: Aoi, window_transform) -> None:
        import shapely

        self.aoi = aoi
        self.geom_px = to_pixels(aoi.geom, window_transform)
        shapely.prepare(self.geom_px)

    def overlaps(self, rows0, cols0, rows1, cols1) -> np.ndarray:
        """Which boxes (window pixels, half-open spans) share area with the AOI: the tiles worth running."""
        return overlaps_boxes(self.geom_px, rows0, cols0, rows1, cols1)

    def mask(self, win: Window) -> np.ndarray:
        """Inside-the-AOI mask of ``win`` (window pixels), ``h x w`` bool."""
        return mask_window(self.geom_px, int(win.col_off), int(win.row_off), int(win.height), int(win.width))


# -- one scene class per polygon ---------------------------------------------------------------------------

def polygon_tile_origins(lo: float, hi: float, tile: int, stride: int, length: int) -> list[int]:
    """Tile start offsets along one axis covering the span ``[lo, hi)`` (pixels) of a raster ``length`` long.

    A span of at most one tile gets one tile centred on it; a longer span gets the regular grid with
    ``stride`` (the last tile ending at the span's end). Tiles are shifted to stay on the raster.
    """
    from backend.engine import tile_origins

    last = max(0, length - tile)
    lo_i, hi_i = max(0, math.floor(lo)), min(length, math.ceil(hi))
    span = hi_i - lo_i
    if span <= tile:
        centre = (lo + hi) / 2
        return [int(min(max(0, round(centre - tile / 2)), last))]
    return sorted({int(min(lo_i + o, last)) for o in tile_origins(span, tile, stride)})


def plan_polygon_tiles(aoi: Aoi, transform, width: int, height: int, tile: int, stride: int
                       ) -> tuple[list[tuple[int, Any, list[tuple[int, int]]]], int]:
    """Tiles (raster pixels) to classify each AOI feature from.

    Returns ``([(feature index, geometry in raster pixels, [(row, col), ...]), ...], tiles skipped)``: tiles of
    a feature's bounding grid that do not overlap the feature (e.g. between the parts of a MultiPolygon) are
    dropped and counted as skipped.
    """
    import shapely

    plans = []
    skipped = 0
    for i, f in enumerate(aoi.features):
        g = to_pixels(f.geom, transform)
        shapely.prepare(g)
        c_lo, r_lo, c_hi, r_hi = g.bounds
        rows = polygon_tile_origins(r_lo, r_hi, tile, stride, height)
        cols = polygon_tile_origins(c_lo, c_hi, tile, stride, width)
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        rr, cc = rr.ravel(), cc.ravel()
        keep = overlaps_boxes(g, rr, cc, np.minimum(rr + tile, height), np.minimum(cc + tile, width))
        skipped += int((~keep).sum())
        plans.append((i, g, [(int(r), int(c)) for r, c in zip(rr[keep], cc[keep], strict=True)]))
    return plans, skipped


def run_polygon_classification(rc) -> dict[str, Any]:
    """Scene classification with one prediction per AOI feature (``options.classify_per = "polygon"``).

    Method: the model runs on the tiles covering the feature (:func:`plan_polygon_tiles`: one tile centred on
    a feature smaller than a tile, else the feature's tile grid at the job's stride); each tile's softmax
    probabilities are averaged with weight = its number of valid (not nodata) pixels inside the feature, so
    a tile mostly outside the polygon counts little. A feature with no valid pixel gets no prediction (a
    warning names it). Writes the feature's own geometry (raster CRS) with ``source_fid``, the top-3 classes
    and all class probabilities (JSON), plus the provenance fields of every RSFM vector output.

    Resumable like every sparse task: each batch's tile probabilities and weights are journalled
    (:func:`backend.tasks._sparse_journal`), and a resumed job runs only the batches the journal lacks.
    """
    from backend.engine import _pad_to
    from backend.outputs import VectorWriter
    from backend.tasks import NO_VALID_PIXELS, _finish_vector, _sparse_journal, scene_probabilities

    spec, cfg = rc.spec, rc.spec.config
    plan, params = spec.plan, spec.params
    aoi: Aoi = plan.aoi
    t = params.tile_size_px
    k = len(cfg.classes)
    plans, skipped = plan_polygon_tiles(aoi, plan.transform, plan.width, plan.height, t, params.stride)
    rc.source.tiles_skipped += skipped
    w0 = plan.window
    work = [(fi, g, r, c) for fi, g, tiles in plans for r, c in tiles]
    total = len(work)
    batches = [work[b: b + params.batch_size] for b in range(0, total, params.batch_size)]
    # per batch: each tile's probabilities and weight (journalled, for resume); the work list follows from the
    # fingerprinted request (aoi hash, raster, tiling), so a resumed job indexes the same batches
    bj, _ = _sparse_journal(rc, "polygon-scenes-v1", batches)
    skip = set(bj.resumed)
    done = sum(len(batches[i]) for i in skip)
    rc.progress(done, total)
    for bi, batch in enumerate(batches):
        if bi in skip:
            continue
        xs, xas, ws = [], [], []
        for _fi, g, r, c in batch:
            h, w = min(t, plan.height - r), min(t, plan.width - c)
            # source windows are relative to the processing window; the tile may reach outside it
            x, xa, valid = rc.source.read(Window(c - int(w0.col_off), r - int(w0.row_off), w, h))
            inside = mask_window(g, c, r, h, w)
            ws.append(float((valid & inside).sum()))
            xs.append(_pad_to(x, t))
            if xa is not None:
                xas.append(_pad_to(xa, t))
        args = [np.stack(xs)] + ([np.stack(xas)] if xas else [])
        bj.add(bi, {"prob": scene_probabilities(rc, args, len(batch)), "weight": np.asarray(ws, np.float64)})
        done += len(batch)
        rc.progress(done, total)
    bj.flush()

    # every batch's record (journalled or new) in batch order: a resumed job sums exactly as an uninterrupted one
    prob_sum = np.zeros((len(aoi.features), k), dtype=np.float64)
    weight = np.zeros(len(aoi.features), dtype=np.float64)
    n_tiles = np.zeros(len(aoi.features), dtype=np.int64)
    for bi, rec in bj.records():
        for (fi, _g, _r, _c), p, wt in zip(batches[bi], rec["prob"], rec["weight"].tolist(), strict=True):
            prob_sum[fi] += wt * p
            weight[fi] += wt
            n_tiles[fi] += 1

    fids = [f.fid for f in aoi.features]
    fid_type = np.int64 if all(isinstance(v, int) for v in fids) else object
    fields: dict[str, Any] = {"source_fid": fid_type, "class_id": np.int32, "class_name": object,
                              "score": np.float64}
    for n in (2, 3):
        fields.update({f"class_name_{n}": object, f"score_{n}": np.float64})
    fields.update(probabilities=object, tiles=np.int32, pixels=np.int64)
    gpkg_tmp, gpkg_final = rc.out.reserve("", "gpkg")
    layer = "polygon_scenes"
    vw = VectorWriter(gpkg_tmp, layer, plan.crs_wkt, fields, rc.provenance, geometry_type="MultiPolygon")
    counts = np.zeros(k, dtype=np.int64)
    empty = []
    for fi, f in enumerate(aoi.features):
        if weight[fi] <= 0:
            empty.append(f.fid)
            continue
        p = prob_sum[fi] / weight[fi]
        order = np.argsort(-p, kind="stable")
        vals: dict[str, Any] = {"source_fid": f.fid if fid_type is object else int(f.fid),
                                "class_id": int(order[0]), "class_name": cfg.classes[order[0]].name,
                                "score": float(p[order[0]]), "tiles": int(n_tiles[fi]), "pixels": int(weight[fi])}
        for n in (2, 3):
            if len(order) >= n:
                vals[f"class_name_{n}"] = cfg.classes[order[n - 1]].name
                vals[f"score_{n}"] = float(p[order[n - 1]])
            else:
                vals[f"class_name_{n}"], vals[f"score_{n}"] = "", float("nan")
        vals["probabilities"] = json.dumps({c.name: round(float(q), 6) for c, q in zip(cfg.classes, p,
                                                                                        strict=True)})
        vw.add(f.geom, **vals)
        counts[order[0]] += 1
    if empty:
        shown = ", ".join(str(v) for v in empty[:10]) + (" ..." if len(empty) > 10 else "")
        rc.job.warn(f"{len(empty)} polygon(s) cover no valid pixel of the raster and got no class (fid {shown})")
    if vw.count == 0:
        rc.job.warn(NO_VALID_PIXELS)
    out = _finish_vector(rc, vw, gpkg_final, layer, f"{spec.entry.id} scenes per polygon")
    return {"outputs": [out], "stats": {"polygons": len(aoi.features), "classified": vw.count, "tiles": total,
                                        "classes": [{"class_id": i, "class_name": c.name, "polygons": int(counts[i])}
                                                    for i, c in enumerate(cfg.classes)]}}
