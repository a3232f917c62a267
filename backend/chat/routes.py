"""Chat endpoints (registered in :mod:`backend.routing`; the server imports this module by name).

* ``POST /api/v1/chat`` — answer one question synchronously: ``{"answer": ChatAnswer, "facts": ...}``.
* ``POST /api/v1/chat/jobs`` — same body; answers 202 with a chat job whose ``text`` grows as the answer is
  produced. The plugin polls ``GET /api/v1/chat/jobs/{id}?since=N`` (``since`` = characters it already has)
  until ``state`` is ``succeeded`` or ``failed``; the final ``answer`` is the *verified* text, which may
  differ from the streamed raw text when the verifier removed sentences.
* ``POST /api/v1/chat/jobs/{id}/cancel`` — stop waiting for perception / generation.
* ``POST /api/v1/chat/facts`` — only the fact sheet (text + JSON), for inspection and the evaluation.

Request body (ChatRequest)::

    {"raster": "/abs/in.tif", "bbox": [minx, miny, maxx, maxy] | null, "aoi": GeoJSON polygons | null,
     "outputs": [{"path": "/abs/landcover.tif", "task": "semantic_segmentation", "classes": [...]},
                 {"path": "/abs/det.gpkg", "task": "object_detection", "layer": "detections"}],
     "jobs": ["<id of a finished job>", ...],
     "models": {"semantic_segmentation": "<model id>", "object_detection": "<model id>"},
     "compare_with": "/abs/other.tif", "compare_order": "later" | "earlier",
     "output_dir": "/abs/dir for model outputs (default: a temp dir)",
     "question": "How many ships?", "history": [{"role": "user"|"assistant", "content": "..."}],
     "backend": "template" | "builtin" | {"name": "openai", "base_url", "model", "api_key_env"}
                | {"name": "hf_dir", "path"},
     "mode": "auto" | "template" | "phrase" | "free", "score_threshold": 0.3, "max_tokens": 160}

``bbox`` (the visible extent) or ``aoi`` (selected polygons: a GeoJSON Polygon, MultiPolygon, Feature or
FeatureCollection in the raster's CRS, as ``options.aoi`` of a job) restricts the facts to that area: shares,
areas and changes count the pixels inside the polygons, objects count when their centre is inside.

``outputs``, ``jobs`` and ``models`` may be combined; ``models`` runs the perception models through the
backend's own job machinery (``backend.tasks.create_job`` + the app's ``JobManager``, so the runs appear in
``GET /api/v1/jobs`` and can be cancelled there) and caches their outputs per (raster, bbox, model).

Change against a second image: ``compare_with`` is another raster of the same place, ``compare_order`` says
whether it is the ``later`` (default) or the ``earlier`` image. The backend runs the change model named in
``models["change_detection"]`` (default: the first installed change-detection model) on the pair and adds
change facts (changed share, area, regions ``C1``..); a change output passed in ``outputs`` (task
``change_detection``: the change GeoTIFF and/or its polygons) is used as it is.
"""

from __future__ import annotations

import logging
import re
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from backend.chat.facts import TASKS, FactSheet, FactSheetError, PerceptionOutput, build_fact_sheet
from backend.chat.lm import make_backend
from backend.chat.router import MODES, answer_question
from backend.errors import BadRequestError, JobNotFoundError, RsfmError
from backend.routing import Request, route

log = logging.getLogger(__name__)

_STR = {"type": "string"}
BACKEND_NAMES = ("template", "none", "builtin", "openai", "hf_dir")  # what chat.lm.make_backend knows
COMPARE_ORDERS = ("later", "earlier")
AOI_GEOMETRY = "_aoi_geometry"  # key _parse adds to the body: the request's aoi as one shapely geometry
CHAT_REQUEST = {"type": "object", "required": ["raster", "question"], "properties": {
    "raster": {"type": "string", "minLength": 1, "pattern": "^(/|[A-Za-z]:[\\\\/])[^\\u0000]*$",
               "description": "absolute path of the selected raster layer's file"},
    "question": {"type": "string", "minLength": 1, "pattern": "\\S"},
    "bbox": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4, "nullable": True},
    "aoi": {"type": "object", "nullable": True, "description": "selected polygons (GeoJSON Polygon, MultiPolygon, "
            "Feature or FeatureCollection) in the raster's CRS: facts only inside them (and inside bbox if given)"},
    "outputs": {"type": "array", "items": {"type": "object", "required": ["path"], "properties": {
        "path": {"type": "string", "pattern": "^[^\\u0000]*$"}, "task": {"type": "string", "enum": list(TASKS)}, "layer": _STR,
        "classes": {"type": "array", "items": _STR}}}},
    "jobs": {"type": "array", "items": _STR},
    "models": {"type": "object", "additionalProperties": False,
               "properties": {t: {"type": "string", "minLength": 1, "description": "model id"} for t in TASKS}},
    "compare_with": {"type": "string", "minLength": 1, "pattern": "^(/|[A-Za-z]:[\\\\/])[^\\u0000]*$",
                     "description": "absolute path of a second image of the same place, for change facts"},
    "compare_order": {"type": "string", "enum": list(COMPARE_ORDERS),
                      "description": "whether compare_with is the later (default) or the earlier image"},
    "output_dir": {"type": "string", "pattern": "^(?![\\s\\S]*[\\\\/]\\.\\.([\\\\/]|$))(/|[A-Za-z]:[\\\\/])[^\\u0000]*$",
                   "description": "absolute folder for model outputs, no '..' (default: a temp dir)"},
    "history": {"type": "array", "items": {"type": "object", "required": ["role", "content"], "properties": {
        "role": {"type": "string", "enum": ["user", "assistant"]}, "content": _STR}}},
    "backend": {"oneOf": [{"type": "string", "enum": list(BACKEND_NAMES)},
                          {"type": "object", "required": ["name"], "properties": {
                              "name": {"type": "string", "enum": list(BACKEND_NAMES)}}}]},
    "mode": {"type": "string", "enum": list(MODES)},
    "score_threshold": {"type": "number", "minimum": 0, "maximum": 1},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 4096},
    "include_facts": {"type": "boolean"}}}
CHAT_ANSWER = {"type": "object", "properties": {
    "text": _STR, "intent": _STR, "mode": _STR, "cited": {"type": "array", "items": _STR},
    "objects": {"type": "array", "items": {"type": "object"}}, "crs": {"type": "string", "nullable": True},
    "verification": {"type": "object"}, "raw_lm_text": {"type": "string", "nullable": True},
    "timings_s": {"type": "object"}}}
CHAT_JOB = {"type": "object", "properties": {
    "id": _STR, "state": {"type": "string", "enum": ["queued", "perception", "generating", "succeeded", "failed",
                                                     "cancelled"]},
    "message": _STR, "text": _STR, "offset": {"type": "integer"}, "answer": {"nullable": True, **CHAT_ANSWER},
    "error": {"type": "object", "nullable": True}}}

# -------------------------------------------------------------------------------------- input handling

_SHEETS: OrderedDict[tuple, FactSheet] = OrderedDict()
_MODEL_RUNS: dict[tuple, list[PerceptionOutput]] = {}
_CACHE_LOCK = threading.Lock()


def _file_key(p: str) -> tuple[str, float, int]:
    try:
        st = Path(p).stat()
        return (p, st.st_mtime, st.st_size)
    except OSError:
        return (p, 0.0, 0)


def _is_abs(path: str) -> bool:
    """An absolute POSIX (``/...``) or Windows drive (``C:\\...``, ``C:/...``) path without NUL bytes.

    Deliberately independent of the server's OS so the documented pattern is exact; a Windows path on a
    POSIX server then fails later as a missing file (4xx), not here."""
    return bool(re.match(r"(/|[A-Za-z]:[\\/])", path)) and "\0" not in path


def _parse(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequestError('send a JSON object like {"raster": "/abs/in.tif", "question": "How many ships?", '
                              '"outputs": [...]}')
    raster = body.get("raster")
    if not isinstance(raster, str) or not _is_abs(raster):
        raise BadRequestError("'raster' must be the absolute path of the selected raster layer's file")
    if not isinstance(body.get("question"), str) or not body["question"].strip():
        raise BadRequestError("'question' must be a non-empty string")
    if (mode := body.get("mode", "auto")) not in MODES:
        raise BadRequestError(f"'mode' must be one of {', '.join(MODES)}, got {mode!r}")
    bbox = body.get("bbox")
    if bbox is not None and (not isinstance(bbox, list) or len(bbox) != 4
                             or not all(isinstance(v, int | float) for v in bbox)):
        raise BadRequestError("'bbox' must be [minx, miny, maxx, maxy] in the raster's CRS, or null")
    aoi_geom = _aoi_geometry(body)  # invalid_aoi (400) with what to fix
    for key in ("outputs", "jobs", "history"):
        if body.get(key) is not None and not isinstance(body[key], list):
            raise BadRequestError(f"'{key}' must be a list")
    if body.get("models") is not None and (not isinstance(body["models"], dict)
                                           or not all(isinstance(v, str) and v for v in body["models"].values())):
        raise BadRequestError("'models' must be an object {task: model id}")
    if unknown := sorted(set(body.get("models") or {}) - set(TASKS)):
        raise BadRequestError(f"unknown task(s) {unknown} in 'models'; use one of {', '.join(TASKS)}")
    for o in body.get("outputs") or []:
        if not isinstance(o, dict) or not isinstance(o.get("path"), str) or "\0" in o["path"] or not all(
                o.get(k) is None or isinstance(o[k], str) for k in ("task", "layer", "model")):
            raise BadRequestError('each entry of \'outputs\' must be {"path": "/abs/file", "task": ..., '
                                  '"layer": ...} with string values')
        if o.get("classes") is not None and (not isinstance(o["classes"], list)
                                             or not all(isinstance(c, str) for c in o["classes"])):
            raise BadRequestError("'classes' of an output must be a list of class names")
    if not all(isinstance(j, str) for j in body.get("jobs") or []):
        raise BadRequestError("'jobs' must be a list of job ids (strings)")
    for h in body.get("history") or []:
        if not isinstance(h, dict) or h.get("role") not in ("user", "assistant") or not isinstance(
                h.get("content"), str):
            raise BadRequestError('each entry of \'history\' must be {"role": "user"|"assistant", '
                                  '"content": "..."}')
    spec = body.get("backend")
    name = spec.get("name") if isinstance(spec, dict) else spec
    if spec is not None and name not in BACKEND_NAMES:
        raise BadRequestError(f"'backend' must be one of {', '.join(BACKEND_NAMES)} (or an object with that "
                              f"'name'), got {name!r}")
    thr = body.get("score_threshold", 0.3)
    if isinstance(thr, bool) or not isinstance(thr, int | float) or not 0 <= thr <= 1:
        raise BadRequestError(f"'score_threshold' must be a number between 0 and 1, got {thr!r}")
    mt = body.get("max_tokens", 160)
    if isinstance(mt, bool) or not isinstance(mt, int) or not 1 <= mt <= 4096:
        raise BadRequestError(f"'max_tokens' must be an integer between 1 and 4096, got {mt!r}")
    other = body.get("compare_with")
    if other is not None and (not isinstance(other, str) or not _is_abs(other)):
        raise BadRequestError("'compare_with' must be the absolute path of a second image of the same place")
    if other is not None and Path(other) == Path(raster):
        raise BadRequestError("'compare_with' is the asked raster itself; choose a different image of the same "
                              "place to compare with")
    if (order := body.get("compare_order", "later")) not in COMPARE_ORDERS:
        raise BadRequestError(f"'compare_order' must be 'later' or 'earlier' (is compare_with the later or the "
                              f"earlier image?), got {order!r}")
    if "change_detection" in (body.get("models") or {}) and other is None:
        raise BadRequestError("a change_detection model needs 'compare_with': the second image of the same place")
    out_dir = body.get("output_dir")
    if out_dir is not None and (not isinstance(out_dir, str) or not _is_abs(out_dir)
                                or ".." in re.split(r"[\\/]", out_dir)):
        raise BadRequestError("'output_dir' must be an absolute folder path without '..' (or left out for a "
                              "temporary folder)")
    # the polygons are validated and merged once per request (up to 50k vertices), not at every use
    return {**body, AOI_GEOMETRY: aoi_geom}


def _outputs_from_job(job: Any, app: Any, body_raster: str | None = None) -> list[PerceptionOutput]:
    """Perception outputs of a finished backend job (``result.outputs``), with the model's classes.

    ``body_raster`` is the raster asked about: for a change job, the other image of the pair is named in the
    change facts."""
    classes = None
    try:
        classes = [c.name for c in app.models.get(job.model).config.classes]
    except Exception:  # the package may have been removed since; classes then come from the files
        classes = None
    outs = []
    inputs = (job.request or {}).get("inputs") or {}
    for o in (job.result or {}).get("outputs", []):
        if job.task == "semantic_segmentation" and o.get("kind") != "raster":
            continue  # vectorised land cover duplicates the raster
        if job.task not in ("semantic_segmentation", "change_detection") and o.get("kind") != "vector":
            continue
        out = PerceptionOutput(o["path"], job.task, o.get("layer"), classes, job.model)
        if job.task == "change_detection":  # the map (share, area) and its polygons (regions) both count
            out.other_raster, out.other_is_later = _other_image(body_raster, inputs)
        outs.append(out)
    return outs


def _other_image(raster: str | None, inputs: dict[str, str]) -> tuple[str | None, bool]:
    """(the image a change job compared ``raster`` with, whether that one is the later image)."""
    before, after = inputs.get("raster"), inputs.get("raster_after")
    if raster is not None and after is not None and Path(raster) == Path(after):
        return before, False
    return after, True


def _collect_outputs(body: dict, app: Any, status: Any = None, cancel: threading.Event | None = None
                     ) -> list[PerceptionOutput]:
    outs: list[PerceptionOutput] = []
    for o in body.get("outputs") or []:
        if not isinstance(o, dict) or not isinstance(o.get("path"), str):
            raise BadRequestError("each entry of 'outputs' must be {\"path\": ..., \"task\": ...}")
        if o.get("task") is not None and o["task"] not in TASKS:
            raise BadRequestError(f"unknown task {o['task']!r} in outputs; use one of {', '.join(TASKS)}")
        out = PerceptionOutput(o["path"], o.get("task"), o.get("layer"), o.get("classes"), o.get("model"))
        if out.task == "change_detection":
            out.other_raster = body.get("compare_with")
            out.other_is_later = body.get("compare_order", "later") == "later"
        outs.append(out)
    for jid in body.get("jobs") or []:
        job = app.jobs.get(jid)
        if job.state != "succeeded":
            raise RsfmError(f"job {jid} is {job.state}; wait until it has succeeded, or drop it from 'jobs'",
                            code="job_not_finished", http_status=409)
        outs += _outputs_from_job(job, app, body["raster"])
    models = dict(body.get("models") or {})
    if body.get("compare_with") and "change_detection" not in models and not any(
            o.task == "change_detection" for o in outs):
        models["change_detection"] = _default_change_model(app)
    if models:
        outs += _run_models({**body, "models": models}, app, status, cancel)
    return outs


def _default_change_model(app: Any) -> str:
    """The first installed change-detection model (by id), for a request with compare_with but no model."""
    ids = sorted(e.id for e in app.models.list() if e.config.task == "change_detection")
    if not ids:
        raise RsfmError("no change-detection model is installed, so the chat cannot compare with a second image; "
                        "install one (e.g. rsfm-levir-change-efflite0 from the model browser) or leave "
                        "compare_with out", code="model_not_found", http_status=404)
    return ids[0]


def _run_models(body: dict, app: Any, status: Any, cancel: threading.Event | None) -> list[PerceptionOutput]:
    """Run each requested model through the backend's job queue (reusing earlier runs) and wait."""
    try:
        from backend.tasks import create_job
    except ImportError as e:
        raise RsfmError("this backend cannot run perception jobs yet (backend.tasks is missing); pass "
                        "precomputed 'outputs' or finished 'jobs' instead", code="not_available",
                        http_status=501) from e
    raster, bbox = body["raster"], body.get("bbox") or _aoi_bbox(body)
    out_root = body.get("output_dir") or tempfile.mkdtemp(prefix="rsfm-chat-")
    pending = []
    result: list[PerceptionOutput] = []
    for task, model in body["models"].items():
        if task not in TASKS:
            raise BadRequestError(f"unknown task {task!r} in 'models'; use one of {', '.join(TASKS)}")
        inputs, job_bbox = {"raster": raster}, bbox
        if task == "change_detection":
            inputs, job_bbox = _change_pair(raster, body["compare_with"], body.get("compare_order", "later"), bbox)
        key = (_file_key(raster), tuple(bbox) if bbox else None, task, model,
               _file_key(inputs.get("raster_after", "")) if task == "change_detection" else None, inputs["raster"])
        with _CACHE_LOCK:
            cached = _MODEL_RUNS.get(key)
        if cached and all(Path(o.path).exists() for o in cached):
            result += cached
            continue
        req = {"task": task, "model": model, "inputs": inputs,
               "output_dir": str(Path(out_root) / task), "options": {"bbox": job_bbox} if job_bbox else {}}
        job = create_job(app, req)  # validates the model first, then creates output_dir (check_output_dir)
        app.jobs.submit(job)
        pending.append((key, job))
    for key, job in pending:
        while not job.done_event.wait(0.2):
            if status:
                status(f"running {job.task} ({job.model}): {job.message}")
            if cancel is not None and cancel.is_set():
                for _, j in pending:
                    app.jobs.cancel(j.id)
                raise RsfmError("chat cancelled", code="cancelled", http_status=409)
        if job.state != "succeeded":
            err = (job.error or {}).get("message", job.state)
            raise RsfmError(f"the {job.task} job with model {job.model} did not succeed: {err}",
                            code="perception_failed", http_status=422)
        outs = _outputs_from_job(job, app, raster)
        with _CACHE_LOCK:
            _MODEL_RUNS[key] = outs
        result += outs
    return result


def _change_pair(raster: str, other: str, order: str, bbox: list[float] | None
                 ) -> tuple[dict[str, str], list[float] | None]:
    """Inputs of the change job for ``raster`` vs ``other`` and its bbox in the earlier image's CRS.

    A change job runs on the earlier image's grid; when that is ``other`` in another CRS, the asked bbox
    (in ``raster``'s CRS) is reprojected to it."""
    if order == "later":
        return {"raster": raster, "raster_after": other}, bbox
    inputs = {"raster": other, "raster_after": raster}
    if bbox is None:
        return inputs, None
    import rasterio
    from rasterio.warp import transform_bounds

    try:
        with rasterio.open(raster) as a, rasterio.open(other) as b:
            if a.crs and b.crs and a.crs != b.crs:
                bbox = list(transform_bounds(a.crs, b.crs, *bbox))
    except rasterio.errors.RasterioIOError as e:
        raise FactSheetError(f"cannot open {e}; check the asked raster and compare_with") from e
    return inputs, bbox


def _aoi_geometry(body: dict) -> Any:
    """The request's ``aoi`` as one shapely geometry (raster CRS; cut to ``bbox`` when both are given), None
    without one."""
    if body.get("aoi") is None:
        return None
    import shapely

    from backend.aoi import parse_aoi

    geom = parse_aoi(body["aoi"]).geom
    if body.get("bbox") is not None:
        geom = geom.intersection(shapely.box(*body["bbox"]))
        if geom.is_empty or geom.area <= 0:
            raise BadRequestError("the 'aoi' polygons do not overlap 'bbox'; send one of them, or polygons inside "
                                  "the extent", code="invalid_aoi")
    return geom


def _aoi_bbox(body: dict) -> list[float] | None:
    """The bbox the perception jobs run on for an ``aoi`` request (the facts then count inside the polygons)."""
    geom = body.get(AOI_GEOMETRY)
    return list(geom.bounds) if geom is not None else None


def get_sheet(body: dict, app: Any, status: Any = None, cancel: threading.Event | None = None) -> FactSheet:
    """The fact sheet for a ChatRequest, cached by (raster, bbox / aoi, output files, threshold)."""
    outs = _collect_outputs(body, app, status, cancel)
    thr = float(body.get("score_threshold", 0.3))
    aoi = body.get(AOI_GEOMETRY)
    key = (_file_key(body["raster"]), tuple(body["bbox"]) if body.get("bbox") else None,
           aoi.wkb if aoi is not None else None, thr,
           tuple((_file_key(o.path), o.task, o.layer, tuple(o.classes or ()), o.other_raster, o.other_is_later)
                 for o in outs))
    with _CACHE_LOCK:
        if key in _SHEETS:
            _SHEETS.move_to_end(key)
            return _SHEETS[key]
    try:
        sheet = build_fact_sheet(body["raster"], outs, bbox=body.get("bbox"), aoi=aoi, score_threshold=thr)
    except FactSheetError:
        raise
    except (OSError, ValueError) as e:  # rasterio / pyogrio read errors
        raise FactSheetError(f"cannot build the fact sheet: {e}") from e
    with _CACHE_LOCK:
        _SHEETS[key] = sheet
        while len(_SHEETS) > 32:
            _SHEETS.popitem(last=False)
    return sheet


def _answer(body: dict, app: Any, on_token=None, status=None, cancel=None) -> dict[str, Any]:
    t0 = time.perf_counter()
    sheet = get_sheet(body, app, status, cancel)
    t_facts = time.perf_counter() - t0
    backend = make_backend(body.get("backend", "template"))
    if status:
        status("generating")
    ans = answer_question(body["question"], sheet, backend=backend, mode=body.get("mode", "auto"),
                          history=body.get("history"), on_token=on_token,
                          max_tokens=int(body.get("max_tokens", 160)))
    ans.timings_s["facts"] = round(t_facts, 4)
    ans.timings_s["total"] = round(time.perf_counter() - t0, 4)
    out: dict[str, Any] = {"answer": ans.to_dict(), "fact_text": sheet.to_text(),
                           "backend": backend.describe() if backend else {"name": "template"}}
    if body.get("include_facts", True):
        out["facts"] = sheet.to_json()
    return out


# ------------------------------------------------------------------------------------------ endpoints


@route("POST", "/api/v1/chat", "Answer a question about a raster from its perception outputs (grounded)",
       request_schema=CHAT_REQUEST, response_schema={"type": "object", "properties": {
           "answer": CHAT_ANSWER, "fact_text": _STR, "facts": {"type": "object"}, "backend": {"type": "object"}}})
def chat(req: Request) -> dict[str, Any]:
    return _answer(_parse(req.body), req.app)


@route("POST", "/api/v1/chat/facts", "The numbered fact sheet of a raster (text and JSON)",
       request_schema={**CHAT_REQUEST, "required": ["raster"]},
       response_schema={"type": "object", "properties": {"fact_text": _STR, "facts": {"type": "object"}}})
def chat_facts(req: Request) -> dict[str, Any]:
    body = req.body if isinstance(req.body, dict) else {}
    body = _parse({**body, "question": body.get("question") or "facts"})
    sheet = get_sheet(body, req.app)
    return {"fact_text": sheet.to_text(), "facts": sheet.to_json()}


class ChatJob:
    """A chat answer produced in a background thread; ``text`` grows as tokens arrive."""

    def __init__(self, body: dict) -> None:
        self.id = uuid.uuid4().hex
        self.body = body
        self.state = "queued"
        self.message = "queued"
        self.text = ""
        self.answer: dict | None = None
        self.result: dict | None = None
        self.error: dict | None = None
        self.cancel = threading.Event()
        self.lock = threading.Lock()
        self.created = time.time()

    def to_dict(self, since: int = 0) -> dict[str, Any]:
        with self.lock:
            return {"id": self.id, "state": self.state, "message": self.message, "offset": since,
                    "text": self.text[since:], "length": len(self.text), "answer": self.answer,
                    "fact_text": (self.result or {}).get("fact_text"), "error": self.error}

    def run(self, app: Any) -> None:
        def tok(piece: str) -> None:
            if self.cancel.is_set():
                raise RsfmError("chat cancelled", code="cancelled", http_status=409)
            with self.lock:
                self.text += piece
                self.state = "generating"

        def status(msg: str) -> None:
            with self.lock:
                self.message = msg
                if msg != "generating":
                    self.state = "perception"

        try:
            res = _answer(self.body, app, on_token=tok, status=status, cancel=self.cancel)
            with self.lock:
                self.result, self.answer = res, res["answer"]
                self.state, self.message = "succeeded", "done"
        except RsfmError as e:
            with self.lock:
                self.state = "cancelled" if e.code == "cancelled" else "failed"
                self.error = e.to_dict()["error"]
                self.message = e.message
        except Exception as e:  # noqa: BLE001 - reported to the client in the error shape
            log.exception("chat job %s failed", self.id)
            with self.lock:
                self.state = "failed"
                self.error = {"code": "internal_error", "message": f"{type(e).__name__}: {e} (a bug in RSFM)"}
                self.message = self.error["message"]


_CHAT_JOBS: OrderedDict[str, ChatJob] = OrderedDict()


def _get_job(job_id: str) -> ChatJob:
    with _CACHE_LOCK:
        job = _CHAT_JOBS.get(job_id)
    if job is None:
        raise JobNotFoundError(f"no chat job {job_id!r}; start one with POST /api/v1/chat/jobs")
    return job


@route("POST", "/api/v1/chat/jobs", "Start a chat answer in the background; poll it for incremental text",
       request_schema=CHAT_REQUEST, response_schema=CHAT_JOB)
def chat_job(req: Request) -> tuple[int, dict[str, Any]]:
    job = ChatJob(_parse(req.body))
    with _CACHE_LOCK:
        _CHAT_JOBS[job.id] = job
        while len(_CHAT_JOBS) > 100:
            _CHAT_JOBS.popitem(last=False)
    threading.Thread(target=job.run, args=(req.app,), name=f"rsfm-chat-{job.id[:8]}", daemon=True).start()
    return 202, job.to_dict()


@route("GET", "/api/v1/chat/jobs/{job_id}", "A chat job: state, text since ?since=N characters, final answer",
       response_schema=CHAT_JOB)
def get_chat_job(req: Request) -> dict[str, Any]:
    try:
        since = max(0, int(req.query.get("since", "0")))
    except ValueError as e:
        raise BadRequestError("'since' must be a non-negative integer (characters already received)") from e
    return _get_job(req.params["job_id"]).to_dict(since)


@route("POST", "/api/v1/chat/jobs/{job_id}/cancel", "Stop a chat job", response_schema=CHAT_JOB)
def cancel_chat_job(req: Request) -> dict[str, Any]:
    job = _get_job(req.params["job_id"])
    job.cancel.set()
    return job.to_dict()
