"""Fact sheet: deterministic, numbered facts about one raster, built from perception OUTPUT files.

Everything the chat may state as a number, count, area, class or box comes from here (CHAT_DESIGN §6.1).
The language model only phrases facts and cites their IDs (``[F12]``); :mod:`backend.chat.verifier`
checks every number and class it writes against :class:`FactSheet`.

Inputs (all optional except the raster):

* ``raster`` — the source image (GeoTIFF or anything rasterio opens): CRS, geotransform, size, bands,
  acquisition date (GDAL tags ``TIFFTAG_DATETIME`` / ``ACQUISITIONDATETIME`` / ``DATE``).
* outputs of the perception jobs, each a :class:`PerceptionOutput`:

  - ``semantic_segmentation``: a class-index GeoTIFF (band 1, uint8, colour table). Class names come from
    ``classes``, the raster's ``classes`` / ``class_names`` tag (JSON list), band-1 tags ``CLASS_<i>``
    (what ``backend.outputs`` writes), or a sibling ``.qml`` paletted style
    (``<paletteEntry value=.. label=..>``), in that order.
  - ``object_detection`` / ``rotated_detection`` / ``instance_segmentation``: a GeoPackage layer of
    polygons with fields ``class_name`` and ``score`` (other fields are ignored). The detector's full class
    list (so absent classes count as 0) comes from ``classes``, the layer metadata key ``classes``, or the
    sibling ``.qml`` categorized style (categories on ``class_id`` labelled with class names).
  - ``scene_classification``: a GeoPackage layer of tile polygons with ``class_name`` and ``score``.
  - ``change_detection``: the change map of this raster against a second image (``other_raster``, earlier or
    later): a class-index GeoTIFF with class 0 = no change (``backend.outputs`` writes it on the earlier
    image's grid, possibly in another CRS) and/or its GeoPackage of change polygons (layer ``changes``, field
    ``class_name``), one polygon per connected changed region. The raster gives the changed share and area,
    the polygons the change regions ``C1``, ``C2``, ... (largest first) with boxes and coordinates.

Units: areas in km² (m² below 0.01 km²), distances in metres, GSD in metres per pixel, pixel boxes
``[x0, y0, x1, y1]`` in pixel columns/rows of the source raster (origin top-left), map coordinates in the
raster's CRS (and WGS84 lon/lat where the CRS is known).
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import BadRequestError

log = logging.getLogger(__name__)

SEGMENTATION = "semantic_segmentation"
OBJECT_TASKS = ("object_detection", "rotated_detection", "instance_segmentation")
SCENE = "scene_classification"
CHANGE = "change_detection"
TASKS = (SEGMENTATION, *OBJECT_TASKS, SCENE, CHANGE)
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img")


class FactSheetError(BadRequestError):
    """An input to the fact sheet cannot be read; the message says which and how to fix it (400)."""

    code = "bad_chat_input"


@dataclass
class Fact:
    """One numbered fact.

    Attributes:
        id: ``"F7"``.
        kind: ``meta``, ``landcover``, ``count``, ``object``, ``relation``, ``scene``, ``absent``, ``change``
            (changed share / area / number of regions) or ``change_region`` (one region, ID ``C1``..).
        text: one line, exactly the wording shown to the LM (numbers already rounded).
        values: every number stated in ``text`` (after rounding), for the verifier.
        classes: class names this fact is about (normalised, see :func:`norm_class`).
        data: machine-readable payload (e.g. ``{"class": "ship", "count": 3}``).
        geometry: GeoJSON geometry in the raster CRS for facts the plugin can draw (objects), else None.
    """

    id: str
    kind: str
    text: str
    values: list[float] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    geometry: dict | None = None


@dataclass
class PerceptionOutput:
    """One perception output file.

    Args:
        path: GeoTIFF (segmentation) or GeoPackage (objects / scene tiles).
        task: one of :data:`TASKS`; inferred from the suffix when None (``.tif`` → segmentation,
            ``.gpkg`` → object_detection).
        layer: GeoPackage layer name (first layer when None).
        classes: the model's full class list in index order; lets the sheet say "0 ships detected"
            (a detector that knows ships found none) instead of "cannot tell".
        model: model id for provenance.
        other_raster: for ``change_detection``: the second image the change was detected against.
        other_is_later: for ``change_detection``: True when ``other_raster`` is the later image.
    """

    path: str
    task: str | None = None
    layer: str | None = None
    classes: list[str] | None = None
    model: str | None = None
    other_raster: str | None = None
    other_is_later: bool = True

    def resolved_task(self) -> str:
        if self.task:
            if self.task not in TASKS:
                raise FactSheetError(f"unknown task {self.task!r} for {self.path}; use one of {', '.join(TASKS)}")
            return self.task
        if self.is_raster():
            return SEGMENTATION
        if Path(self.path).suffix.lower() in (".gpkg", ".geojson", ".shp", ".fgb"):
            return "object_detection"
        raise FactSheetError(f"cannot infer the task of {self.path}; pass task= one of {', '.join(TASKS)}")

    def is_raster(self) -> bool:
        return Path(self.path).suffix.lower() in RASTER_SUFFIXES


# fact, object and change-region IDs: "F12", "[F12]", "O3", "C2" (never read as numbers)
ID_PATTERN = r"\[?\b[FOC]\d+\]?"
# dates and times ("2025:06:01 10:00:00", "2025-06-01"): checked as whole dates by the verifier, not as numbers
# (else "10% changed" would be supported by the 10 o'clock of an acquisition time)
DATE_PATTERN = r"\b\d{4}[-:/.]\d{1,2}[-:/.]\d{1,2}(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?"


# number words the verifier reads as numbers (from "two" on: "one" and "zero" are too often not counts)
WORD_NUMBERS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
                "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20}


def dates_in(text: str) -> list[str]:
    """Every date written in ``text`` as ``YYYYMMDD`` (times dropped): ``2025:06:01 10:00:00`` → ``20250601``."""
    return ["{}{:0>2}{:0>2}".format(*re.split(r"[-:/.]", re.split(r"[ T]", m.group(0))[0])[:3])
            for m in re.finditer(DATE_PATTERN, text)]


def norm_class(name: str) -> str:
    """Canonical class key: lower case, ``_``/``-`` → space, trailing plural removed.

    ``"Storage_Tanks"`` → ``"storage tank"``; ``"ships"`` → ``"ship"``.
    """
    s = re.sub(r"[_\-]+", " ", name.strip().lower())
    s = re.sub(r"\s+", " ", s)
    words = s.split(" ")
    last = words[-1]
    if len(last) > 3 and not last.endswith("ss"):
        if last.endswith("ies"):
            last = last[:-3] + "y"
        elif last.endswith(("ches", "shes", "xes", "sses")):
            last = last[:-2]
        elif last.endswith("s") and not last.endswith("us"):
            last = last[:-1]
    words[-1] = last
    return " ".join(words)


def display_class(name: str) -> str:
    """Human wording of a class name: ``storage_tank`` → ``storage tank``."""
    return re.sub(r"[_\-]+", " ", name.strip())


def plural_class(name: str, n: int = 2) -> str:
    """:func:`display_class` in the plural unless ``n == 1``: ``storage_tank`` → ``storage tanks``, ``bus`` →
    ``buses`` (English -s / -es only; the class names of the bundled models need nothing more)."""
    c = display_class(name)
    if n == 1:
        return c
    return c + ("es" if c.endswith(("s", "ch", "sh", "x")) else "s")


def fmt_num(x: float, digits: int = 3) -> str:
    """Round to ``digits`` significant digits, no exponent, no trailing zeros (``0.0123``, ``1230``)."""
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    mag = int(math.floor(math.log10(abs(x))))
    dec = max(0, digits - 1 - mag)
    s = f"{round(x, dec):.{dec}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def numbers_in(text: str) -> list[float]:
    """Every number written in ``text`` except fact/object/region IDs (``F12``, ``O3``, ``C2``) and CRS codes;
    number words from "two" on count too, as the verifier reads them ("spread over all four quarters")."""
    text = re.sub(ID_PATTERN, " ", text)
    text = re.sub(DATE_PATTERN, " ", text)
    text = re.sub(r"EPSG:\d+", " ", text)
    words = [float(v) for w, v in WORD_NUMBERS.items() if v >= 2 and re.search(rf"\b{w}\b", text, re.I)]
    return [float(m.replace(",", "")) for m in re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)] + words


@dataclass
class RasterInfo:
    path: str
    width_px: int
    height_px: int
    band_count: int
    band_names: list[str]
    crs: str | None  # authority id ("EPSG:32640") or WKT, None when ungeoreferenced
    crs_is_geographic: bool
    transform: tuple[float, ...]  # affine a, b, c, d, e, f of the full raster
    gsd_m: float | None
    date: str | None
    window: tuple[int, int, int, int]  # col_off, row_off, width, height of the area asked about


def _gsd_m(transform, crs, height_px: int) -> float | None:
    if crs is None:
        return None
    res_x, res_y = abs(transform.a), abs(transform.e)
    if crs.is_geographic:
        lat = transform.f + transform.e * height_px / 2
        return float(math.sqrt((res_x * 111_320 * math.cos(math.radians(lat))) * (res_y * 110_540)))
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    return float(math.sqrt(res_x * res_y) * factor)


def read_raster_info(path: str, bbox: list[float] | None = None, gsd_m: float | None = None) -> RasterInfo:
    """Metadata of ``path`` and the pixel window covering ``bbox`` (raster CRS; whole raster if None)."""
    import rasterio
    from rasterio.windows import Window, from_bounds

    if not Path(path).exists():
        raise FactSheetError(f"raster {path} does not exist; pass the path of the selected layer's file")
    with rasterio.open(path) as src:
        crs = src.crs
        date = _raster_date(src.tags())
        names = [d or f"band {i + 1}" for i, d in enumerate(src.descriptions)]
        if bbox is not None:
            if len(bbox) != 4:
                raise FactSheetError(f"bbox must be [minx, miny, maxx, maxy] in the raster CRS, got {bbox}")
            from rasterio.errors import WindowError

            try:
                win = from_bounds(*bbox, transform=src.transform).round_offsets().round_lengths()
                win = win.intersection(Window(0, 0, src.width, src.height))
            except WindowError:
                win = Window(0, 0, 0, 0)
            window = (int(win.col_off), int(win.row_off), int(win.width), int(win.height))
            if window[2] <= 0 or window[3] <= 0:
                raise FactSheetError(f"bbox {bbox} does not overlap raster {path} (bounds {tuple(src.bounds)})")
        else:
            window = (0, 0, src.width, src.height)
        georef = crs is not None and not src.transform.is_identity
        return RasterInfo(
            path=str(path), width_px=src.width, height_px=src.height, band_count=src.count, band_names=names,
            crs=(crs.to_string() if georef else None), crs_is_geographic=bool(georef and crs.is_geographic),
            transform=tuple(src.transform)[:6],
            gsd_m=gsd_m if gsd_m is not None else (_gsd_m(src.transform, crs, src.height) if georef else None),
            date=date, window=window,
        )


# ----------------------------------------------------------------------------------------------- readers


# A QGIS style file is XML; we only need the attributes of a few empty elements (<paletteEntry .../>,
# <category .../>) that backend.outputs writes on one line each. Scanning them with a regex instead of an XML
# parser means no DTD, no entity expansion and no external references can ever be processed (the reason
# bandit flags xml.etree), and defusedxml is not a dependency.
_QML_MAX_BYTES = 4 << 20
_XML_ATTR = re.compile(r'([A-Za-z_][\w.-]*)\s*=\s*(?:"([^"]*)"|\'([^\']*)\')')


def _qml_elements(qml: Path, tag: str) -> list[dict[str, str]]:
    """Attributes of every ``<tag .../>`` element of a QGIS style file, values unescaped.

    Returns [] for a file that is too big or declares entities (our backend never writes those; the usual
    ``<!DOCTYPE qgis ...>`` line of QGIS styles is fine: nothing here ever reads a DTD).
    """
    if qml.stat().st_size > _QML_MAX_BYTES:
        log.warning("ignoring %s: larger than %d bytes, not a style file written by RSFM", qml, _QML_MAX_BYTES)
        return []
    text = qml.read_text(encoding="utf-8", errors="replace")
    if "<!ENTITY" in text:
        log.warning("ignoring %s: it declares XML entities, which RSFM style files never do", qml)
        return []
    out = []
    for m in re.finditer(rf"<{re.escape(tag)}\b([^<>]*?)/?>", text):
        out.append({k: html.unescape(v1 or v2)
                    for k, v1, v2 in _XML_ATTR.findall(m.group(1))})
    return out


def _qml_labels(tif: Path) -> dict[int, str]:
    """Class labels of a class raster from its sibling ``.qml`` (palette entries ``value`` -> ``label``)."""
    qml = tif.with_suffix(".qml")
    if not qml.exists():
        return {}
    return {int(e["value"]): e["label"] for e in _qml_elements(qml, "paletteEntry")
            if e.get("label") and e.get("value", "").lstrip("-").isdigit()}


def segmentation_histograms(out: PerceptionOutput, info: RasterInfo, chunk_rows: int = 512, aoi: Any = None
                            ) -> tuple[list[str], np.ndarray]:
    """Pixel counts per class per quadrant of the asked window (only pixels inside ``aoi`` when given: a
    shapely polygon in the raster's CRS; pixel-centre rule, rasterised chunk by chunk).

    Returns:
        (class_names, counts) with ``counts`` of shape ``4 x K`` (quadrants NW, NE, SW, SE), int64.
        Read in row chunks so memory stays bounded for big rasters.
    """
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.windows import Window

    path = Path(out.path)
    what, job = ("change map", "change detection") if out.task == CHANGE else ("segmentation output", "segmentation")
    if not path.exists():
        raise FactSheetError(f"{what} {path} does not exist; run the {job} job first")
    with rasterio.open(path) as src:
        georef = info.crs is not None and src.crs is not None and not src.transform.is_identity
        if georef:
            # the output may cover only the job's bbox, and a change map lies on the earlier image's grid
            # (maybe another CRS): locate the asked area in the output's own grid
            from rasterio.warp import transform_bounds
            from rasterio.windows import from_bounds

            tf = Affine(*info.transform)
            c0, r0, w0, h0 = info.window
            (x0, y1), (x1, y0) = tf @ (c0, r0 + h0), tf @ (c0 + w0, r0)
            bounds = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            if CRS.from_string(info.crs) != src.crs:
                bounds = transform_bounds(CRS.from_string(info.crs), src.crs, *bounds)
            win = from_bounds(*bounds, transform=src.transform)
            try:
                win = win.round_offsets().round_lengths().intersection(Window(0, 0, src.width, src.height))
            except Exception as e:  # WindowError: the output does not cover the asked area
                raise FactSheetError(f"{what} {path} does not cover the asked area; run the {job} on this "
                                     "extent") from e
            window = (int(win.col_off), int(win.row_off), int(win.width), int(win.height))
        elif (src.width, src.height) == (info.width_px, info.height_px):
            window = info.window
        else:
            raise FactSheetError(
                f"{what} {path} is {src.width}x{src.height} px, has no georeference, and the raster "
                f"is {info.width_px}x{info.height_px}; pass the output made from this raster")
        names = list(out.classes or [])
        if not names:
            tag = src.tags().get("classes") or src.tags().get("class_names")
            if tag:
                names = list(json.loads(tag))
        if not names:  # backend.outputs.ClassRasterWriter: band-1 tags CLASS_0, CLASS_1, ...
            band = {int(k[6:]): v for k, v in src.tags(1).items() if k.startswith("CLASS_") and k[6:].isdigit()}
            if band:
                names = [band.get(i, f"class_{i}") for i in range(max(band) + 1)]
        labels = _qml_labels(path) if not names else {}
        nodata = src.nodata
        col0, row0, w, h = window
        mid_c, mid_r = col0 + w // 2, row0 + h // 2
        aoi_px = None
        if aoi is not None:
            from backend.aoi import mask_window, to_pixels

            if georef and CRS.from_string(info.crs) != src.crs:
                aoi = _reproject([aoi], CRS.from_string(info.crs), src.crs)[0]
            aoi_px = to_pixels(aoi, src.transform if georef else Affine(*info.transform))
        hist: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(4)]
        for r in range(row0, row0 + h, chunk_rows):
            rows = min(chunk_rows, row0 + h - r)
            a = src.read(1, window=Window(col0, r, w, rows))
            rr = np.arange(r, r + rows)[:, None]
            cc = np.arange(col0, col0 + w)[None, :]
            quad = (rr >= mid_r).astype(np.int64) * 2 + (cc >= mid_c)
            valid = np.ones_like(a, bool) if nodata is None else a != nodata
            if aoi_px is not None:
                valid &= mask_window(aoi_px, col0, r, rows, w)
            for q in range(4):
                sel = a[valid & (quad == q)].astype(np.int64)
                b = np.bincount(sel, minlength=len(hist[q]))
                hist[q] = np.pad(hist[q], (0, max(0, len(b) - len(hist[q])))) + b
        k = max(max(len(x) for x in hist), len(names), (max(labels) + 1) if labels else 0)
        counts = np.stack([np.pad(x, (0, k - len(x))) for x in hist])
    if not names:
        names = [labels.get(i, f"class_{i}") for i in range(k)]
    if len(names) < k:
        raise FactSheetError(f"{path} holds class index {k - 1} but only {len(names)} class names were given")
    return names[:k] if len(names) > k else names, counts


@dataclass
class DetectedObject:
    cls: str
    score: float
    geometry: Any  # shapely geometry in the raster CRS (or pixel space when ungeoreferenced)
    task: str


def read_objects(out: PerceptionOutput, to_crs: str | None = None) -> list[DetectedObject]:
    """Features of a detection / instance / scene / change GeoPackage layer (fields ``class_name``, ``score``).

    Geometries are reprojected to ``to_crs`` when the layer is in another CRS (a change map's polygons lie
    in the earlier image's CRS). Features without ``score`` get 1.0.
    """
    import pyogrio
    import shapely

    path = Path(out.path)
    if not path.exists():
        raise FactSheetError(f"vector output {path} does not exist; run the job first or fix the path")
    try:
        _meta, _fids, geoms, fields = pyogrio.raw.read(str(path), layer=out.layer)
    except Exception as e:  # pyogrio raises DataSourceError / DataLayerError
        raise FactSheetError(f"cannot read layer {out.layer!r} of {path}: {e}") from e
    names = list(_meta["fields"])
    if "class_name" not in names:
        raise FactSheetError(f"{path} layer {out.layer!r} has no 'class_name' field (fields: {names})")
    if not out.classes:
        out.classes = _vector_classes(path, out.layer)
    cls = fields[names.index("class_name")]
    score = fields[names.index("score")] if "score" in names else np.ones(len(cls))
    shapes = shapely.from_wkb(geoms)
    if to_crs and _meta.get("crs") and len(shapes):
        from rasterio.crs import CRS

        src_crs, dst_crs = CRS.from_user_input(_meta["crs"]), CRS.from_string(to_crs)
        if src_crs != dst_crs:
            shapes = _reproject(list(shapes), src_crs, dst_crs)
    return [DetectedObject(str(c), float(s), g, out.resolved_task())
            for c, s, g in zip(cls, score, shapes, strict=True) if g is not None]


def _reproject(geoms: list, src_crs: Any, dst_crs: Any) -> list:
    """Shapely geometries from ``src_crs`` to ``dst_crs`` in one call (None entries stay None)."""
    import shapely
    from rasterio.warp import transform_geom

    keep = [i for i, g in enumerate(geoms) if g is not None]
    out = list(geoms)
    if keep:
        moved = transform_geom(src_crs, dst_crs, [shapely.geometry.mapping(geoms[i]) for i in keep])
        for i, g in zip(keep, moved, strict=True):
            out[i] = shapely.geometry.shape(g)
    return out


def _vector_classes(path: Path, layer: str | None) -> list[str] | None:
    """The detector's full class list for a vector output, so absent classes can be reported as 0.

    Looked up in the layer's metadata key ``classes`` (JSON list), then in the dataset metadata, then in a
    sibling ``.qml`` categorized style (``<category value=...>``). None when none of these exist.
    """
    import pyogrio

    try:
        meta = pyogrio.read_info(str(path), layer=layer)
        for md in (meta.get("layer_metadata") or {}, meta.get("dataset_metadata") or {}):
            if md.get("classes"):
                return [str(c) for c in json.loads(md["classes"])]
    except Exception as e:  # metadata is optional; a malformed entry must not hide the objects themselves
        log.warning("ignoring unreadable class metadata of %s: %s", path, e)
    qml = path.with_suffix(".qml")
    if qml.exists():
        cats = [(e["value"], e.get("label") or e["value"]) for e in _qml_elements(qml, "category")
                if e.get("value")]
        if cats and all(v.isdigit() for v, _ in cats):  # categories on class_id (backend.outputs.vector_qml)
            return [label for _, label in sorted(cats, key=lambda c: int(c[0]))]
        return [label for _, label in cats] or None
    return None


def read_coco_objects(annotations: dict, image_id: int, score: float = 1.0) -> list[DetectedObject]:
    """Ground-truth objects of one COCO image as :class:`DetectedObject` in pixel space (for evaluation)."""
    import shapely

    cats = {c["id"]: c["name"] for c in annotations["categories"]}
    objs = []
    for a in annotations["annotations"]:
        if a["image_id"] == image_id:
            x, y, w, h = a["bbox"]
            objs.append(DetectedObject(cats[a["category_id"]], score, shapely.box(x, y, x + w, y + h),
                                       "object_detection"))
    return objs


def coco_class_counts(annotations: dict) -> dict[int, dict[str, int]]:
    """Per-class ground-truth counts of every COCO image, ``{image_id: {class name: count}}``, in one pass over
    the annotations (images without objects are absent)."""
    cats = {c["id"]: c["name"] for c in annotations["categories"]}
    out: dict[int, dict[str, int]] = {}
    for a in annotations["annotations"]:
        per = out.setdefault(a["image_id"], {})
        per[cats[a["category_id"]]] = per.get(cats[a["category_id"]], 0) + 1
    return out


# ------------------------------------------------------------------------------------------- the sheet


QUADRANTS = ("north-west", "north-east", "south-west", "south-east")


@dataclass
class FactSheet:
    """Numbered facts plus the vocabulary the verifier needs.

    Attributes:
        facts: in ID order (``F1`` first).
        known_classes: normalised class name → display name, for every class some model can output
            (present or not).
        present_classes: normalised names with at least one object above threshold or >0 area.
        score_threshold: objects below it were not counted.
    """

    facts: list[Fact]
    known_classes: dict[str, str]
    present_classes: set[str]
    score_threshold: float
    info: RasterInfo | None = None

    def by_id(self, fid: str) -> Fact | None:
        fid = fid.strip("[]")
        return next((f for f in self.facts if f.id == fid), None)

    def by_kind(self, kind: str) -> list[Fact]:
        return [f for f in self.facts if f.kind == kind]

    def for_class(self, cls: str, kind: str | None = None) -> list[Fact]:
        key = norm_class(cls)
        return [f for f in self.facts if key in f.classes and (kind is None or f.kind == kind)]

    def all_values(self) -> list[float]:
        return [v for f in self.facts for v in f.values]

    def to_text(self) -> str:
        """The full sheet, one fact per line: ``[F3] ship: 4 detected (score >= 0.3); ...``.

        This is what the user sees and what the verifier checks against.
        """
        return "\n".join(f"[{f.id}] {f.text}" for f in self.facts)

    def to_prompt_text(self) -> str:
        """The sheet rendered for the language model in few tokens, every fact ID kept.

        Same facts and IDs as :meth:`to_text`, shorter wording (:func:`compact_fact_text`): no CRS,
        map or lon/lat coordinates, nearest-neighbour distances or band counts, quarters as ``NW``..``SE``.
        Every number it shows is a number of the full fact (so an LM that copies it passes the verifier).
        On a 10-object NWPU sheet this is about half the tokens of :meth:`to_text` (docs/bench/chat.md).
        """
        return "\n".join(f"[{f.id}] {compact_fact_text(f)}" for f in self.facts)

    def to_json(self) -> dict:
        return {"facts": [asdict(f) for f in self.facts], "known_classes": sorted(self.known_classes.values()),
                "present_classes": sorted(self.known_classes.get(c, c) for c in self.present_classes),
                "score_threshold": self.score_threshold,
                "raster": asdict(self.info) if self.info else None}


_QUAD_ABBR = {"north-west": "NW", "north-east": "NE", "south-west": "SW", "south-east": "SE"}


def compact_fact_text(f: Fact) -> str:
    """Short LM wording of one fact, built from ``f.data`` (falls back to ``f.text``).

    Examples: ``Image 800 x 600 px, GSD 0.5 m/px, 0.12 km², acquired 2024-05-01``; ``land cover water 50%, 0.04 km², mostly NW``;
    ``ship: 3 (score>=0.3): 2 NW, 1 SW``; ``O1 ship 0.95 NW box 10 10 20 30``. Numbers are copied from the
    full text's rounding (``fmt_num``), never re-rounded differently.
    """
    d = f.data
    try:
        if f.kind == "meta":
            parts = [f"Image {d['width_px']} x {d['height_px']} px"]
            m = re.search(r"GSD [^;]*m/px", f.text)
            parts.append(m.group(0) if m else "GSD unknown")
            if m := re.search(r"covering ([^;.]+(?:\.\d+)?[^;.]*)", f.text):
                parts.append(m.group(1))
            if d.get("date"):
                parts.append(f"acquired {d['date']}")
            return ", ".join(parts)
        if f.kind == "landcover" and d.get("class"):
            share = re.search(r": ([\d.]+)% of the area(, [^;]+)?;", f.text)
            if not share:
                return f.text
            where = f"mostly {_QUAD_ABBR[d['quadrant']]}" if d.get("quadrant") else "spread"
            return f"land cover {d['class']} {share.group(1)}%{share.group(2) or ''}, {where}"
        if f.kind == "count" and d.get("class") is None and "count" in d:
            return f"{d['count']} objects in total (score>={fmt_num(d['threshold'])})"
        if f.kind == "count" and d.get("class"):
            q = ", ".join(f"{n} {_QUAD_ABBR.get(k, k)}" for k, n in (d.get("quadrants") or {}).items())
            fp = re.search(r"; (footprint [^;]+) in total", f.text)
            return (f"{d['class']}: {d['count']} (score>={fmt_num(d['threshold'])})"
                    + (f": {q}" if q else "") + (f"; {fp.group(1)}" if fp else ""))
        if f.kind == "absent" and "count" in d:
            thr = re.search(r">= ([\d.]+)", f.text).group(1)
            return f"0 detected (score>={thr}): {', '.join(d['classes'])}"
        if f.kind == "absent":
            return f.text.replace("Land-cover classes not found in this area", "not in land cover").rstrip(".")
        if f.kind == "object":
            box = " ".join(str(v) for v in d["pixel_box_xyxy"])
            return (f"{d['object_id']} {d['class']} {d['score']:.2f} {_QUAD_ABBR.get(d['quadrant'], d['quadrant'])}"
                    f" box {box}")
        if f.kind == "relation" and "unlisted" in d:
            return f"{d['unlisted']} more objects not listed"
        if f.kind == "change_region":
            size = re.search(r"region of ([^,]+),", f.text).group(1)
            box = " ".join(str(v) for v in d["pixel_box_xyxy"])
            return f"{d['object_id']} {d['class']} {size} {_QUAD_ABBR[d['quadrant']]} box {box}"
        if f.kind == "change":
            t = re.sub(r" \(acquired [^)]*\)| \(connected areas of changed pixels\)", "", f.text)
            t = re.sub(r"in the ((?:north|south)-(?:west|east)) quarter", r"\1", t)
            t = re.sub(r"\b(?:north|south)-(?:west|east)\b", lambda m: _QUAD_ABBR[m.group(0)], t)
            return t.replace("by quarter: ", "").rstrip(".")
        if f.kind == "scene":
            return f"scene {d['class']}: {d['tiles']} of {d['of']} tiles" + (
                f" ({m.group(1)}%)" if (m := re.search(r"\(([\d.]+)%\)", f.text)) else "")
    except (KeyError, AttributeError, TypeError):  # a fact built by other code: the full wording is safe
        return f.text
    return f.text


class _Builder:
    def __init__(self) -> None:
        self.facts: list[Fact] = []

    def add(self, kind: str, text: str, *, classes: list[str] | None = None, data: dict | None = None,
            geometry: dict | None = None) -> Fact:
        f = Fact(f"F{len(self.facts) + 1}", kind, text, numbers_in(text), [norm_class(c) for c in classes or []],
                 data or {}, geometry)
        self.facts.append(f)
        return f


def area_text(km2: float) -> str:
    return f"{fmt_num(km2)} km²" if km2 >= 0.01 else f"{fmt_num(km2 * 1e6)} m²"


def build_fact_sheet(raster: str, outputs: list[PerceptionOutput] | None = None, *, bbox: list[float] | None = None,
                     score_threshold: float = 0.3, top_n: int = 10, gsd_m: float | None = None,
                     objects: list[DetectedObject] | None = None, object_classes: list[str] | None = None,
                     aoi: Any = None) -> FactSheet:
    """Build the fact sheet of ``raster`` (restricted to ``bbox`` or ``aoi``) from perception outputs.

    Args:
        raster: path of the source raster.
        outputs: perception output files (see module docstring).
        bbox: ``[minx, miny, maxx, maxy]`` in the raster CRS, or None for the whole raster.
        aoi: a shapely (Multi)Polygon in the raster CRS (e.g. the selected polygons): shares, areas, objects
            and changes are counted inside it only (objects by their centre); replaces ``bbox``.
        score_threshold: objects with ``score < score_threshold`` are ignored (stated in the facts).
        top_n: how many objects get their own fact (highest score first).
        gsd_m: overrides the GSD derived from the geotransform (needed for ungeoreferenced images).
        objects, object_classes: already-read objects in raster CRS / pixel space and the detector's
            class list (used by the evaluation on COCO ground truth).

    Returns:
        The :class:`FactSheet`.

    Raises:
        FactSheetError: an input is missing, unreadable or does not match the raster.
    """
    import shapely
    from affine import Affine

    if aoi is not None:
        bbox = list(aoi.bounds)
    info = read_raster_info(raster, bbox, gsd_m)
    outputs = outputs or []
    b = _Builder()
    known: dict[str, str] = {}
    present: set[str] = set()
    col0, row0, w, h = info.window
    tf = Affine(*info.transform)
    inv = ~tf
    px_area_m2 = info.gsd_m**2 if info.gsd_m else None
    # m² per square unit of the geometries (CRS units, or pixels when ungeoreferenced); None: GSD unknown
    m2_per_unit2 = None
    if info.gsd_m:
        m2_per_unit2 = (info.gsd_m / abs(tf.a)) ** 2 if info.crs and info.crs_is_geographic else \
            (1.0 if info.crs else info.gsd_m**2)
    area_poly = shapely.box(*(tf @ (col0, row0 + h)), *(tf @ (col0 + w, row0))) if info.crs else \
        shapely.box(col0, row0, col0 + w, row0 + h)
    area_poly = shapely.box(*area_poly.bounds)
    asked_km2 = w * h * px_area_m2 / 1e6 if px_area_m2 else None
    if aoi is not None:
        area_poly = aoi.intersection(area_poly)
        asked_km2 = area_poly.area * m2_per_unit2 / 1e6 if m2_per_unit2 else None

    # --- metadata
    parts = [f"Image {w} x {h} px", f"{info.band_count} band(s)"]
    if info.gsd_m:
        parts.append(f"GSD {fmt_num(info.gsd_m)} m/px")
        parts.append(f"covering {area_text(w * h * px_area_m2 / 1e6)}")
    else:
        parts.append("GSD unknown (no georeference): areas in pixels only")
    if aoi is not None:
        parts.append("only inside the selected polygons" + (f", {area_text(asked_km2)}" if asked_km2 else ""))
    parts.append(f"CRS {info.crs}" if info.crs else "no CRS")
    if info.date:
        parts.append(f"acquired {info.date}")
    else:
        parts.append("acquisition date unknown")
    b.add("meta", "; ".join(parts) + ".", data={"width_px": w, "height_px": h, "bands": info.band_count,
                                                "gsd_m": info.gsd_m, "crs": info.crs, "date": info.date,
                                                "band_names": info.band_names})

    # --- land cover
    for out in outputs:
        if out.resolved_task() != SEGMENTATION:
            continue
        names, counts = segmentation_histograms(out, info, aoi=aoi)
        total = counts.sum()
        if total == 0:
            b.add("landcover", "The land-cover map has no valid pixels in this area.")
            continue
        per_class = counts.sum(0)
        for n in names:
            known[norm_class(n)] = display_class(n)
        for k in np.argsort(-per_class):
            if per_class[k] == 0:
                continue
            name = display_class(names[k])
            share = 100.0 * per_class[k] / total
            present.add(norm_class(name))
            area = f", {area_text(per_class[k] * px_area_m2 / 1e6)}" if px_area_m2 else f", {int(per_class[k])} px"
            qshare = counts[:, k] / max(1, per_class[k])
            q = int(np.argmax(qshare))
            spread = (f"mostly in the {QUADRANTS[q]} quarter ({fmt_num(100 * qshare[q])}% of it)"
                      if qshare[q] >= 0.4 else "spread over all four quarters")
            b.add("landcover", f"Land cover {name}: {fmt_num(share)}% of the area{area}; {spread}.", classes=[name],
                  data={"class": name, "share_pct": float(share), "pixels": int(per_class[k]),
                        "area_km2": float(per_class[k] * px_area_m2 / 1e6) if px_area_m2 else None,
                        "quadrant": QUADRANTS[q] if qshare[q] >= 0.4 else None})
        absent = [display_class(names[k]) for k in range(len(names)) if per_class[k] == 0]
        if absent:
            b.add("absent", f"Land-cover classes not found in this area: {', '.join(absent)}.", classes=absent)

    # --- objects and scene tiles
    objs: list[DetectedObject] = list(objects or [])
    for c in object_classes or []:
        known[norm_class(c)] = display_class(c)
    scene: list[DetectedObject] = []
    for out in outputs:
        t = out.resolved_task()
        if t in (SEGMENTATION, CHANGE):
            continue
        got = read_objects(out, info.crs)
        for c in out.classes or []:
            if t != SCENE:
                known[norm_class(c)] = display_class(c)
        got = [o for o in got if area_poly.contains(o.geometry.centroid)]
        if t == SCENE:
            scene += got
        else:
            objs += got
            for o in got:
                known.setdefault(norm_class(o.cls), display_class(o.cls))

    if scene:
        kept = [o for o in scene if o.score >= score_threshold]
        cnt: dict[str, int] = {}
        for o in kept:
            cnt[display_class(o.cls)] = cnt.get(display_class(o.cls), 0) + 1
        for name, n in sorted(cnt.items(), key=lambda kv: -kv[1]):
            b.add("scene", f"Scene type {name}: {n} of {len(kept)} tiles ({fmt_num(100 * n / len(kept))}%).",
                  classes=[name], data={"class": name, "tiles": n, "of": len(kept)})
            present.add(norm_class(name))

    def to_px(geom) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = geom.bounds
        if info.crs is None:
            return x0, y0, x1, y1
        (ca, ra), (cb, rb) = inv @ (x0, y1), inv @ (x1, y0)
        return min(ca, cb), min(ra, rb), max(ca, cb), max(ra, rb)

    def quadrant(px: tuple[float, float, float, float]) -> str:
        cx, cy = (px[0] + px[2]) / 2, (px[1] + px[3]) / 2
        return QUADRANTS[int(cy >= row0 + h / 2) * 2 + int(cx >= col0 + w / 2)]

    lonlat = _lonlat_transformer(info.crs)

    def coord_text(c) -> str:
        if not info.crs:
            return f"centre pixel ({c.x:.0f}, {c.y:.0f})"
        lonlat_txt = " (lon {:.5f}, lat {:.5f})".format(*lonlat(c.x, c.y)) if lonlat is not None else ""
        return f"centre x={c.x:.1f}, y={c.y:.1f}{lonlat_txt}"

    kept = sorted([o for o in objs if o.score >= score_threshold], key=lambda o: -o.score)
    # distances: metres when georeferenced (assumes a projected CRS in metres or converts via GSD), else px
    dist_unit = "m" if info.gsd_m else "px"

    def dist(a, c) -> float:
        d = a.geometry.centroid.distance(c.geometry.centroid)
        if info.crs and info.crs_is_geographic and info.gsd_m:
            d = d / abs(tf.a) * info.gsd_m
        elif info.crs is None and info.gsd_m:
            d = d * info.gsd_m
        return float(d)

    if objs or object_classes or any(o.resolved_task() in OBJECT_TASKS for o in outputs):
        det_known = sorted({norm_class(o.cls) for o in objs} | {norm_class(c) for o in outputs
                           if o.resolved_task() in OBJECT_TASKS for c in (o.classes or [])}
                           | {norm_class(c) for c in object_classes or []})
        counts: dict[str, list[DetectedObject]] = {}
        for o in kept:
            counts.setdefault(norm_class(o.cls), []).append(o)
        b.add("count", f"{len(kept)} objects detected in total (score >= {fmt_num(score_threshold)}).",
              data={"class": None, "count": len(kept), "threshold": score_threshold})
        for key in sorted(counts, key=lambda k: -len(counts[k])):
            group = counts[key]
            name = known.get(key, key)
            present.add(key)
            qs = [quadrant(to_px(o.geometry)) for o in group]
            qcount = {q: qs.count(q) for q in QUADRANTS if qs.count(q)}
            where = ", ".join(f"{n} {q}" for q, n in qcount.items())
            extra = ""
            if (o_areas := [o.geometry.area for o in group if o.geometry.area > 0]) and m2_per_unit2:
                extra = f"; footprint {area_text(sum(o_areas) * m2_per_unit2 / 1e6)} in total"
            b.add("count", f"{name}: {len(group)} detected (score >= {fmt_num(score_threshold)}); by quarter: "
                  f"{where}{extra}.", classes=[name],
                  data={"class": name, "count": len(group), "threshold": score_threshold, "quadrants": qcount})
        zero = [known.get(k, k) for k in det_known if k not in counts]
        if zero:
            b.add("absent", f"0 detected (score >= {fmt_num(score_threshold)}): {', '.join(zero)}.", classes=zero,
                  data={"classes": zero, "count": 0})
        # top-N objects with boxes and coordinates
        for i, o in enumerate(kept[:top_n]):
            px = to_px(o.geometry)
            c = o.geometry.centroid
            others = [x for x in kept if x is not o]
            near = min(others, key=lambda x: dist(o, x)) if others else None
            near_txt = ""
            if near is not None:
                j = kept.index(near)
                near_txt = (f"; nearest object O{j + 1} ({display_class(near.cls)}) at "
                            f"{fmt_num(dist(o, near))} {dist_unit}")
            box = [round(v) for v in px]
            name = display_class(o.cls)
            b.add("object", f"O{i + 1}: {name}, score {o.score:.2f}, pixel box {box}, {coord_text(c)}, "
                  f"{quadrant(px)} quarter{near_txt}.", classes=[name],
                  data={"object_id": f"O{i + 1}", "class": name, "score": o.score, "pixel_box_xyxy": box,
                        "centre": [c.x, c.y], "quadrant": quadrant(px)},
                  geometry=shapely.geometry.mapping(o.geometry))
        if len(kept) > top_n:
            b.add("relation", f"{len(kept) - top_n} further objects are not listed one by one.",
                  data={"unlisted": len(kept) - top_n})

    # --- change against a second image: the share/area from the change map, the regions from its polygons
    others: dict[tuple[str | None, bool], str] = {}  # a map and its polygons name the same image: open it once
    for out in outputs:
        if out.resolved_task() != CHANGE:
            continue
        key = (out.other_raster, out.other_is_later)
        other = others[key] = others.get(key) or _other_image_text(out)
        if out.is_raster():
            _change_share_facts(b, out, info, other, asked_km2, known, present, aoi)
            continue
        regions = sorted((o for o in read_objects(out, info.crs)
                          if area_poly.contains(o.geometry.centroid) and not _is_no_change(o.cls)),
                         key=lambda o: -o.geometry.area)
        for c in (out.classes or [])[1:]:
            known[norm_class(c)] = display_class(c)
        for o in regions:
            known.setdefault(norm_class(o.cls), display_class(o.cls))
            present.add(norm_class(o.cls))
        if not regions:
            b.add("change", f"No change regions against {other} in this area.", data={"regions": 0})
            continue
        qs = [quadrant(to_px(o.geometry)) for o in regions]
        qcount = {q: qs.count(q) for q in QUADRANTS if qs.count(q)}
        total = (f"; {area_text(sum(o.geometry.area for o in regions) * m2_per_unit2 / 1e6)} in total"
                 if m2_per_unit2 else "")
        names = sorted({display_class(o.cls) for o in regions})
        b.add("change", f"{len(regions)} change regions against {other} (connected areas of changed pixels)"
              f"{total}; by quarter: {', '.join(f'{n} {q}' for q, n in qcount.items())}.", classes=names,
              data={"regions": len(regions), "quadrants": qcount})
        for i, o in enumerate(regions[:top_n]):
            px = to_px(o.geometry)
            box = [round(v) for v in px]
            size = area_text(o.geometry.area * m2_per_unit2 / 1e6) if m2_per_unit2 else \
                f"{fmt_num(o.geometry.area)} px"
            name = display_class(o.cls)
            b.add("change_region", f"C{i + 1}: {name} region of {size}, pixel box {box}, "
                  f"{coord_text(o.geometry.centroid)}, {quadrant(px)} quarter.", classes=[name],
                  data={"object_id": f"C{i + 1}", "class": name, "score": None, "pixel_box_xyxy": box,
                        "area_m2": float(o.geometry.area * m2_per_unit2) if m2_per_unit2 else None,
                        "centre": [o.geometry.centroid.x, o.geometry.centroid.y], "quadrant": quadrant(px)},
                  geometry=shapely.geometry.mapping(o.geometry))
        if len(regions) > top_n:
            b.add("relation", f"{len(regions) - top_n} further change regions are not listed one by one.",
                  data={"unlisted_regions": len(regions) - top_n})

    return FactSheet(b.facts, known, present, score_threshold, info)


def _is_no_change(name: str) -> bool:
    """The unchanged class of a change map ("no change", "unchanged", "no_change")."""
    return bool(re.fullmatch(r"(no[ _-]?change[ds]?|unchanged|not[ _-]changed|background)", name.strip(), re.I))


def _raster_date(tags: dict[str, str]) -> str | None:
    return next((tags[k] for k in ("ACQUISITIONDATETIME", "TIFFTAG_DATETIME", "DATE", "date", "acquisition_date")
                 if k in tags), None)


def _other_image_text(out: PerceptionOutput) -> str:
    """``the later image b.tif (acquired 2025-06-01)``: the second image of a change map, as the facts name it."""
    role = "later" if out.other_is_later else "earlier"
    if not out.other_raster:
        return f"the {role} image"
    date = None
    try:
        import rasterio

        with rasterio.open(out.other_raster) as src:
            date = _raster_date(src.tags())
    except Exception:  # the name alone is enough to tell the user which image it was
        date = None
    return f"the {role} image {Path(out.other_raster).name}" + (f" (acquired {date})" if date else "")


def _change_share_facts(b: _Builder, out: PerceptionOutput, info: RasterInfo, other: str,
                        area_km2: float | None, known: dict[str, str], present: set[str], aoi: Any = None) -> None:
    """Changed share and area of the asked area (``area_km2``), from a change map (class 0 = no change)."""
    names, counts = segmentation_histograms(out, info, aoi=aoi)
    total = int(counts.sum())
    if total == 0:
        b.add("change", f"The change map against {other} has no valid pixels in this area (the two images do "
              "not overlap here).", data={"share_pct": None})
        return
    changed_idx = [k for k in range(len(names)) if k > 0 and not _is_no_change(names[k])]
    for k in changed_idx:
        known[norm_class(names[k])] = display_class(names[k])
    per_class = counts.sum(0)
    changed = int(per_class[changed_idx].sum()) if changed_idx else 0

    def share_area(pixels: int) -> tuple[float, str]:
        # the change map may lie on the other image's grid: areas from the share of the asked area
        share = 100.0 * pixels / total
        return share, (f", {area_text(share / 100 * area_km2)}" if area_km2 else "")

    if changed == 0:
        b.add("change", f"No change detected against {other}: 0% of the area changed.",
              data={"share_pct": 0.0, "area_km2": 0.0 if area_km2 else None, "pixels": 0, "quadrant": None})
        return
    share, area = share_area(changed)
    qshare = counts[:, changed_idx].sum(1) / changed
    q = int(np.argmax(qshare))
    spread = (f"mostly in the {QUADRANTS[q]} quarter ({fmt_num(100 * qshare[q])}% of it)" if qshare[q] >= 0.4
              else "spread over all four quarters")
    classes = [display_class(names[k]) for k in changed_idx if per_class[k] > 0]
    present.update(norm_class(c) for c in classes)
    b.add("change", f"Change against {other}: {fmt_num(share)}% of the area changed{area}; {spread}.",
          classes=classes, data={"share_pct": share, "area_km2": share / 100 * area_km2 if area_km2 else None,
                                 "pixels": changed, "quadrant": QUADRANTS[q] if qshare[q] >= 0.4 else None})
    if len(changed_idx) > 1:  # a change model with several kinds of change (e.g. new / demolished)
        for k in changed_idx:
            if per_class[k]:
                s, a = share_area(int(per_class[k]))
                name = display_class(names[k])
                b.add("change", f"Change of type {name}: {fmt_num(s)}% of the area{a}.", classes=[name],
                      data={"class": name, "share_pct": s, "pixels": int(per_class[k])})


def _lonlat_transformer(crs: str | None):
    if not crs:
        return None
    try:
        from rasterio.crs import CRS
        from rasterio.warp import transform

        src = CRS.from_string(crs)
        if src.to_epsg() == 4326:
            return lambda x, y: (x, y)

        def f(x: float, y: float) -> tuple[float, float]:
            xs, ys = transform(src, "EPSG:4326", [x], [y])
            return xs[0], ys[0]
        return f
    except Exception:  # an unusual CRS without a lon/lat transform: map coordinates only
        return None
