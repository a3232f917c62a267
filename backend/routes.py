"""Core endpoints: health, OpenAPI, models, jobs. Registered in :mod:`backend.routing`'s table."""

from __future__ import annotations

from typing import Any

from backend import API_VERSION, __version__
from backend.errors import BadRequestError
from backend.openapi import build_openapi
from backend.raster import inspect_raster
from backend.routing import Request, route
from backend.runtimes import available_runtimes
from training.package import TASKS

_STR = {"type": "string"}
MODEL_INFO = {"type": "object", "properties": {"id": _STR, "source": _STR, "path": _STR, "revision": _STR,
                                               "config": {"type": "object"}, "card": _STR}}
JOB = {"type": "object", "properties": {
    "id": _STR, "task": _STR, "model": _STR,
    "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
    "progress": {"type": "number"}, "message": _STR, "created": _STR, "updated": _STR,
    "warnings": {"type": "array", "items": _STR}, "error": {"type": "object", "nullable": True},
    "result": {"type": "object", "nullable": True}, "request": {"type": "object"}}}
_ABS = {"type": "string", "minLength": 1, "pattern": "^/", "description": "absolute path on the backend's machine"}
JOB_REQUEST = {"type": "object", "required": ["task", "model", "inputs", "output_dir"], "additionalProperties": False,
               "properties": {
    "task": {"type": "string", "enum": list(TASKS)}, "model": {"type": "string", "minLength": 1},
    "inputs": {"type": "object", "required": ["raster"], "additionalProperties": False,
               "properties": {"raster": _ABS, "raster_after": _ABS}},
    "output_dir": _ABS,
    "options": {"type": "object", "additionalProperties": False, "properties": {
        "tile_size_px": {"type": "integer", "minimum": 8}, "tile_overlap_px": {"type": "integer", "minimum": 0},
        "batch_size": {"type": "integer", "minimum": 1, "maximum": 256},
        "bands": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
        "score_threshold": {"type": "number", "minimum": 0, "maximum": 1},
        "nms_iou_threshold": {"type": "number", "minimum": 0, "maximum": 1},
        "bbox": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
        "vectorize": {"type": "boolean"}, "allow_gsd_mismatch": {"type": "boolean"},
        "output_name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"},
        "runtime": {"type": "string", "enum": ["auto", "torch", "onnx"]},
        "precision": {"type": "string", "enum": ["auto", "fp32", "bf16"]},
        "aoi": {"type": "object", "required": ["type"], "description":
                "area of interest in the raster's CRS: a GeoJSON Polygon or MultiPolygon, a Feature, or a "
                "FeatureCollection of polygon features (feature id: properties.fid, else id). Only pixels inside "
                "are written (dense tasks) and only objects centred inside are kept (sparse tasks); tiles "
                "outside are not run. At most 50000 vertices",
                "properties": {
                    "type": {"type": "string",
                             "enum": ["Polygon", "MultiPolygon", "Feature", "FeatureCollection"]},
                    "coordinates": {"type": "array"}, "geometry": {"type": "object"},
                    "properties": {"type": "object", "nullable": True},
                    "features": {"type": "array", "minItems": 1, "items": {"type": "object"}}}},
        "classify_per": {"type": "string", "enum": ["tile", "polygon"], "description":
                         "scene_classification: one class per tile of a grid (default) or per aoi feature"}}}}}


@route("GET", "/api/v1/health", "Liveness, versions, device, runtimes and job counts",
       response_schema={"type": "object", "properties": {
           "status": _STR, "version": _STR, "api_version": {"type": "integer"}, "device": _STR,
           "runtimes": {"type": "array", "items": _STR}, "jobs": {"type": "object"}}})
def health(req: Request) -> dict[str, Any]:
    app = req.app
    return {"status": "ok", "version": __version__, "api_version": API_VERSION,
            "device": app.device_if_known(), "runtimes": available_runtimes(),
            "jobs": app.jobs.counts(), "settings": app.settings.public(), "routes": app.route_modules}


@route("GET", "/api/v1/openapi.json", "This API as an OpenAPI 3 document")
def openapi(req: Request) -> dict[str, Any]:
    return build_openapi()


@route("GET", "/api/v1/models", "Installed model packages (bundled, --models-dir, fetched hub models)",
       response_schema={"type": "object", "properties": {"models": {"type": "array", "items": MODEL_INFO}}})
def list_models(req: Request) -> dict[str, Any]:
    reg = req.app.models
    models = [e.info() for e in reg.list()]
    return {"models": models, "skipped": [{"path": p, "reason": r} for p, r in reg.broken.items()]}


@route("GET", "/api/v1/models/{model_id}", "One model package (ids with '/' are URL-encoded)",
       response_schema=MODEL_INFO)
def get_model(req: Request) -> dict[str, Any]:
    return req.app.models.get(req.params["model_id"]).info()


@route("POST", "/api/v1/models/{model_id}/check", "Check a raster against a model before running it",
       request_schema={"type": "object", "required": ["raster"], "additionalProperties": False, "properties": {
           "raster": _ABS, "options": JOB_REQUEST["properties"]["options"]}},
       response_schema={"type": "object", "properties": {
           "ok": {"type": "boolean"}, "problems": {"type": "array", "items": _STR},
           "warnings": {"type": "array", "items": _STR}}})
def check_model(req: Request) -> dict[str, Any]:
    body = req.body
    if not isinstance(body, dict) or not isinstance(body.get("raster"), str):
        raise BadRequestError('send {"raster": "/absolute/path.tif"} (optionally "options": {...})')
    entry = req.app.models.get(req.params["model_id"])
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequestError("options must be an object")
    _, problems, warnings = inspect_raster(entry.config, body["raster"], options)
    return {"ok": not problems, "problems": [p.message for p in problems],
            "codes": [p.code for p in problems], "warnings": warnings}


@route("POST", "/api/v1/jobs", "Submit a job (validated first; answers 202 with the queued Job)",
       request_schema=JOB_REQUEST, response_schema=JOB)
def submit_job(req: Request) -> tuple[int, dict[str, Any]]:
    from backend.tasks import create_job  # heavy imports (torch via runtimes) only when a job comes

    job = create_job(req.app, req.body)
    return 202, _submit(req, job)


def _submit(req: Request, job) -> dict[str, Any]:
    try:
        req.app.jobs.submit(job)
    except Exception:
        hook, job.on_final = job.on_final, None  # refused (queue full): drop the job's record
        if hook is not None:
            hook(job)
        raise
    return job.to_dict()


@route("POST", "/api/v1/jobs/{job_id}/resume", "Resume a job interrupted by a backend crash (dense tasks continue "
       "from their last finished block; other tasks start again)",
       request_schema={"type": "object", "additionalProperties": False, "properties": {"output_dir": _ABS}},
       response_schema=JOB)
def resume_job(req: Request) -> tuple[int, dict[str, Any]]:
    from backend.tasks import resume_job as _resume

    job = _resume(req.app, req.params["job_id"], req.body)
    return 202, _submit(req, job)


@route("GET", "/api/v1/jobs", "All known jobs, oldest first",
       response_schema={"type": "object", "properties": {"jobs": {"type": "array", "items": JOB}}})
def list_jobs(req: Request) -> dict[str, Any]:
    return {"jobs": [j.to_dict() for j in req.app.jobs.list()]}


@route("GET", "/api/v1/jobs/{job_id}", "One job's state, progress and result", response_schema=JOB)
def get_job(req: Request) -> dict[str, Any]:
    return req.app.jobs.get(req.params["job_id"]).to_dict()


@route("POST", "/api/v1/jobs/{job_id}/cancel", "Cancel a job (running jobs stop after the current tile)",
       response_schema=JOB)
def cancel_job(req: Request) -> dict[str, Any]:
    return req.app.jobs.cancel(req.params["job_id"]).to_dict()
