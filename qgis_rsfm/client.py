"""The only module of the plugin that speaks HTTP: a small client for the RSFM backend API (``/api/v1``).

Standard library only (``urllib``) and no QGIS import, so ``make demo`` and plain scripts can reuse it:

    >>> from qgis_rsfm.client import RsfmClient
    >>> c = RsfmClient("http://127.0.0.1:8765", token="...")
    >>> job = c.submit({"task": "semantic_segmentation", "model": "m", "inputs": {"raster": "/a.tif"},
    ...                 "output_dir": "/tmp/out"})
    >>> job = c.wait(job.id)

Every failure raises a subclass of :class:`RsfmClientError` that carries the backend's error ``code`` and
its plain-words ``message`` (contract: ``{"error": {"code", "message"}}``).
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

API_PREFIX = "/api/v1"
API_VERSION = 1
TASKS = (
    "semantic_segmentation",
    "instance_segmentation",
    "object_detection",
    "rotated_detection",
    "scene_classification",
    "change_detection",
)
FINAL_STATES = ("succeeded", "failed", "cancelled")


# -- errors --------------------------------------------------------------------------------------------
class RsfmClientError(Exception):
    """Base of every error the client raises.

    Attributes:
        code: the backend's snake_case error code (or a client-side one such as ``backend_unreachable``).
        message: what went wrong and how to fix it, in plain words.
        http_status: the HTTP status, or None when no answer came back.
    """

    def __init__(self, message: str, code: str = "client_error", http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


class BackendUnreachableError(RsfmClientError, ConnectionError):
    """No backend answers at the URL (not started, crashed, or wrong port)."""


class AuthError(RsfmClientError, PermissionError):
    """The backend refused the token (401): the backend was restarted with a new token."""


class BadRequestError(RsfmClientError, ValueError):
    """The request was malformed or named impossible options (400)."""


class NotFoundError(RsfmClientError, LookupError):
    """Unknown model or job (404)."""


class ConflictError(RsfmClientError):
    """The request does not fit the current state, e.g. cancelling a finished job (409)."""


class IncompatibleRasterError(RsfmClientError, ValueError):
    """The raster does not fit the model: bands, GSD, CRS (422)."""


class BackendInternalError(RsfmClientError):
    """The backend failed (500); its log says more."""


class ProtocolError(RsfmClientError):
    """The answer was not the JSON the contract promises (wrong server on that port, or API mismatch)."""


class JobTimeoutError(RsfmClientError, TimeoutError):
    """:meth:`RsfmClient.wait` gave up before the job finished."""


_STATUS_ERRORS: dict[int, type[RsfmClientError]] = {
    400: BadRequestError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    413: BadRequestError,
    422: IncompatibleRasterError,
}


# -- typed answers -------------------------------------------------------------------------------------
@dataclass
class JobOutput:
    """One file a finished job wrote (``kind`` is ``raster`` or ``vector``; ``layer`` names a GPKG layer)."""

    kind: str
    path: str
    name: str = ""
    style: str | None = None
    layer: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobOutput:
        return cls(kind=str(d.get("kind", "raster")), path=str(d["path"]), name=str(d.get("name") or ""),
                   style=d.get("style"), layer=d.get("layer"))


@dataclass
class Job:
    """A backend job (contract ``Job``); ``progress`` is a fraction in [0, 1]."""

    id: str
    task: str
    model: str
    state: str
    progress: float = 0.0
    message: str = ""
    created: str = ""
    updated: str = ""
    warnings: list[str] = field(default_factory=list)
    error: dict[str, str] | None = None
    result: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        try:
            return cls(id=str(d["id"]), task=str(d.get("task", "")), model=str(d.get("model", "")),
                       state=str(d["state"]), progress=float(d.get("progress") or 0.0),
                       message=str(d.get("message") or ""), created=str(d.get("created") or ""),
                       updated=str(d.get("updated") or ""), warnings=list(d.get("warnings") or []),
                       error=d.get("error"), result=d.get("result"), raw=d)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"the backend sent a job without a valid {exc}; is the backend up to date?",
                                code="bad_job") from None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def outputs(self) -> list[JobOutput]:
        return [JobOutput.from_dict(o) for o in (self.result or {}).get("outputs", [])]

    @property
    def error_message(self) -> str:
        if not self.error:
            return ""
        return str(self.error.get("message") or self.error.get("code") or "unknown error")


@dataclass
class ModelInfo:
    """One model the backend can run: ``config`` is the package's ``config.json``; ``card`` its README."""

    id: str
    source: str
    path: str
    config: dict[str, Any]
    card: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        try:
            return cls(id=str(d["id"]), source=str(d.get("source", "")), path=str(d.get("path", "")),
                       config=dict(d.get("config") or {}), card=str(d.get("card") or ""))
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"the backend sent a model without {exc}", code="bad_model") from None

    @property
    def task(self) -> str:
        return str(self.config.get("task", ""))

    @property
    def name(self) -> str:
        return str(self.config.get("name", self.id))

    @property
    def bands(self) -> list[str]:
        return list(self.config.get("bands", []))

    @property
    def gsd_m(self) -> float | None:
        g = self.config.get("gsd_m")
        return float(g) if g is not None else None

    @property
    def class_names(self) -> list[str]:
        return [str(c.get("name", "")) for c in self.config.get("classes", [])]


@dataclass
class CheckResult:
    """Answer of ``POST /models/{id}/check``."""

    ok: bool
    problems: list[str]
    warnings: list[str]


# -- client --------------------------------------------------------------------------------------------
class RsfmClient:
    """Blocking JSON-over-HTTP client for one backend.

    Args:
        base_url: ``http://127.0.0.1:PORT`` (the ``url`` of the backend's ready line).
        token: the per-launch bearer token.
        timeout_s: socket timeout per request in seconds.
    """

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        # Loopback only: never send the token through a system proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __repr__(self) -> str:  # never show the token
        return f"RsfmClient({self.base_url!r})"

    # -- plumbing ------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, timeout_s: float | None = None) -> Any:
        """Send one request to ``/api/v1{path}`` and return the decoded JSON answer.

        Raises:
            BackendUnreachableError: nothing listens at ``base_url``.
            RsfmClientError subclass: the backend answered with an error (by HTTP status).
            ProtocolError: the answer is not JSON.
        """
        url = self.base_url + API_PREFIX + path
        data = None
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method=method.upper())  # noqa: S310
        try:
            with self._opener.open(req, timeout=timeout_s or self.timeout_s) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raise self._error_from_answer(exc.code, exc.read()) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, http.client.HTTPException) as exc:
            # HTTPException: the backend died while answering (IncompleteRead, BadStatusLine).
            reason = getattr(exc, "reason", exc)
            raise BackendUnreachableError(
                f"the RSFM backend at {self.base_url} does not answer ({reason}); start it from the RSFM "
                "dock (Settings > Start backend) or check the backend log",
                code="backend_unreachable") from None
        if not raw:
            return {}
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ProtocolError(
                f"{url} answered HTTP {status} with something that is not JSON; another program may be "
                "using that port", code="not_json") from None

    @staticmethod
    def _error_from_answer(status: int, raw: bytes) -> RsfmClientError:
        code, message = f"http_{status}", f"the backend answered HTTP {status}"
        try:
            err = json.loads(raw.decode("utf-8")).get("error", {})
            code = str(err.get("code") or code)
            message = str(err.get("message") or message)
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            pass
        if status == 401 and code == f"http_{status}":
            message = "the backend refused the access token; restart the backend from the RSFM dock"
        cls = _STATUS_ERRORS.get(status, BackendInternalError if status >= 500 else RsfmClientError)
        return cls(message, code=code, http_status=status)

    # -- endpoints ------------------------------------------------------------------------------------
    def health(self, timeout_s: float | None = None) -> dict[str, Any]:
        """``GET /health``: status, version, api_version, device, runtimes, job counts."""
        h = self.request("GET", "/health", timeout_s=timeout_s)
        if not isinstance(h, dict) or h.get("status") != "ok":
            raise ProtocolError(f"unexpected health answer from {self.base_url}: {h!r}", code="bad_health")
        if int(h.get("api_version", API_VERSION)) != API_VERSION:
            raise ProtocolError(
                f"the backend speaks API version {h.get('api_version')} but this plugin speaks {API_VERSION}; "
                "update the plugin or the backend so they match", code="api_version_mismatch")
        return h

    def is_alive(self, timeout_s: float = 5.0) -> bool:
        """True when the backend answers ``/health`` with this token."""
        try:
            self.health(timeout_s=timeout_s)
            return True
        except RsfmClientError:
            return False

    def openapi(self) -> dict[str, Any]:
        return self.request("GET", "/openapi.json")

    def models(self, task: str | None = None) -> list[ModelInfo]:
        """All models the backend knows, optionally only those for ``task``."""
        out = [ModelInfo.from_dict(m) for m in self.request("GET", "/models").get("models", [])]
        return [m for m in out if task is None or m.task == task]

    def model(self, model_id: str) -> ModelInfo:
        return ModelInfo.from_dict(self.request("GET", f"/models/{_q(model_id)}"))

    def check(self, model_id: str, raster: str) -> CheckResult:
        """Ask the backend whether ``raster`` (a path) fits the model's bands, GSD and CRS needs."""
        a = self.request("POST", f"/models/{_q(model_id)}/check", {"raster": raster})
        return CheckResult(ok=bool(a.get("ok")), problems=list(a.get("problems") or []),
                           warnings=list(a.get("warnings") or []))

    def hub_models(self, task: str | None = None, search: str | None = None,
                   cached: bool = False) -> dict[str, Any]:
        """``GET /hub/models``: RSFM packages on the backend's Hub endpoint (repos tagged ``rsfm``).

        Returns:
            ``{"endpoint", "source": "hub"|"cache", "offline", "models": [{"repo_id", "id", "sha", "task",
            "tags", "downloads", "likes", "license", ...}]}``.
        """
        query = {k: v for k, v in (("task", task), ("search", search), ("cached", "1" if cached else None)) if v}
        path = "/hub/models" + ("?" + urllib.parse.urlencode(query) if query else "")
        # The backend itself waits up to ~15 s for the Hub; give it a little more than that.
        answer = self.request("GET", path, timeout_s=max(self.timeout_s, 25.0))
        if not isinstance(answer, dict) or not isinstance(answer.get("models"), list):
            raise ProtocolError("the backend's Hub listing has no 'models' list; update the backend",
                                code="bad_hub_listing")
        return answer

    def hub_install(self, repo_id: str, revision: str | None = None) -> Job:
        """``POST /hub/install``: start downloading a Hub package; returns the job (task ``hub_install``) to
        poll and cancel like any other job. On success the model is listed by :meth:`models`."""
        body: dict[str, Any] = {"repo_id": repo_id}
        if revision:
            body["revision"] = revision
        return Job.from_dict(self.request("POST", "/hub/install", body))

    def submit(self, job_request: dict[str, Any]) -> Job:
        """``POST /jobs`` with a contract ``JobRequest``; returns the queued job."""
        return Job.from_dict(self.request("POST", "/jobs", job_request))

    def resume(self, job_id: str, output_dir: str | None = None) -> Job:
        """``POST /jobs/{id}/resume``: re-queue a job interrupted by a backend crash under the same id.

        Args:
            job_id: the id the job had before the crash.
            output_dir: the job's ``output_dir`` (where its record and block journal live); None when the
                backend runs with ``--state-dir``.

        Raises:
            NotFoundError: no record of the job (it finished, or another ``output_dir``).
            ConflictError: the job is still queued or running in this backend.
        """
        body: dict[str, Any] = {} if output_dir is None else {"output_dir": str(output_dir)}
        return Job.from_dict(self.request("POST", f"/jobs/{_q(job_id)}/resume", body))

    def jobs(self) -> list[Job]:
        return [Job.from_dict(j) for j in self.request("GET", "/jobs").get("jobs", [])]

    def job(self, job_id: str) -> Job:
        return Job.from_dict(self.request("GET", f"/jobs/{_q(job_id)}"))

    def cancel(self, job_id: str) -> Job:
        """Ask the backend to stop the job after the current tile; a finished job is returned as is."""
        try:
            return Job.from_dict(self.request("POST", f"/jobs/{_q(job_id)}/cancel"))
        except ConflictError:
            return self.job(job_id)

    def wait(self, job_id: str, *, poll_s: float = 0.25, timeout_s: float | None = None,
             on_update: Callable[[Job], None] | None = None,
             is_cancelled: Callable[[], bool] | None = None) -> Job:
        """Poll a job until it reaches a final state.

        Args:
            poll_s: seconds between polls.
            timeout_s: give up after this many seconds (None: never).
            on_update: called with every polled job (progress reporting).
            is_cancelled: polled too; when it returns True the backend job is cancelled and waited for.

        Returns:
            The final job (``succeeded``, ``failed`` or ``cancelled``).
        """
        start = time.monotonic()
        cancel_sent = False
        while True:
            job = self.job(job_id)
            if on_update is not None:
                on_update(job)
            if job.finished:
                return job
            if is_cancelled is not None and not cancel_sent and is_cancelled():
                job = self.cancel(job_id)
                cancel_sent = True
                if job.finished:
                    return job
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise JobTimeoutError(f"job {job_id} did not finish within {timeout_s:.0f} s "
                                      f"(last state {job.state}, {job.progress:.0%})", code="job_timeout")
            time.sleep(poll_s)


def _q(part: str) -> str:
    return urllib.request.quote(part, safe="")
