"""Hub endpoints for the plugin's model browser: list, install (a cancellable job), verify.

Installs run as ordinary jobs of :class:`backend.jobs.JobManager` (``task: "hub_install"``), so the
plugin polls and cancels them with the same ``GET /api/v1/jobs/{id}`` and ``POST .../cancel`` as inference
jobs; when one succeeds the package is registered with the model registry under its pinned id
``hf://ORG/NAME@<commit>`` and appears in ``GET /api/v1/models``.

The endpoint, token and cache come from the backend's environment (``HF_ENDPOINT``, ``HF_TOKEN``,
``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``) or from the optional settings ``hub_endpoint`` / ``hub_cache_dir``;
tokens never travel over this API.
"""

from __future__ import annotations

from typing import Any

from backend import hub
from backend.errors import BadRequestError
from backend.jobs import Job, JobContext
from backend.routing import Request, route

_STR = {"type": "string"}
LIST_TIMEOUT_S = 15.0  # the model browser gets "unreachable" after this, not after the client's ~25 s of retries
HUB_MODEL = {"type": "object", "properties": {
    "repo_id": _STR, "id": _STR, "sha": _STR, "task": {"type": "string", "nullable": True},
    "tags": {"type": "array", "items": _STR}, "downloads": {"type": "integer"}, "likes": {"type": "integer"},
    "last_modified": {"type": "string", "nullable": True}, "private": {"type": "boolean"},
    "license": {"type": "string", "nullable": True}, "path": _STR, "refs": {"type": "array", "items": _STR}}}
# The patterns accept a subset of what :func:`backend.hub.parse_model_ref` accepts (ASCII only, no '--' or
# '..', no whitespace), so every request the schema allows passes the handler's validation.
_PART = r"[A-Za-z0-9][A-Za-z0-9_]*(?:[-.][A-Za-z0-9_]+)*"
_REV = r"[A-Za-z0-9_]+(?:[-./][A-Za-z0-9_]+)*"
REF_PATTERN = rf"^(?:hf://)?{_PART}/{_PART}(?:@{_REV})?$"
_REF = {"type": "string", "minLength": 3, "maxLength": 96, "pattern": REF_PATTERN}
INSTALL_REQUEST = {"type": "object", "required": ["repo_id"], "properties": {
    "repo_id": {**_REF, "description": "ORG/NAME, or a full reference hf://ORG/NAME@REV"},
    "revision": {"type": "string", "minLength": 1, "maxLength": 96, "pattern": rf"^{_REV}$",
                 "description": "branch or commit id (default main); overrides an @REV in repo_id"}}}
VERIFY_REQUEST = {"type": "object", "required": ["model"], "properties": {
    "model": {**_REF, "description": "hf://ORG/NAME@REVISION of an installed package"}}}


def _setting(app: Any, name: str) -> Any:
    settings = getattr(app, "settings", None)
    try:
        return getattr(settings, name) or None
    except AttributeError:  # the setting is not in this backend's table
        return None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@route("GET", "/api/v1/hub/models",
       "RSFM model packages on the configured Hub (repos tagged 'rsfm'); ?task=, ?search=, ?cached=1 for the "
       "local cache only (also the answer when offline)",
       response_schema={"type": "object", "properties": {
           "endpoint": _STR, "source": {"type": "string", "enum": ["hub", "cache"]}, "offline": {"type": "boolean"},
           "models": {"type": "array", "items": HUB_MODEL}}})
def list_hub_models(req: Request) -> dict[str, Any]:
    endpoint = _setting(req.app, "hub_endpoint") or hub.default_endpoint()
    cache_dir = _setting(req.app, "hub_cache_dir")
    offline = hub.offline_mode()
    task = req.query.get("task") or None
    if offline or _truthy(req.query.get("cached")):
        models = hub.list_cached_models(cache_dir)
        if task:
            models = [m for m in models if m["task"] == task]
        return {"endpoint": endpoint, "source": "cache", "offline": offline, "models": models}
    limit = req.query.get("limit")
    try:
        limit_n = int(limit) if limit else 200
    except ValueError:
        raise BadRequestError(f"limit must be an integer, got {limit!r}") from None
    models = hub.list_rsfm_models(endpoint, search=req.query.get("search") or None, task=task,
                                  author=req.query.get("author") or None, limit=limit_n,
                                  timeout_s=LIST_TIMEOUT_S)
    return {"endpoint": endpoint, "source": "hub", "offline": False, "models": models}


def _install_ref(body: Any) -> hub.ModelRef:
    if not isinstance(body, dict) or not isinstance(body.get("repo_id"), str):
        raise BadRequestError('send {"repo_id": "ORG/NAME", "revision": "main"} (revision optional)')
    ref = hub.parse_model_ref(body["repo_id"])
    revision = body.get("revision")
    if revision is not None:
        if not isinstance(revision, str) or not revision.strip():
            raise BadRequestError("revision must be a non-empty string (a branch or a commit id)")
        ref = hub.parse_model_ref(f"{ref.repo_id}@{revision.strip()}")
    return ref


@route("POST", "/api/v1/hub/install",
       "Download (or find in the cache) a Hub model package; answers 202 with a job (task 'hub_install') "
       "to poll and cancel through /api/v1/jobs/{id}",
       request_schema=INSTALL_REQUEST)
def install(req: Request) -> tuple[int, dict[str, Any]]:
    ref = _install_ref(req.body)
    app = req.app
    endpoint = _setting(app, "hub_endpoint")
    cache_dir = _setting(app, "hub_cache_dir")

    def runner(ctx: JobContext) -> dict[str, Any]:
        ctx.progress(0.0, f"resolving {ref}")
        path = hub.fetch_model(ref.repo_id, revision=ref.revision, cache_dir=cache_dir, endpoint=endpoint,
                               progress=ctx.progress, cancel=ctx.job.cancel_event)
        commit = path.name  # .../snapshots/<commit>
        pinned = hub.model_uri(ref.repo_id, commit)
        entry = app.models.get(pinned)  # registers it: GET /models lists it from now on
        return {"outputs": [], "model": entry.info(),
                "stats": {"repo_id": ref.repo_id, "revision": ref.revision, "commit": commit, "id": pinned,
                          "path": str(path)}}

    job = Job(task="hub_install", model=str(ref), runner=runner, request={"repo_id": ref.repo_id,
                                                                          "revision": ref.revision})
    app.jobs.submit(job)
    return 202, job.to_dict()


@route("POST", "/api/v1/hub/verify",
       "Re-hash a cached Hub package against the hashes the Hub reported (no network); a corrupted file is "
       "deleted and reported as hub_checksum_mismatch",
       request_schema=VERIFY_REQUEST,
       response_schema={"type": "object", "properties": {"ok": {"type": "boolean"}, "path": _STR,
                                                         "checked": {"type": "array", "items": _STR}}})
def verify(req: Request) -> dict[str, Any]:
    body = req.body
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise BadRequestError('send {"model": "hf://ORG/NAME@REVISION"}')
    ref = hub.parse_model_ref(body["model"])
    path = hub.cached_snapshot(ref.repo_id, ref.revision, _setting(req.app, "hub_cache_dir"))
    if path is None:
        raise hub.HubOfflineError(f"{ref} is not (completely) in the cache; install it first with "
                                  "POST /api/v1/hub/install")
    checked = hub.verify_snapshot(path, rehash=True)
    return {"ok": True, "path": str(path), "checked": checked}
