"""Writing job outputs: class GeoTIFFs, GeoPackage vectors, QGIS ``.qml`` styles — all-or-nothing.

:class:`OutputSet` hands out temporary names inside ``output_dir`` (hidden, ``.<name>.<job>.tmp.<ext>``) and
renames them to their final names only in :meth:`OutputSet.commit`; :meth:`OutputSet.abort` deletes them, so a
failed or cancelled job leaves nothing half-written.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape  # nosec B406

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.windows import Window

from backend.errors import InvalidOutputPathError
from training.package import ClassInfo

NODATA_CLASS = 255  # class rasters are uint8; 255 marks nodata, so at most 255 classes
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def safe_output_name(name: str) -> str:
    """Check a user-given output base name: no separators, no traversal, no hidden files.

    Raises:
        InvalidOutputPathError: the name could escape ``output_dir`` or is not a plain file name.
    """
    if (not isinstance(name, str) or not SAFE_NAME.match(name) or ".." in name
            or name.lower().endswith((".tif", ".gpkg", ".qml"))):
        raise InvalidOutputPathError(
            f"output_name {name!r} is not allowed; use a plain name of letters, digits, '.', '_' or '-' "
            "(no '/', no '..', no extension, at most 100 characters), e.g. 'landcover_2024'")
    return name


def check_output_dir(path: Any) -> Path:
    """Validate ``output_dir``: absolute, no ``..`` components, a directory we can create and write.

    Raises:
        InvalidOutputPathError: with what to change.
    """
    if not isinstance(path, str) or not path:
        raise InvalidOutputPathError("output_dir is required: an absolute path of a folder for the results")
    p = Path(path)
    if not p.is_absolute():
        raise InvalidOutputPathError(f"output_dir {path!r} is relative; send an absolute path")
    if ".." in p.parts:
        raise InvalidOutputPathError(f"output_dir {path!r} contains '..'; send a normalised absolute path")
    if p.exists() and not p.is_dir():
        raise InvalidOutputPathError(f"output_dir {path} exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidOutputPathError(f"cannot create output_dir {path}: {exc.strerror}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise InvalidOutputPathError(f"output_dir {path} is not writable; choose another folder")
    return p


_ACTIVE: set[OutputSet] = set()
_ACTIVE_LOCK = threading.Lock()


def abort_all_outputs() -> int:
    """Delete the temporary files of every unfinished job (server shutdown); returns how many sets."""
    with _ACTIVE_LOCK:
        active = list(_ACTIVE)
    for out in active:
        out.abort()
    return len(active)


class OutputSet:
    """Temporary files for one job, renamed together on success and deleted otherwise."""

    def __init__(self, output_dir: Path, base_name: str, job_id: str) -> None:
        self.dir = Path(output_dir)
        self.base = safe_output_name(base_name)
        self.job_id = job_id
        self._files: list[tuple[Path, Path]] = []  # (temp, final)
        self._journals: list[BlockJournal] = []
        with _ACTIVE_LOCK:
            _ACTIVE.add(self)

    def reserve(self, suffix: str, ext: str) -> tuple[Path, Path]:
        """A temp path and the final path for ``<base><suffix>.<ext>`` (final names never overwrite).

        A temp file left by an earlier, killed run of the same job is deleted first (temp names carry the
        job id, so it can only be this job's own).
        """
        stem = f"{self.base}{suffix}"
        final = self.dir / f"{stem}.{ext}"
        n = 2
        taken = {f for _, f in self._files}
        while final.exists() or final in taken:
            final = self.dir / f"{stem}_{n}.{ext}"
            n += 1
        tmp = self.dir / f".{stem}.{self.job_id[:12]}.tmp.{ext}"
        _unlink_with_sidecars(tmp)
        self._files.append((tmp, final))
        return tmp, final

    def journal(self, suffix: str, fingerprint: dict[str, Any]) -> BlockJournal:
        """The block journal of output ``<base><suffix>`` (kept across a crash; removed on commit/abort)."""
        j = BlockJournal(self.dir / f".{self.base}{suffix}.{self.job_id[:12]}.tmp.journal", fingerprint)
        self._journals.append(j)
        return j

    def final_of(self, tmp: Path) -> Path:
        return next(f for t, f in self._files if t == tmp)

    def commit(self) -> None:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self)
        for tmp, final in self._files:
            if tmp.exists():
                os.replace(tmp, final)
        self._files = [(f, f) for _, f in self._files]
        for j in self._journals:
            j.remove()

    def abort(self) -> None:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self)
        for tmp, _ in self._files:
            _unlink_with_sidecars(tmp)
        for j in self._journals:
            j.remove()


def _unlink_with_sidecars(tmp: Path) -> None:
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal"), Path(f"{tmp}.aux.xml")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file + fsync + rename: readers see the old or the new
    content, never a torn one (a SIGKILL or a full disk leaves at most a ``*.part`` file)."""
    part = path.with_name(path.name + ".part")
    try:
        with open(part, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


class BlockJournal:
    """Finished output blocks of one dense job, so that a job whose backend was killed can resume.

    A hidden folder next to the temp output holds ``journal.json`` (a fingerprint of the raster, model and
    tiling: a journal from another configuration is discarded) and one ``b<index>.npz`` per finished block
    (the block's ``h x w`` uint8 class map, deflate-compressed), each written atomically. A block file
    exists only once its block is complete, so the set of files *is* the journal.
    """

    def __init__(self, path: Path, fingerprint: dict[str, Any]) -> None:
        self.path = Path(path)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        meta = self.path / "journal.json"
        try:
            old = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old != self.fingerprint:
            self.remove()
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(meta, json.dumps(self.fingerprint, sort_keys=True).encode("utf-8"))

    def done(self) -> list[int]:
        """Indices of the finished blocks, ascending."""
        out = []
        for p in self.path.glob("b*.npz"):
            try:
                out.append(int(p.stem[1:]))
            except ValueError:
                continue
        return sorted(out)

    def record(self, index: int, classes: np.ndarray) -> None:
        """Store block ``index``'s class map (``h x w`` uint8) atomically."""
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, classes=np.ascontiguousarray(classes, dtype=np.uint8))
        atomic_write_bytes(self.path / f"b{index}.npz", buf.getvalue())

    def load(self, index: int) -> np.ndarray:
        with np.load(self.path / f"b{index}.npz", allow_pickle=False) as z:
            return z["classes"]

    def record_arrays(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        """Store entry ``index`` as named numeric arrays (no pickles), atomically."""
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
        atomic_write_bytes(self.path / f"b{index}.npz", buf.getvalue())

    def load_arrays(self, index: int) -> dict[str, np.ndarray]:
        with np.load(self.path / f"b{index}.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)


BatchRecord = dict[str, np.ndarray]  # one tile batch's results: name -> array whose axis 0 runs over its items


class BatchJournal:
    """Per-batch results of a sparse job (detection, scene classification), journalled in units of time.

    A sparse task keeps its per-tile results (detections before the global merge, scene labels) in memory and
    writes its output only at the end, so a journal entry is a *unit*: the records of the consecutive tile
    batches finished in about ``interval_s`` seconds of work (one file every few seconds, whatever the
    model's speed), stored by :class:`BlockJournal` as ``b<first batch>.npz``. Each unit lists its batch
    indices, so a resumed job skips exactly those batches (their composition, hence the model's outputs, are
    unchanged) and :meth:`records` hands back every batch's record, journalled or new, in batch order.

    Every record of a job must have the same names; an array may have zero rows.
    """

    def __init__(self, journal: BlockJournal, interval_s: float, n_batches: int,
                 clock: Callable[[], float] | None = None) -> None:
        import time
        import zipfile

        self.journal = journal
        self.interval_s = max(0.0, float(interval_s))
        self._clock = clock or time.monotonic  # seconds
        self._since = self._clock()
        self._pending: dict[int, BatchRecord] = {}
        self._records: dict[int, BatchRecord] = {}
        for unit in journal.done():
            try:
                records = _unpack_unit(journal.load_arrays(unit))
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # (written atomically: unlikely)
                continue  # its batches are simply computed again
            self._records.update({i: r for i, r in records.items() if 0 <= i < n_batches})
        self.resumed: list[int] = sorted(self._records)

    def add(self, batch: int, record: BatchRecord) -> None:
        """Keep batch ``batch``'s results; write the current unit once it holds ``interval_s`` of work."""
        self._records[batch] = record
        self._pending[batch] = record
        if self._clock() - self._since >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        """Write the pending batches as one unit (call once more after the last batch)."""
        if self._pending:
            self.journal.record_arrays(min(self._pending), _pack_unit(self._pending))
            self._pending = {}
        self._since = self._clock()

    def records(self) -> list[tuple[int, BatchRecord]]:
        """``(batch index, record)`` of every batch (journalled or computed in this run), in batch order."""
        return [(i, self._records[i]) for i in sorted(self._records)]


def _pack_unit(records: dict[int, BatchRecord]) -> dict[str, np.ndarray]:
    """Concatenate per-batch records: ``<name>`` (all rows) + ``<name>__rows`` (rows per batch) + ``__batches``."""
    ids = sorted(records)
    names = sorted(records[ids[0]])
    out: dict[str, np.ndarray] = {"__batches": np.asarray(ids, dtype=np.int64)}
    for name in names:
        parts = [np.asarray(records[i][name]) for i in ids]
        out[name] = np.concatenate(parts, axis=0)
        out[f"{name}__rows"] = np.asarray([len(p) for p in parts], dtype=np.int64)
    return out


def _unpack_unit(arrays: dict[str, np.ndarray]) -> dict[int, BatchRecord]:
    ids = [int(i) for i in arrays["__batches"]]
    names = [k for k in arrays if k != "__batches" and not k.endswith("__rows")]
    out: dict[int, BatchRecord] = {i: {} for i in ids}
    for name in names:
        rows = arrays[f"{name}__rows"]
        if len(rows) != len(ids) or int(rows.sum()) != len(arrays[name]):
            raise ValueError(f"journal unit damaged: {name} rows do not add up")
        starts = np.concatenate([[0], np.cumsum(rows)])
        for k, i in enumerate(ids):
            out[i][name] = arrays[name][starts[k]: starts[k + 1]]
    return out


def pack_geometries(geoms: list) -> tuple[np.ndarray, np.ndarray]:
    """Shapely geometries -> (all their WKB bytes as one uint8 array, WKB length per geometry).

    WKB keeps every float64 coordinate and the vertex order, so :func:`unpack_geometries` gives back
    geometries on which every later operation (NMS, areas, transforms) computes the same numbers.
    """
    import shapely

    wkb = [shapely.to_wkb(g) for g in geoms]
    data = np.frombuffer(b"".join(wkb), dtype=np.uint8).copy()
    return data, np.asarray([len(w) for w in wkb], dtype=np.int64)


def unpack_geometries(data: np.ndarray, lengths: np.ndarray) -> list:
    import shapely

    buf = np.asarray(data, dtype=np.uint8).tobytes()
    ends = np.cumsum(lengths)
    return [shapely.from_wkb(buf[e - n: e]) for e, n in zip(ends.tolist(), np.asarray(lengths).tolist(),
                                                              strict=True)]


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


class ClassRasterWriter:
    """A tiled, deflate-compressed uint8 GeoTIFF of class indices (255 = nodata) with a colour table.

    Written block by block (:meth:`write_block`), so the raster is never held in memory; per-class pixel
    counts are accumulated on the way for the job statistics.
    """

    def __init__(self, path: Path, width: int, height: int, crs_wkt: str, transform, classes: list[ClassInfo],
                 description: str = "class") -> None:
        if len(classes) > NODATA_CLASS:
            raise ValueError(f"at most {NODATA_CLASS} classes fit a uint8 class raster, got {len(classes)}")
        self.path = path
        self.classes = classes
        self.counts = np.zeros(len(classes), dtype=np.int64)
        blk = 256 if min(width, height) >= 256 else 16 * max(1, min(width, height) // 16)
        tiled = min(width, height) >= 16
        profile: dict[str, Any] = {
            "driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint8",
            "crs": CRS.from_wkt(crs_wkt), "transform": transform, "nodata": NODATA_CLASS,
            "compress": "deflate", "predictor": 2, "BIGTIFF": "IF_SAFER",
        }
        if tiled:
            profile.update(tiled=True, blockxsize=blk, blockysize=blk)
        self.ds = rasterio.open(path, "w", **profile)
        cmap = {i: (*_rgb(c.color), 255) for i, c in enumerate(classes)}
        cmap[NODATA_CLASS] = (0, 0, 0, 0)
        self.ds.write_colormap(1, cmap)
        self.ds.set_band_description(1, description)
        self.ds.update_tags(1, **{f"CLASS_{i}": c.name for i, c in enumerate(classes)})

    def write_block(self, window: Window, classes: np.ndarray) -> None:
        """Write a ``h x w`` uint8 class block (255 = nodata) at ``window``."""
        self.ds.write(classes[None], window=window)
        vals = classes[classes != NODATA_CLASS]
        self.counts += np.bincount(vals.ravel(), minlength=len(self.classes))[: len(self.classes)]

    def close(self, tags: dict[str, str] | None = None, overviews: bool = True) -> None:
        """Finish the file: provenance tags, and (for rasters over 1024 px) nearest-neighbour overviews so
        QGIS draws the class map quickly when zoomed out (GDAL builds them block by block)."""
        if tags:
            self.ds.update_tags(**tags)
        size = max(self.ds.width, self.ds.height)
        if overviews and size > 1024:
            from rasterio.enums import Resampling

            factors = [f for f in (2, 4, 8, 16, 32, 64) if size // f >= 256]
            if factors:
                self.ds.build_overviews(factors, Resampling.nearest)
                self.ds.update_tags(ns="rio_overview", resampling="nearest")
        self.ds.close()
        self.verify()

    def verify(self) -> None:
        """Re-open the closed file and read its last pixel (and the coarsest overview).

        GDAL reports a failed block-cache flush on close (disk full, file size limit) only as a log message,
        leaving a truncated file; its directory and last blocks are written last, so this catches it.

        Raises:
            OutputWriteError: the file is incomplete.
        """
        from rasterio.errors import RasterioError

        from backend.errors import OutputWriteError

        try:
            with rasterio.open(self.path) as ds:
                ds.read(1, window=Window(ds.width - 1, ds.height - 1, 1, 1))
                ovr = ds.overviews(1)
                if ovr:
                    ds.read(1, out_shape=(max(1, ds.height // ovr[-1]), max(1, ds.width // ovr[-1])))
        except RasterioError as exc:
            raise OutputWriteError(f"writing {self.path.name} in {self.path.parent} failed ({exc}); the disk may be "
                                   "full or a file size limit reached. Nothing was kept: free some space (or choose "
                                   "another output_dir) and submit the job again") from None


def area_factor_m2(crs_wkt: str, center_lat: float | None = None) -> float:
    """Square metres per squared CRS unit (geographic CRSs approximated at ``center_lat``)."""
    crs = CRS.from_wkt(crs_wkt)
    if crs.is_geographic:
        lat = math.radians(center_lat or 0.0)
        return 111_320.0 * 111_320.0 * math.cos(lat)
    try:
        f = crs.linear_units_factor[1]
    except Exception:  # noqa: BLE001 - unitless CRS: treat as metres
        f = 1.0
    return f * f


def linear_factor_m(crs_wkt: str, center_lat: float | None = None) -> float:
    return math.sqrt(area_factor_m2(crs_wkt, center_lat))


class VectorWriter:
    """Streams polygon features into one GeoPackage layer in batches (bounded memory).

    ``fields`` maps field name -> numpy dtype (``object`` for text). Provenance fields (``model``,
    ``parameters``, ``source``, ``created``) are added to every feature and to the layer metadata.
    """

    PROVENANCE = ("model", "parameters", "source", "created")

    def __init__(self, path: Path, layer: str, crs_wkt: str, fields: dict[str, Any], provenance: dict[str, str],
                 geometry_type: str = "MultiPolygon", batch: int = 5000) -> None:
        self.path, self.layer, self.crs_wkt = path, layer, crs_wkt
        self.fields = dict(fields)
        self.provenance = provenance
        self.geometry_type = geometry_type
        self.batch = batch
        self._geoms: list[bytes] = []
        self._rows: list[dict[str, Any]] = []
        self.count = 0
        self._started = False

    def add(self, geom, **values: Any) -> None:
        """Add one shapely geometry with its field values (missing provenance is filled in)."""
        import shapely

        if geom.geom_type == "Polygon" and self.geometry_type == "MultiPolygon":
            geom = shapely.MultiPolygon([geom])
        self._geoms.append(shapely.to_wkb(geom))
        self._rows.append(values)
        self.count += 1  # features added so far (written or still buffered)
        if len(self._geoms) >= self.batch:
            self.flush()

    def flush(self, force: bool = False) -> None:
        from pyogrio.raw import write

        if not self._geoms and (self._started or not force):
            return
        names = list(self.fields) + list(self.PROVENANCE)
        cols = []
        for name in self.fields:
            dt = self.fields[name]
            cols.append(np.array([r.get(name) for r in self._rows], dtype=dt))
        for name in self.PROVENANCE:
            cols.append(np.array([self.provenance.get(name, "")] * len(self._rows), dtype=object))
        write(str(self.path), np.array(self._geoms, dtype=object), cols, names, layer=self.layer, driver="GPKG",
              geometry_type=self.geometry_type, crs=self.crs_wkt, append=self._started,
              layer_metadata=None if self._started else {k: str(v) for k, v in self.provenance.items()},
              # GeoPackage 1.2: QGIS builds with an older GDAL warn about 1.4 files (the newer GDAL's default)
              dataset_options=None if self._started else {"VERSION": "1.2"})
        self._started = True
        self._geoms, self._rows = [], []

    def close(self) -> None:
        self.flush(force=True)


def polygonize_class_raster(path: Path, writer: VectorWriter, classes: list[ClassInfo], crs_wkt: str,
                            max_pixels: int, keep: Iterable[int] | None = None, block: int = 2048) -> None:
    """Vectorise a class raster into ``writer`` with fields class_id, class_name, area_m2.

    Rasters up to ``max_pixels`` are polygonised in one pass (whole polygons); bigger ones block by block so
    memory stays bounded (polygons are then cut at block edges).
    """
    import shapely
    from rasterio.features import shapes

    keep_set = set(keep) if keep is not None else None
    with rasterio.open(path) as src:
        lat = None
        if CRS.from_wkt(crs_wkt).is_geographic:
            lat = (src.bounds.bottom + src.bounds.top) / 2
        factor = area_factor_m2(crs_wkt, lat)
        if src.width * src.height <= max_pixels:
            windows = [Window(0, 0, src.width, src.height)]
        else:
            windows = [Window(c, r, min(block, src.width - c), min(block, src.height - r))
                       for r in range(0, src.height, block) for c in range(0, src.width, block)]
        for win in windows:
            data = src.read(1, window=win)
            mask = data != NODATA_CLASS
            if keep_set is not None:
                mask &= np.isin(data, list(keep_set))
            tr = rasterio.windows.transform(win, src.transform)
            for geom, value in shapes(data, mask=mask, connectivity=4, transform=tr):
                poly = shapely.geometry.shape(geom)
                cid = int(value)
                writer.add(poly, class_id=cid, class_name=classes[cid].name if cid < len(classes) else str(cid),
                           area_m2=float(poly.area * factor))


# -- QGIS styles -------------------------------------------------------------------------------------------

def raster_qml(classes: list[ClassInfo]) -> str:
    """A paletted-renderer style: one colour and label per class (nodata stays transparent)."""
    entries = "\n".join(
        f'        <paletteEntry value="{i}" color="{c.color.lower()}" alpha="255" label="{escape(c.name, {chr(34): "&quot;"})}"/>'
        for i, c in enumerate(classes))
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="AllStyleCategories">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <minMaxOrigin><limits>None</limits><extent>WholeRaster</extent><statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower><cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor></minMaxOrigin>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0"/>
    <huesaturation saturation="0" colorizeOn="0"/>
    <rasterresampler maxOversampling="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


def vector_qml(classes: list[ClassInfo], field: str = "class_id", fill_alpha: int = 140,
               outline_only: bool = False) -> str:
    """A categorized-renderer style on ``field`` (class index), one fill colour per class."""
    cats, syms = [], []
    for i, c in enumerate(classes):
        r, g, b = _rgb(c.color)
        label = escape(c.name, {'"': "&quot;"})
        cats.append(f'      <category symbol="{i}" value="{i}" label="{label}" render="true"/>')
        fill = f"{r},{g},{b},{0 if outline_only else fill_alpha}"
        syms.append(f"""      <symbol type="fill" name="{i}" alpha="1" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" pass="0" locked="0">
          <Option type="Map">
            <Option type="QString" name="color" value="{fill}"/>
            <Option type="QString" name="outline_color" value="{r},{g},{b},255"/>
            <Option type="QString" name="outline_width" value="0.4"/>
            <Option type="QString" name="outline_width_unit" value="MM"/>
            <Option type="QString" name="style" value="solid"/>
            <Option type="QString" name="outline_style" value="solid"/>
          </Option>
        </layer>
      </symbol>""")
    cats_s, syms_s = "\n".join(cats), "\n".join(syms)
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="Symbology">
  <renderer-v2 type="categorizedSymbol" attr="{field}" symbollevels="0" enableorderby="0" forceraster="0">
    <categories>
{cats_s}
    </categories>
    <symbols>
{syms_s}
    </symbols>
  </renderer-v2>
  <blendMode>0</blendMode>
  <featureBlendMode>0</featureBlendMode>
</qgis>
"""


def write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def provenance(model_id: str, revision: str, params: dict[str, Any], source: str, created: str) -> dict[str, str]:
    return {"model": f"{model_id}@{revision}", "parameters": json.dumps(params, sort_keys=True),
            "source": source, "created": created}
