"""Jobs from requests: validation, and one post-processor per task registered by task name.

:func:`create_job` validates a JobRequest completely (model, task, inputs, options, output path, raster
compatibility) *before* anything is queued, so bad input is answered with a typed 4xx error. The job's runner
then loads the runtime, runs the engine, and hands the model's outputs to the task's post-processor
(:data:`TASK_RUNNERS`), which writes into an :class:`~backend.outputs.OutputSet` that is committed only when
everything succeeded.
"""

from __future__ import annotations

import errno
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from backend.engine import (
    EngineParams,
    RasterSource,
    dense_blocks,
    iter_tile_batches,
    overlap_fraction,
    run_dense,
    tile_batches,
)
from backend.errors import (
    BadRequestError,
    IncompatibleRasterError,
    ModelPackageError,
    UnsupportedTaskError,
)
from backend.jobs import Job, JobContext
from backend.models import ModelEntry
from backend.outputs import (
    NODATA_CLASS,
    BatchJournal,
    BatchRecord,
    ClassRasterWriter,
    OutputSet,
    VectorWriter,
    area_factor_m2,
    check_output_dir,
    linear_factor_m,
    pack_geometries,
    polygonize_class_raster,
    provenance,
    raster_qml,
    safe_output_name,
    unpack_geometries,
    vector_qml,
    write_text,
)
from backend.raster import RasterPlan, plan_raster
from training.package import TASKS, PackageConfig

# option name -> (accepted python types, description). Unknown options are refused.
OPTIONS: dict[str, tuple[tuple[type, ...], str]] = {
    "tile_size_px": ((int,), "tile side in pixels"),
    "tile_overlap_px": ((int,), "overlap between neighbouring tiles in pixels (<= tile_size_px/2)"),
    "batch_size": ((int,), "tiles per forward pass"),
    "bands": ((list,), "1-based band numbers to feed the model, in the model's band order"),
    "score_threshold": ((int, float), "minimum score for detections"),
    "nms_iou_threshold": ((int, float), "IoU above which overlapping detections of one class are merged"),
    "bbox": ((list,), "[minx, miny, maxx, maxy] in the raster's CRS"),
    "aoi": ((dict,), "GeoJSON Polygon/MultiPolygon/FeatureCollection in the raster's CRS: process only inside it"),
    "classify_per": ((str,), "scene_classification: 'tile' (a grid of tiles) or 'polygon' (one class per aoi "
                             "feature)"),
    "vectorize": ((bool,), "also write class polygons (GeoPackage)"),
    "allow_gsd_mismatch": ((bool,), "run even if the pixel size is far outside the model's range"),
    "output_name": ((str,), "base name of the output files (plain name, no path)"),
    "runtime": ((str,), "auto (onnx where the package has model.onnx, else torch; torch for precision bf16), "
                        "torch or onnx"),
    "precision": ((str,), "auto (torch: bf16 for validated dense models on CPUs with native bf16 matmul and "
                          "rasters in the model's pixel-size range, else fp32), fp32 or bf16 (torch, dense tasks, "
                          "CPUs with AMX / AVX512-BF16)"),
}
NO_VALID_PIXELS = ("the processed area holds no valid pixels (every pixel is nodata); the outputs are empty — "
                   "check the raster's nodata value or choose another area")
TASK_SUFFIX = {"semantic_segmentation": "segmentation", "instance_segmentation": "instances",
               "object_detection": "detections", "rotated_detection": "rotated_detections",
               "scene_classification": "scenes", "change_detection": "change"}
ONNX_TASKS = ("semantic_segmentation", "change_detection", "scene_classification")  # tensor outputs


@dataclass
class JobSpec:
    """A validated request: everything the runner needs, nothing left to check but the pixels."""

    task: str
    entry: ModelEntry
    plan: RasterPlan
    after_plan: RasterPlan | None
    output_dir: Path
    base_name: str
    params: EngineParams
    options: dict[str, Any]
    runtime: str
    warnings: list[str] = field(default_factory=list)
    precision: str = "fp32"  # what the runtime computes in: fp32 or bf16 (backend.runtimes.resolve_runtime)

    @property
    def config(self) -> PackageConfig:
        return self.entry.config

    def effective_parameters(self) -> dict[str, Any]:
        """The parameters actually used (for provenance and the job result)."""
        return {"tile_size_px": self.params.tile_size_px, "tile_overlap_px": self.params.tile_overlap_px,
                "batch_size": self.params.batch_size, "bands": self.plan.bands,
                "bbox": self.options.get("bbox"), "score_threshold": self.options["score_threshold"],
                "nms_iou_threshold": self.options["nms_iou_threshold"], "runtime": self.runtime,
                "precision": self.precision,
                "allow_gsd_mismatch": bool(self.options.get("allow_gsd_mismatch", False)),
                # the aoi can be large: provenance gets its summary (polygons, vertices, bounds, hash)
                "aoi": self.plan.aoi.summary() if self.plan.aoi is not None else None,
                "classify_per": self.options.get("classify_per", "tile")}


def _check_options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise BadRequestError("options must be a JSON object")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise BadRequestError(f"unknown options {unknown}; valid options: {', '.join(sorted(OPTIONS))}",
                              code="unknown_option")
    for k, v in options.items():
        types, desc = OPTIONS[k]
        if v is None:
            continue
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise BadRequestError(f"option {k} must be {'/'.join(t.__name__ for t in types)} ({desc}); "
                                  f"got {json_type(v)}", code="invalid_option")
    return {k: v for k, v in options.items() if v is not None}


def json_type(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(v), type(v).__name__)


def _default_base_name(raster: str, task: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(raster).stem)[:60].strip("._-") or "raster"
    if not stem[0].isalnum():
        stem = "r" + stem
    return f"{stem}_{TASK_SUFFIX[task]}"


def auto_runtime(entry: ModelEntry, device: str = "cpu") -> str:
    """The runtime ``auto`` picks (with precision ``auto``, :func:`backend.runtimes.resolve_runtime`): ``onnx``
    when the package ships its ONNX graph, the task's model returns a single tensor and onnxruntime is
    installed (measured ~1.5-2.5x faster than eager torch fp32 on CPU and as fast as torch bf16, see
    docs/bench/runtimes.md; the export checks parity with torch), else ``torch``."""
    from backend.runtimes import resolve_runtime

    return resolve_runtime(entry, "auto", "auto", device)[0]


def build_spec(app, body: Any) -> JobSpec:
    """Validate a JobRequest (see docs/CONTRACTS.md) into a :class:`JobSpec`.

    Raises:
        BadRequestError, UnsupportedTaskError, ModelNotFoundError, InputNotFoundError,
        IncompatibleRasterError, InvalidOutputPathError: with what to change.
    """
    if not isinstance(body, dict):
        raise BadRequestError("send a JSON object {task, model, inputs: {raster}, output_dir, options}")
    unknown = sorted(set(body) - {"task", "model", "inputs", "output_dir", "options"})
    if unknown:
        raise BadRequestError(f"unknown fields {unknown}; a job has task, model, inputs, output_dir, options")
    task = body.get("task")
    if task not in TASKS:
        raise UnsupportedTaskError(f"task {task!r} is not one of {', '.join(TASKS)}")
    if task not in TASK_RUNNERS:
        raise UnsupportedTaskError(f"task {task!r} is not supported by this backend yet")
    entry = app.models.get(body.get("model"))
    cfg = entry.config
    if cfg.task != task:
        raise BadRequestError(f"model {entry.id!r} is a {cfg.task} model and cannot run {task}; pick a "
                              f"{task} model (GET /api/v1/models lists each model's task)", code="task_mismatch")
    options = _check_options(body.get("options"))
    inputs = body.get("inputs")
    if not isinstance(inputs, dict) or not isinstance(inputs.get("raster"), str):
        raise BadRequestError('inputs must be {"raster": "/absolute/path.tif"}')
    extra = sorted(set(inputs) - {"raster", "raster_after"})
    if extra:
        raise BadRequestError(f"unknown inputs {extra}; use raster (and raster_after for change_detection)")
    if task == "change_detection":
        if not isinstance(inputs.get("raster_after"), str):
            raise BadRequestError("change_detection needs inputs.raster_after: the later image of the pair")
    elif "raster_after" in inputs:
        raise BadRequestError("inputs.raster_after is only used by change_detection")
    if "output_name" in options:
        base_name = safe_output_name(options["output_name"])
    else:
        base_name = _default_base_name(inputs["raster"], task)
    output_dir_raw = body.get("output_dir")
    if not isinstance(output_dir_raw, str) or not output_dir_raw or not Path(output_dir_raw).is_absolute():
        check_output_dir(output_dir_raw)  # raises the precise error

    try:
        params = EngineParams(tile_size_px=int(options.get("tile_size_px", cfg.tile_size_px)),
                              tile_overlap_px=int(options.get("tile_overlap_px", cfg.tile_overlap_px)),
                              batch_size=int(options.get("batch_size", cfg.batch_size)),
                              block_size_px=int(app.settings.block_size_px))
    except BadRequestError as exc:
        exc.code = "invalid_option"
        raise
    for k, lo, hi in (("score_threshold", 0.0, 1.0), ("nms_iou_threshold", 0.0, 1.0)):
        if k in options and not lo <= float(options[k]) <= hi:
            raise BadRequestError(f"option {k} must be in [{lo}, {hi}], got {options[k]}", code="invalid_option")
    options.setdefault("score_threshold", cfg.score_threshold)
    options.setdefault("nms_iou_threshold", 0.5)
    classify_per = options.get("classify_per", "tile")
    if classify_per not in ("tile", "polygon"):
        raise BadRequestError(f"option classify_per must be 'tile' or 'polygon', got {classify_per!r}",
                              code="invalid_option")
    if classify_per == "polygon" and task != "scene_classification":
        raise BadRequestError(f"classify_per 'polygon' is for scene_classification, not {task}; drop it",
                              code="invalid_option")
    if classify_per == "polygon" and "aoi" not in options:
        raise BadRequestError("classify_per 'polygon' needs options.aoi: the polygons to classify (a GeoJSON "
                              "FeatureCollection in the raster's CRS)", code="invalid_option")

    plan = plan_raster(cfg, inputs["raster"], options)
    from backend.runtimes import resolve_runtime  # (runtime, precision); raises invalid_option with the fix

    runtime, precision = resolve_runtime(entry, options.get("runtime", app.settings.runtime),
                                         options.get("precision", app.settings.precision), app.device, plan.gsd_m)
    warnings = list(plan.warnings)
    after_plan = None
    if task == "change_detection":
        # bbox and aoi are in the before raster's CRS; the after raster is warped onto its grid anyway
        after_opts = {k: v for k, v in options.items() if k not in ("bbox", "aoi")}
        after_plan = plan_raster(cfg, inputs["raster_after"], after_opts)
        warnings += [f"raster_after: {w}" for w in after_plan.warnings]
        frac = overlap_fraction(plan, after_plan)
        if frac <= 0:
            raise IncompatibleRasterError(
                f"{inputs['raster']} and {inputs['raster_after']} do not overlap; change detection needs two "
                "images of the same place", code="rasters_do_not_overlap")
        if frac < 0.5:
            warnings.append(f"the two rasters overlap on only {frac:.0%} of the processed area; pixels outside "
                            "the overlap are written as nodata")
    output_dir = check_output_dir(output_dir_raw)
    return JobSpec(task=task, entry=entry, plan=plan, after_plan=after_plan, output_dir=output_dir,
                   base_name=base_name, params=params, options=options, runtime=runtime, warnings=warnings,
                   precision=precision)


def create_job(app, body: Any, job_id: str | None = None) -> Job:
    """Validate ``body`` and return a queued-state :class:`Job` whose runner executes it.

    The request is recorded (:func:`record_path`) until the job reaches a final state, so that a job whose
    backend died can be resumed; ``job_id`` re-creates such a job under its old id (its block journal and
    temp files carry that id).
    """
    spec = build_spec(app, body)
    request = {"task": spec.task, "model": spec.entry.id, "inputs": body["inputs"],
               "output_dir": str(spec.output_dir), "options": body.get("options") or {}}
    job = Job(task=spec.task, model=spec.entry.id, runner=lambda ctx: run_spec(app, spec, ctx), request=request)
    if job_id is not None:
        job.id = job_id
    job.warnings.extend(spec.warnings)
    rec = record_path(app, spec.output_dir, job.id)
    _write_record(rec, {"id": job.id, "created": job.created, "request": request})
    job.on_final = lambda _job: _remove_record(rec)
    return job


# -- job records and resume -----------------------------------------------------------------------------

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
RECORDS_DIR = ".rsfm-jobs"


def record_path(app, output_dir: Path | str, job_id: str) -> Path:
    """Where a job's request is recorded: ``state_dir/<id>.json`` if that setting is set, else
    ``<output_dir>/.rsfm-jobs/<id>.json``."""
    state_dir = getattr(app.settings, "state_dir", "") or ""
    base = Path(state_dir).expanduser() if state_dir else Path(output_dir) / RECORDS_DIR
    return base / f"{job_id}.json"


def _write_record(path: Path, record: dict[str, Any]) -> None:
    import json

    from backend.outputs import atomic_write_bytes

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(record, sort_keys=True).encode("utf-8"))
    except OSError as exc:
        from backend.errors import InvalidOutputPathError

        raise InvalidOutputPathError(f"cannot record the job in {path.parent} ({exc.strerror}); free some disk "
                                     "space or choose another output_dir / --state-dir") from None


def _remove_record(path: Path) -> None:
    path.unlink(missing_ok=True)
    if path.parent.name == RECORDS_DIR:
        try:
            path.parent.rmdir()  # only when empty: other jobs' records stay
        except OSError:
            pass


def resume_job(app, job_id: str, body: Any) -> Job:
    """Re-create a job interrupted by a crash from its record; dense tasks continue from their journal.

    Raises:
        JobNotFoundError: no record of ``job_id`` (it finished, was never submitted, or lives in another
            output_dir: pass ``{"output_dir": ...}``).
        JobStateError: the job is known to this backend and still queued/running or already succeeded.
    """
    import json

    from backend.errors import JobNotFoundError, JobStateError
    from backend.jobs import FINAL

    if not isinstance(job_id, str) or not JOB_ID.match(job_id):
        raise JobNotFoundError(f"{job_id!r} is not a job id (32 hex digits)")
    if body is not None and not isinstance(body, dict):
        raise BadRequestError('send nothing or {"output_dir": "/absolute/folder/of/the/job"}')
    body = body or {}
    unknown = sorted(set(body) - {"output_dir"})
    if unknown:
        raise BadRequestError(f"unknown fields {unknown}; resume takes only output_dir")
    try:
        known = app.jobs.get(job_id)
    except JobNotFoundError:
        known = None
    if known is not None and known.state not in FINAL:
        raise JobStateError(f"job {job_id} is {known.state}; only a job interrupted by a backend crash can be "
                            "resumed")
    candidates = []
    if getattr(app.settings, "state_dir", ""):
        candidates.append(record_path(app, "", job_id))
    if body.get("output_dir") is not None:
        out = body["output_dir"]
        if not isinstance(out, str) or not Path(out).is_absolute() or ".." in Path(out).parts:
            raise BadRequestError(f"output_dir {out!r} must be the absolute path the job was submitted with")
        candidates.append(Path(out) / RECORDS_DIR / f"{job_id}.json")  # looked up only: nothing is created
    elif known is not None:
        candidates.append(Path(known.request.get("output_dir", "/nonexistent")) / RECORDS_DIR / f"{job_id}.json")
    for rec in candidates:
        if rec.is_file():
            try:
                record = json.loads(rec.read_text(encoding="utf-8"))
                request = record["request"]
            except (OSError, ValueError, KeyError, TypeError):
                raise JobNotFoundError(f"the record {rec} of job {job_id} is damaged; submit the job again") from None
            return create_job(app, request, job_id=job_id)
    where = " or ".join(str(c.parent) for c in candidates) or "the state dir (none set)"
    raise JobNotFoundError(f"no record of an interrupted job {job_id} in {where}; a job that finished (or "
                           "was cancelled) cannot be resumed. Pass {\"output_dir\": ...} of the job, or submit "
                           "it again")


# -- running ------------------------------------------------------------------------------------------

@dataclass
class RunContext:
    spec: JobSpec
    model: Callable[..., Any]
    source: RasterSource
    out: OutputSet
    job: JobContext
    provenance: dict[str, str]
    settings: Any

    def progress(self, done: int, total: int) -> None:
        self.job.progress(0.95 * done / max(1, total), f"tile {done}/{total}")


TaskRunner = Callable[[RunContext], dict[str, Any]]
TASK_RUNNERS: dict[str, TaskRunner] = {}


def register_task(name: str):
    """Register a post-processor for ``name`` (a task of the model package contract)."""
    def deco(fn: TaskRunner) -> TaskRunner:
        TASK_RUNNERS[name] = fn
        return fn
    return deco


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def run_spec(app, spec: JobSpec, ctx: JobContext, model: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Run a validated job; returns ``{"outputs": [...], "stats": {...}}`` with final paths.

    ``model`` overrides the package's runtime (tests use deterministic callables).
    """
    ctx.progress(0.0, "loading model")
    if model is None:
        model = app.runtimes.get(spec.entry, spec.runtime, app.device, app.settings.threads, spec.precision)
    prov = provenance(spec.entry.id, spec.entry.revision, spec.effective_parameters(), spec.plan.path, _now())
    out = OutputSet(spec.output_dir, spec.base_name, ctx.job.id)
    try:
        with RasterSource(spec.plan, spec.config.mean, spec.config.std, spec.after_plan) as source:
            rc = RunContext(spec, model, source, out, ctx, prov, app.settings)
            result = TASK_RUNNERS[spec.task](rc)
            if spec.plan.aoi is not None:
                result.setdefault("stats", {})["tiles_skipped"] = int(source.tiles_skipped)
        ctx.check_cancel()
        out.commit()
    except BaseException as exc:
        out.abort()
        write_error = _as_write_error(exc, spec.output_dir)
        if write_error is not None:
            raise write_error from None
        raise
    result.setdefault("stats", {})
    result["stats"].update({"model": prov["model"], "parameters": spec.effective_parameters(),
                            "width_px": int(spec.plan.window.width), "height_px": int(spec.plan.window.height),
                            "gsd_m": spec.plan.gsd_m})
    return result


_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_DISK_FULL_TEXT = ("no space left", "file too large", "disk quota", "short write", "failed to write",
                   "write error", "writeblock", "i/o error", "failed to commit", "database or disk is full")


def _as_write_error(exc: BaseException, output_dir: Path):
    """An :class:`OutputWriteError` when ``exc`` (OSError or a GDAL/OGR error) comes from writing outputs."""
    import rasterio.errors

    from backend.errors import OutputWriteError, RsfmError

    if isinstance(exc, RsfmError):
        return None
    is_os = isinstance(exc, OSError) and getattr(exc, "errno", None) in _DISK_FULL
    text = str(exc).lower()
    is_gdal = (isinstance(exc, (rasterio.errors.RasterioError, OSError)) or type(exc).__module__.startswith(
        ("pyogrio", "rasterio"))) and any(t in text for t in _DISK_FULL_TEXT)
    if not (is_os or is_gdal):
        return None
    return OutputWriteError(f"writing the outputs to {output_dir} failed ({exc}); the disk may be full or a file "
                            "size limit reached. Nothing was kept: free some space (or choose another output_dir) "
                            "and submit the job again")


def _px_to_crs_affine(spec: JobSpec) -> list[float]:
    t = spec.plan.window_transform
    return [t.a, t.b, t.d, t.e, t.c, t.f]


def _center_lat(spec: JobSpec) -> float | None:
    import rasterio
    from rasterio.crs import CRS
    if not CRS.from_wkt(spec.plan.crs_wkt).is_geographic:
        return None
    b = rasterio.windows.bounds(spec.plan.window, spec.plan.transform)
    return (b[1] + b[3]) / 2


# -- dense: semantic segmentation & change detection ---------------------------------------------------

def _run_class_raster(rc: RunContext, keep: list[int] | None, raster_name: str, layer: str) -> dict[str, Any]:
    spec, cfg = rc.spec, rc.spec.config
    win = spec.plan.window
    k = len(cfg.classes)
    tif_tmp, tif_final = rc.out.reserve("", "tif")
    blocks = dense_blocks(rc.source, spec.params)
    index_of = {(int(b.core.row_off), int(b.core.col_off)): i for i, b in enumerate(blocks)}
    # everything the class map depends on: a journal written under other conditions is discarded (the
    # rasters by path, size and mtime, as for sparse tasks: a raster rewritten in place starts afresh)
    fingerprint = {**_run_identity(spec), "params": [spec.params.tile_size_px, spec.params.tile_overlap_px,
                                                      spec.params.batch_size, spec.params.block_size_px]}
    if spec.plan.aoi is not None:
        fingerprint["aoi"] = spec.plan.aoi.digest
    journal = rc.out.journal("", fingerprint)
    writer = ClassRasterWriter(tif_tmp, int(win.width), int(win.height), spec.plan.crs_wkt,
                               spec.plan.window_transform, cfg.classes, description=raster_name)

    def sink(window, scores: np.ndarray, valid: np.ndarray) -> None:
        if scores.shape[0] != k:
            raise ModelPackageError(f"model {spec.entry.id!r} returned {scores.shape[0]} channels but its "
                                    f"package lists {k} classes; fix classes or architecture_kwargs")
        cls = scores.argmax(axis=0).astype(np.uint8)
        cls[~valid] = NODATA_CLASS
        writer.write_block(window, cls)
        journal.record(index_of[(int(window.row_off), int(window.col_off))], cls)

    ok = False
    try:
        resumed = [i for i in journal.done() if i < len(blocks)]
        for i in resumed:  # a resumed job: copy the blocks finished before the crash
            writer.write_block(blocks[i].core, journal.load(i))
        if resumed:
            rc.job.warn(f"resumed: {len(resumed)} of {len(blocks)} blocks were already done")
        run_dense(rc.source, rc.model, spec.params, sink, rc.progress, skip=resumed, n_classes=k)
        ok = True
    finally:
        writer.close(tags={"RSFM_MODEL": rc.provenance["model"], "RSFM_PARAMETERS": rc.provenance["parameters"],
                           "RSFM_SOURCE": rc.provenance["source"], "RSFM_CREATED": rc.provenance["created"]},
                     overviews=ok)
    if int(writer.counts.sum()) == 0:
        rc.job.warn(NO_VALID_PIXELS)
    qml_tmp, qml_final = rc.out.reserve("", "qml")
    write_text(qml_tmp, raster_qml(cfg.classes))
    px_area = abs(spec.plan.window_transform.a * spec.plan.window_transform.e)
    fac = area_factor_m2(spec.plan.crs_wkt, _center_lat(spec)) * px_area
    stats = {"classes": [{"class_id": i, "class_name": c.name, "pixels": int(writer.counts[i]),
                          "area_m2": float(writer.counts[i] * fac)} for i, c in enumerate(cfg.classes)]}
    outputs = [{"kind": "raster", "path": str(tif_final), "style": str(qml_final), "name": raster_name}]
    if spec.options.get("vectorize", True):
        rc.job.progress(0.96, "vectorising")
        # "<base>_polygons.gpkg" + "<base>_polygons.qml": QGIS auto-loads a .qml named like the data file,
        # so the raster and the vector layer each get their own style when opened by hand
        gpkg_tmp, gpkg_final = rc.out.reserve("_polygons", "gpkg")
        vw = VectorWriter(gpkg_tmp, layer, spec.plan.crs_wkt,
                          {"class_id": np.int32, "class_name": object, "area_m2": np.float64}, rc.provenance)
        polygonize_class_raster(tif_tmp, vw, cfg.classes, spec.plan.crs_wkt, rc.settings.max_vectorize_pixels,
                                keep=keep)
        vw.close()
        vqml_tmp, vqml_final = rc.out.reserve("_polygons", "qml")
        write_text(vqml_tmp, vector_qml(cfg.classes))
        outputs.append({"kind": "vector", "path": str(gpkg_final), "layer": layer, "style": str(vqml_final),
                        "name": f"{raster_name} polygons"})
        stats["polygons"] = vw.count
    return {"outputs": outputs, "stats": stats}


@register_task("semantic_segmentation")
def run_semantic_segmentation(rc: RunContext) -> dict[str, Any]:
    return _run_class_raster(rc, keep=None, raster_name=f"{rc.spec.entry.id} classes", layer="classes")


@register_task("change_detection")
def run_change_detection(rc: RunContext) -> dict[str, Any]:
    k = len(rc.spec.config.classes)
    return _run_class_raster(rc, keep=list(range(1, k)), raster_name=f"{rc.spec.entry.id} change", layer="changes")


# -- sparse: scene classification & detection --------------------------------------------------------

def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _finish_vector(rc: RunContext, vw: VectorWriter, final: Path, layer: str, name: str,
                   outline_only: bool = False) -> dict[str, Any]:
    """Close the GeoPackage, write its style, and describe it as a job output."""
    vw.close()
    qml_tmp, qml_final = rc.out.reserve("", "qml")
    write_text(qml_tmp, vector_qml(rc.spec.config.classes, outline_only=outline_only))
    return {"kind": "vector", "path": str(final), "layer": layer, "style": str(qml_final), "name": name}


JOURNAL_INTERVAL_S = 3.0  # seconds of work per sparse journal unit (one small file each)


def _journal_interval_s(settings: Any) -> float:
    """The sparse journal's unit length: setting ``journal_interval_s`` (``--journal-interval-s`` /
    ``RSFM_JOURNAL_INTERVAL_S``; tests use 0: one unit per batch), else :data:`JOURNAL_INTERVAL_S` for a settings
    object without it."""
    return max(0.0, float(getattr(settings, "journal_interval_s", JOURNAL_INTERVAL_S)))


def _file_identity(path: str | None) -> list[Any] | None:
    """``[path, size, mtime_ns]`` of an input file: a raster rewritten in place invalidates a journal."""
    import os

    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:  # not a plain file (e.g. a GDAL virtual path): the path alone
        return [path]
    return [path, st.st_size, st.st_mtime_ns]


def _run_identity(spec: JobSpec) -> dict[str, Any]:
    """What every journal fingerprint (dense and sparse) holds: model revision, runtime, precision, the input
    rasters' identities (:func:`_file_identity`), processing window and bands."""
    win = spec.plan.window
    return {"model": f"{spec.entry.id}@{spec.entry.revision}", "runtime": spec.runtime,
            "precision": spec.precision, "raster": _file_identity(spec.plan.path),
            "after": _file_identity(spec.after_plan.path if spec.after_plan else None),
            "window": [int(win.col_off), int(win.row_off), int(win.width), int(win.height)],
            "bands": spec.plan.bands}


def _sparse_journal(rc: RunContext, record_format: str, batches: list[list[Any]] | None = None
                    ) -> tuple[BatchJournal, list[list[Any]]]:
    """The job's batch journal and the tile batches it indexes (see :class:`~backend.outputs.BatchJournal`).

    ``batches`` defaults to the job's tile grid (:func:`~backend.engine.tile_batches`); a task with its own
    work list (scene classification per polygon) passes its batches, which must follow from the fingerprinted
    request alone.

    The fingerprint holds everything the per-batch records depend on — task and record format, model id and
    revision (a hash of config + weights, or the hub commit), runtime, raster identity, processing window,
    bands, tiling and every option (thresholds, bbox, aoi, ...) — so a journal written under other conditions
    is discarded and the job starts from the first tile. A resumed job gets a ``resumed: k of n tiles ...``
    warning.
    """
    spec = rc.spec
    win = spec.plan.window
    fingerprint = {"format": record_format, "task": spec.task, **_run_identity(spec),
                   "params": [spec.params.tile_size_px, spec.params.tile_overlap_px, spec.params.batch_size],
                   "options": {k: v for k, v in spec.options.items() if k != "output_name"}}
    if getattr(spec.plan, "aoi", None) is not None:
        fingerprint["options"]["aoi"] = spec.plan.aoi.digest  # the polygons can be large: their hash
    if batches is None:
        batches = tile_batches(int(win.height), int(win.width), spec.params, rc.source.aoi_grid)
    bj = BatchJournal(rc.out.journal("", fingerprint), _journal_interval_s(rc.settings), len(batches))
    if bj.resumed:
        done = sum(len(batches[i]) for i in bj.resumed)
        total = sum(len(b) for b in batches)
        rc.job.warn(f"resumed: {done} of {total} tiles were already done")
    return bj, batches


def _iter_new_batches(rc: RunContext, bj: BatchJournal, batches: list[list[Any]]):
    """``(batch index, tiles, model args, valid)`` for the batches the journal lacks, with tile progress."""
    skip = set(bj.resumed)
    todo = [i for i in range(len(batches)) if i not in skip]
    total = sum(len(b) for b in batches)
    done = total - sum(len(batches[i]) for i in todo)
    rc.progress(done, total)
    for bi, (tiles, args, valid) in zip(todo, iter_tile_batches(rc.source, rc.spec.params, skip=skip),
                                        strict=True):
        yield bi, tiles, args, valid
        done += len(tiles)
        rc.progress(done, total)
    bj.flush()


def scene_probabilities(rc: RunContext, args: list[np.ndarray], n: int) -> np.ndarray:
    """``(n, K)`` float64 class probabilities of one batch of ``n`` tiles through the scene model."""
    logits = np.asarray(rc.model(*args), dtype=np.float32)
    k = len(rc.spec.config.classes)
    if logits.ndim != 2 or logits.shape != (n, k):
        raise ModelPackageError(f"scene model returned shape {logits.shape}; expected B x K = {n} x {k}")
    return _softmax(logits.astype(np.float64))


@register_task("scene_classification")
def run_scene_classification(rc: RunContext) -> dict[str, Any]:
    """One label per tile: the tile's owned cell (tiles split overlaps in the middle) becomes a polygon."""
    if rc.spec.options.get("classify_per") == "polygon":
        from backend.aoi import run_polygon_classification

        return run_polygon_classification(rc)
    import shapely
    from shapely.affinity import affine_transform

    spec, cfg = rc.spec, rc.spec.config
    gpkg_tmp, gpkg_final = rc.out.reserve("", "gpkg")
    vw = VectorWriter(gpkg_tmp, "scenes", spec.plan.crs_wkt,
                      {"class_id": np.int32, "class_name": object, "score": np.float64}, rc.provenance,
                      geometry_type="Polygon")
    aff = _px_to_crs_affine(spec)
    counts = np.zeros(len(cfg.classes), dtype=np.int64)
    # per batch: the labelled tiles' positions in the batch, class and score (journalled, for resume)
    bj, batches = _sparse_journal(rc, "scenes-v1")
    for bi, tiles, args, valid in _iter_new_batches(rc, bj, batches):
        probs = scene_probabilities(rc, args, len(tiles))
        pos, cids, scs = [], [], []
        for k, (ti, p, v) in enumerate(zip(tiles, probs, valid, strict=True)):
            r0, r1 = ti.core_rows
            c0, c1 = ti.core_cols
            if not v[r0 - ti.row: r1 - ti.row, c0 - ti.col: c1 - ti.col].any():
                continue  # a tile that is all nodata gets no label
            cid = int(p.argmax())
            pos.append(k)
            cids.append(cid)
            scs.append(float(p[cid]))
        bj.add(bi, {"pos": np.asarray(pos, np.int64), "class_id": np.asarray(cids, np.int64),
                    "score": np.asarray(scs, np.float64)})
    for bi, rec in bj.records():
        for k, cid, score in zip(rec["pos"].tolist(), rec["class_id"].tolist(), rec["score"].tolist(), strict=True):
            ti = batches[bi][k]
            counts[cid] += 1
            cell = affine_transform(shapely.box(ti.core_cols[0], ti.core_rows[0], ti.core_cols[1], ti.core_rows[1]),
                                    aff)
            vw.add(cell, class_id=cid, class_name=cfg.classes[cid].name, score=score)
    if vw.count == 0:
        rc.job.warn(NO_VALID_PIXELS)
    out = _finish_vector(rc, vw, gpkg_final, "scenes", f"{spec.entry.id} scenes")
    return {"outputs": [out], "stats": {"tiles": vw.count, "classes": [
        {"class_id": i, "class_name": c.name, "tiles": int(counts[i])} for i, c in enumerate(cfg.classes)]}}


def rotated_box_polygon(cx: float, cy: float, w: float, h: float, angle_rad: float):
    """Rotated box in pixel coordinates (col, row; row grows downwards) as a shapely Polygon.

    ``angle_rad`` is counter-clockwise as seen on screen, so the box's width axis points along
    ``(cos a, -sin a)`` in (col, row).
    """
    import shapely

    ux, uy = math.cos(angle_rad), -math.sin(angle_rad)
    vx, vy = -uy, ux  # perpendicular (height axis)
    hw, hh = w / 2, h / 2
    pts = [(cx + sx * hw * ux + sy * hh * vx, cy + sx * hw * uy + sy * hh * vy)
           for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    return shapely.Polygon(pts)


def nms_polygons(polys: list, scores: np.ndarray, labels: np.ndarray, iou_threshold: float,
                 pixel_masks: bool = False) -> list[int]:
    """Class-wise greedy non-maximum suppression on arbitrary polygons (boxes, rotated boxes, masks).

    An STR-tree query gives each kept polygon its candidates (same class, not yet settled), whose IoUs are
    computed in one vectorised call. ``pixel_masks``: the polygons are unions of whole pixels
    (integer vertices, as :func:`_mask_polygon` makes them): their intersections are then counted on their
    rasterised masks, which gives the same (integer) areas as the polygon intersection, much faster for the
    many-vertex outlines of instance masks. Returns kept indices, best first.
    """
    import shapely

    if not polys:
        return []
    geoms = np.asarray(polys, dtype=object)
    areas = shapely.area(geoms)
    tree = shapely.STRtree(geoms)
    # masks only need their bounding boxes to overlap (a shared edge or corner adds no area either way)
    predicate = None if pixel_masks else "intersects"
    labels = np.asarray(labels)
    rasters = _PixelMasks(polys) if pixel_masks else None
    order = np.argsort(-scores, kind="stable")
    done = np.zeros(len(polys), dtype=bool)  # kept or suppressed: either way settled
    keep = []
    for i in order:
        if done[i]:
            continue
        keep.append(int(i))
        done[i] = True
        cand = tree.query(geoms[i], predicate=predicate)  # (queried one at a time: memory stays bounded)
        cand = np.sort(cand[~done[cand] & (labels[cand] == labels[i])])
        if not len(cand):
            continue
        if rasters is not None:
            inter = np.asarray([rasters.intersection(i, j) for j in cand.tolist()], dtype=np.float64)
        else:
            inter = shapely.area(shapely.intersection(geoms[i], geoms[cand]))
        union = areas[i] + areas[cand] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            gone = cand[(union > 0) & (inter / np.where(union > 0, union, 1.0) > iou_threshold)]
        done[gone] = True
        if rasters is not None:
            rasters.drop([i, *gone.tolist()])  # settled: their masks are not needed again
    return keep


class _PixelMasks:
    """Rasterised pixel-union polygons, made on first use: ``(row0, col0, bool mask)`` over each's bounds."""

    def __init__(self, polys: list) -> None:
        self.polys = polys
        self._masks: dict[int, tuple[int, int, np.ndarray]] = {}

    def get(self, i: int) -> tuple[int, int, np.ndarray]:
        if i not in self._masks:
            import shapely

            c0, r0, c1, r1 = (int(round(v)) for v in self.polys[i].bounds)
            # pixel centres inside the polygon: exactly the pixels it is the union of (a centre is never on
            # its boundary); ~7x faster than rasterio's rasterize for these small masks
            yy, xx = np.mgrid[r0:r1, c0:c1]
            self._masks[i] = (r0, c0, shapely.contains_xy(self.polys[i], xx + 0.5, yy + 0.5))
        return self._masks[i]

    def drop(self, indices: list[int]) -> None:
        for i in indices:
            self._masks.pop(i, None)

    def intersection(self, i: int, j: int) -> int:
        """Pixels the two masks share (= their polygons' intersection area)."""
        ri, ci, mi = self.get(i)
        rj, cj, mj = self.get(j)
        r0, c0 = max(ri, rj), max(ci, cj)
        r1, c1 = min(ri + mi.shape[0], rj + mj.shape[0]), min(ci + mi.shape[1], cj + mj.shape[1])
        if r1 <= r0 or c1 <= c0:
            return 0
        return int(np.count_nonzero(mi[r0 - ri: r1 - ri, c0 - ci: c1 - ci] & mj[r0 - rj: r1 - rj, c0 - cj: c1 - cj]))


def _mask_polygon(mask: np.ndarray, col0: int, row0: int):
    """Polygons of a boolean mask in pixel coordinates of the processing window (None if empty)."""
    import shapely
    from affine import Affine
    from rasterio.features import shapes

    # every ring of every piece built in two vectorised shapely calls (one Polygon / LinearRing at a time was a
    # third of an instance job on noisy masks full of holes): the same rings in the same order
    xy: list = []
    ring_sizes, ring_piece = [], []
    for g, v in shapes(mask.astype(np.uint8), mask=mask, connectivity=4, transform=Affine.translation(col0, row0)):
        if v != 1:
            continue
        piece = ring_piece[-1] + 1 if ring_piece else 0
        for ring in g["coordinates"]:  # the shell, then the holes
            xy.extend(ring)
            ring_sizes.append(len(ring))
            ring_piece.append(piece)
    if not xy:
        return None
    rings = shapely.linearrings(np.asarray(xy, dtype=np.float64),
                                indices=np.repeat(np.arange(len(ring_sizes)), ring_sizes))
    polys = list(shapely.polygons(rings, indices=np.asarray(ring_piece)))
    # pieces touching at pixel corners: union them into one valid (Multi)Polygon
    geom = shapely.union_all(polys) if len(polys) > 1 else polys[0]
    if geom.geom_type == "GeometryCollection":
        geom = shapely.MultiPolygon([g for g in geom.geoms if g.geom_type == "Polygon"])
    return geom


EXTRA_FIELDS = ("angle_deg", "length_px", "width_px")  # per-detection extras (rotated boxes; zeros otherwise)


def _detection_record(polys: list, scores: list[float], labels: list[int], extra: list[dict[str, float]],
                      any_valid: bool) -> BatchRecord:
    """One batch's detections (pixel coordinates of the processing window) as a journal record."""
    wkb, wkb_len = pack_geometries(polys)
    return {"wkb": wkb, "wkb_len": wkb_len, "score": np.asarray(scores, np.float64).reshape(-1),
            "label": np.asarray(labels, np.int64).reshape(-1), "any_valid": np.asarray([any_valid]),
            "extra": np.asarray([[e.get(f, 0.0) for f in EXTRA_FIELDS] for e in extra],
                                np.float64).reshape(-1, len(EXTRA_FIELDS))}


def _detections_from_records(records: list[tuple[int, BatchRecord]]
                             ) -> tuple[list, list[float], list[int], list[dict[str, float]], bool]:
    """Every batch's detections in batch order: ``(polygons, scores, labels, extras, any valid pixel)``.

    Both an uninterrupted and a resumed job go through the records, so both merge exactly the same
    candidates in the same order (NMS keeps the first of equal scores).
    """
    polys, scores, labels, extra, any_valid = [], [], [], [], False
    for _, rec in records:
        polys += unpack_geometries(rec["wkb"], rec["wkb_len"])
        scores += rec["score"].tolist()
        labels += rec["label"].tolist()
        extra += [dict(zip(EXTRA_FIELDS, row, strict=True)) for row in rec["extra"].tolist()]
        any_valid = any_valid or bool(rec["any_valid"].any())
    return polys, scores, labels, extra, any_valid


def _run_detection(rc: RunContext, kind: str) -> dict[str, Any]:
    import shapely
    from shapely.affinity import affine_transform

    spec, cfg = rc.spec, rc.spec.config
    thr = float(spec.options["score_threshold"])
    # per batch: its detections before the global merge (journalled, for resume)
    bj, batches = _sparse_journal(rc, f"{kind}-v1")
    for bi, tiles, args, valid in _iter_new_batches(rc, bj, batches):
        polys, scores, labels, extra = [], [], [], []
        preds = rc.model(*args)
        if not isinstance(preds, (list, tuple)) or len(preds) != len(tiles):
            raise ModelPackageError(f"a {kind} model must return a list of {len(tiles)} dicts (one per tile)")
        for ti, pred, v in zip(tiles, preds, valid, strict=True):
            sc = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
            lb = np.asarray(pred["labels"], dtype=np.int64).reshape(-1)
            key = "boxes_cxcywha" if kind == "rotated_detection" else "boxes_xyxy"
            bx = np.asarray(pred[key], dtype=np.float64).reshape(-1, 5 if key == "boxes_cxcywha" else 4)
            masks = np.asarray(pred["masks"]) if kind == "instance_segmentation" else None
            for n in np.nonzero(sc >= thr)[0]:
                if kind == "rotated_detection":
                    cx, cy = bx[n, 0], bx[n, 1]
                else:
                    cx, cy = (bx[n, 0] + bx[n, 2]) / 2, (bx[n, 1] + bx[n, 3]) / 2
                iy, ix = int(cy), int(cx)
                # keep a detection only in the tile that owns its centre, and not on nodata / padding
                if not (ti.core_rows[0] <= ti.row + cy < ti.core_rows[1]
                        and ti.core_cols[0] <= ti.col + cx < ti.core_cols[1]):
                    continue
                if not (0 <= iy < v.shape[0] and 0 <= ix < v.shape[1] and v[iy, ix]):
                    continue
                if not 0 <= lb[n] < len(cfg.classes):
                    raise ModelPackageError(f"model returned label {lb[n]} but the package has "
                                            f"{len(cfg.classes)} classes")
                if kind == "rotated_detection":
                    poly = rotated_box_polygon(ti.col + cx, ti.row + cy, bx[n, 2], bx[n, 3], bx[n, 4])
                    extra.append({"angle_deg": math.degrees(bx[n, 4]), "length_px": max(bx[n, 2], bx[n, 3]),
                                  "width_px": min(bx[n, 2], bx[n, 3])})
                elif kind == "instance_segmentation":
                    m = masks[n] >= 0.5
                    m &= v[: m.shape[0], : m.shape[1]]
                    poly = _mask_polygon(m[: ti.height, : ti.width], ti.col, ti.row)
                    if poly is None:
                        continue
                    extra.append({})
                else:
                    x0, y0, x1, y1 = bx[n]
                    poly = shapely.box(ti.col + x0, ti.row + y0, ti.col + x1, ti.row + y1)
                    extra.append({})
                polys.append(poly)
                scores.append(float(sc[n]))
                labels.append(int(lb[n]))
        bj.add(bi, _detection_record(polys, scores, labels, extra, bool(valid.any())))
    polys, scores, labels, extra, any_valid = _detections_from_records(bj.records())
    if not any_valid:
        rc.job.warn(NO_VALID_PIXELS)
    rc.job.progress(0.96, f"merging {len(polys)} detections")
    keep = nms_polygons(polys, np.asarray(scores), np.asarray(labels), float(spec.options["nms_iou_threshold"]),
                        pixel_masks=kind == "instance_segmentation")
    aff = _px_to_crs_affine(spec)
    to_m = linear_factor_m(spec.plan.crs_wkt, _center_lat(spec)) * math.sqrt(abs(aff[0] * aff[3]))
    fields: dict[str, Any] = {"class_id": np.int32, "class_name": object, "score": np.float64}
    if kind == "rotated_detection":
        fields.update(angle_deg=np.float64, length_m=np.float64, width_m=np.float64)
    else:
        fields["area_m2"] = np.float64
    layer = {"object_detection": "detections", "rotated_detection": "rotated_detections",
             "instance_segmentation": "instances"}[kind]
    gpkg_tmp, gpkg_final = rc.out.reserve("", "gpkg")
    vw = VectorWriter(gpkg_tmp, layer, spec.plan.crs_wkt, fields, rc.provenance,
                      geometry_type="MultiPolygon" if kind == "instance_segmentation" else "Polygon")
    counts = np.zeros(len(cfg.classes), dtype=np.int64)
    for i in keep:
        geom = affine_transform(polys[i], aff)
        vals = {"class_id": labels[i], "class_name": cfg.classes[labels[i]].name, "score": scores[i]}
        if kind == "rotated_detection":
            e = extra[i]
            vals.update(angle_deg=e["angle_deg"], length_m=e["length_px"] * to_m, width_m=e["width_px"] * to_m)
        else:
            vals["area_m2"] = polys[i].area * to_m * to_m
        vw.add(geom, **vals)
        counts[labels[i]] += 1
    out = _finish_vector(rc, vw, gpkg_final, layer, f"{spec.entry.id} {layer.replace('_', ' ')}",
                         outline_only=kind != "instance_segmentation")
    return {"outputs": [out], "stats": {"detections": len(keep), "before_nms": len(polys), "classes": [
        {"class_id": i, "class_name": c.name, "count": int(counts[i])} for i, c in enumerate(cfg.classes)]}}


@register_task("object_detection")
def run_object_detection(rc: RunContext) -> dict[str, Any]:
    return _run_detection(rc, "object_detection")


@register_task("rotated_detection")
def run_rotated_detection(rc: RunContext) -> dict[str, Any]:
    return _run_detection(rc, "rotated_detection")


@register_task("instance_segmentation")
def run_instance_segmentation(rc: RunContext) -> dict[str, Any]:
    return _run_detection(rc, "instance_segmentation")
