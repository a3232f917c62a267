"""Every error the backend reports, in one place.

Each :class:`RsfmError` carries a stable snake_case ``code`` and the HTTP status it maps to; subclasses also
inherit the nearest builtin so plain ``except ValueError`` / ``except LookupError`` keep working. The server
turns any of them into ``{"error": {"code": ..., "message": ...}}`` (see :meth:`RsfmError.to_dict`).
Messages say what is wrong *and* how to fix it.
"""

from __future__ import annotations

from typing import Any


class RsfmError(Exception):
    """Base class: ``code`` (snake_case) and ``http_status`` travel to the client unchanged."""

    code: str = "internal_error"
    http_status: int = 500

    def __init__(self, message: str, *, code: str | None = None, http_status: int | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body: ``{"error": {"code", "message", ...details}}``."""
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            err["details"] = self.details
        return {"error": err}


class BadRequestError(RsfmError, ValueError):
    """The request body or a parameter is malformed (400)."""

    code = "bad_request"
    http_status = 400


class InvalidJsonError(BadRequestError):
    code = "invalid_json"


class InvalidOutputPathError(BadRequestError):
    """``output_dir`` / ``output_name`` is unsafe (traversal, relative path, not writable)."""

    code = "invalid_output_path"


class UnauthorizedError(RsfmError, PermissionError):
    code = "unauthorized"
    http_status = 401


class NotFoundError(RsfmError, LookupError):
    code = "not_found"
    http_status = 404


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class JobNotFoundError(NotFoundError):
    code = "job_not_found"


class InputNotFoundError(NotFoundError):
    """An input raster path does not exist (reported as 404 so the client can say 'file not found')."""

    code = "input_not_found"


class MethodNotAllowedError(RsfmError):
    code = "method_not_allowed"
    http_status = 405


class JobStateError(RsfmError):
    """The job cannot do that in its current state (409)."""

    code = "invalid_job_state"
    http_status = 409


class PayloadTooLargeError(RsfmError):
    code = "payload_too_large"
    http_status = 413


class IncompatibleRasterError(RsfmError, ValueError):
    """The raster cannot be used with this model (422). Band mismatches carry ``expected_bands``/``got_bands``."""

    code = "incompatible_raster"
    http_status = 422

    def __init__(self, message: str, *, code: str | None = None, expected_bands: int | None = None,
                 got_bands: int | None = None, details: dict[str, Any] | None = None) -> None:
        details = dict(details or {})
        if expected_bands is not None:
            details["expected_bands"] = expected_bands
        if got_bands is not None:
            details["got_bands"] = got_bands
        super().__init__(message, code=code, details=details)
        self.expected_bands = expected_bands
        self.got_bands = got_bands


class RasterReadError(IncompatibleRasterError):
    """The file is not a readable raster (corrupt, truncated, unknown format)."""

    code = "unreadable_raster"


class UnsupportedTaskError(BadRequestError):
    code = "unsupported_task"


class ModelPackageError(RsfmError, ValueError):
    """A model package is broken (bad config, weights that do not fit) — fix or re-download it (500)."""

    code = "invalid_model_package"
    http_status = 500


class QueueFullError(RsfmError):
    code = "queue_full"
    http_status = 503


class JobCancelled(RsfmError):  # noqa: N818 - a control-flow signal, not a failure
    """Raised inside a running job when cancellation was requested; never reaches the client as an error."""

    code = "cancelled"
    http_status = 409


class OutputWriteError(RsfmError, OSError):
    """Writing the outputs failed (disk full, file size limit, I/O error); nothing was left half-written (507)."""

    code = "output_write_failed"
    http_status = 507


# -- Hugging Face Hub (raised by backend.hub) -----------------------------------------------------------------
class HubError(RsfmError):
    """Something went wrong talking to the Hub (502: the upstream answered badly)."""

    code = "hub_error"
    http_status = 502


class HubReferenceError(BadRequestError):
    """A model reference is not of the form ``hf://ORG/NAME[@REVISION]``."""

    code = "invalid_hub_reference"


class HubRepoNotFoundError(ModelNotFoundError):
    """No such repo on the endpoint, or it is private and the token cannot see it (404)."""

    code = "hub_repo_not_found"


class HubRevisionNotFoundError(ModelNotFoundError):
    """The repo exists but the branch / commit does not (404)."""

    code = "hub_revision_not_found"


class HubGatedRepoError(HubError, PermissionError):
    """The repo is gated and this token has not been granted access (403)."""

    code = "hub_gated_repo"
    http_status = 403


class HubAuthError(HubError, PermissionError):
    """The Hub rejected the token (invalid, expired, or without the needed permission) (403).

    403 rather than 401: a 401 from the backend means the *backend's* token is wrong.
    """

    code = "hub_auth_failed"
    http_status = 403


class HubUnreachableError(HubError, ConnectionError):
    """The endpoint cannot be reached (connection refused, DNS, proxy, timeout) (503)."""

    code = "hub_unreachable"
    http_status = 503


class HubOfflineError(HubError, LookupError):
    """Offline mode is on (or the Hub is unreachable) and the package is not (completely) in the cache (503)."""

    code = "hub_offline_not_cached"
    http_status = 503


class HubIntegrityError(HubError, OSError):
    """A downloaded file does not match the hash the Hub reported; it was deleted (502)."""

    code = "hub_checksum_mismatch"
    http_status = 502


class HubDownloadCancelled(JobCancelled):  # noqa: N818 - a control-flow signal, like JobCancelled
    """The download was cancelled through its ``cancel`` event; partial files are kept for resuming."""

    code = "cancelled"
