"""The HTTP server: stdlib ``ThreadingHTTPServer`` on loopback, dispatching through :mod:`backend.routing`.

Every request must carry ``Authorization: Bearer <token>`` (compared in constant time) and a loopback
``Host`` header (stops DNS-rebinding pages from reaching the API); bodies are JSON and limited to
``max_body_bytes``. Every failure — unknown path, bad JSON, a typed :class:`~backend.errors.RsfmError` or a
bug — is answered with the one error shape ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import hmac
import importlib
import ipaddress
import json
import logging
import socket
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from backend import API_VERSION, __version__, routing
from backend.errors import (
    BadRequestError,
    InvalidJsonError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RsfmError,
    UnauthorizedError,
)
from backend.jobs import JobManager
from backend.models import ModelRegistry
from backend.runtimes import RuntimeCache
from backend.settings import Settings, configure_gdal

log = logging.getLogger(__name__)

# Modules whose import registers endpoints. Optional ones (owned by other engineers) may not exist yet.
ROUTE_MODULES: tuple[str, ...] = ("backend.routes", "backend.routes_hub", "backend.chat.routes")


def load_routes() -> list[str]:
    """Import every route module that exists; return the names of those loaded."""
    loaded = []
    for mod in ROUTE_MODULES:
        try:
            importlib.import_module(mod)
            loaded.append(mod)
        except ImportError as exc:
            if mod == ROUTE_MODULES[0]:
                raise
            missing_itself = isinstance(exc, ModuleNotFoundError) and exc.name and mod.startswith(exc.name)
            if not missing_itself:  # an optional feature that fails to import must not take the server down
                log.error("endpoints of %s are disabled: %s", mod, exc)
    return loaded


LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class App:
    """Everything a handler needs: settings, the model registry, the job manager, loaded runtimes."""

    def __init__(self, settings: Settings, token: str) -> None:
        if not token or len(token) < 16:
            raise ValueError("the API token must be at least 16 characters")
        self.settings = settings
        configure_gdal(settings.gdal_cache_mb)
        self._token = token.encode("utf-8")
        self.models = ModelRegistry(settings.models_dir)
        self.jobs = JobManager(settings.workers, settings.queue_size, settings.job_history)
        self.runtimes = RuntimeCache()
        self.version = __version__
        self.api_version = API_VERSION
        self.route_modules = load_routes()
        self._device: str | None = None

    def device_if_known(self) -> str:
        """The device if already resolved, else the configured value (never blocks on importing torch)."""
        return self._device or self.settings.device

    @property
    def device(self) -> str:
        """The torch device jobs run on (resolving ``auto`` imports torch, so it is done once, lazily)."""
        if self._device is None:
            from backend.runtimes import resolve_device

            self._device = resolve_device(self.settings.device)
        return self._device

    def check_token(self, header: str | None) -> None:
        """Raise UnauthorizedError unless ``header`` is ``Bearer <token>`` (constant-time comparison)."""
        if not header or not header.startswith("Bearer "):
            raise UnauthorizedError("missing token: send 'Authorization: Bearer <token>' (the token is in "
                                    "RSFM_TOKEN or the --token-file the backend was started with)")
        given = header[len("Bearer "):].strip().encode("utf-8")
        if not hmac.compare_digest(given, self._token):
            raise UnauthorizedError("wrong token; use the token of this backend launch (it changes every start)")


class Handler(BaseHTTPRequestHandler):
    server_version = "rsfm-backend"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds of socket inactivity before a connection is dropped (no slow-loris hangs)
    app: App  # set on the subclass made by make_server

    # -- plumbing ---------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: dict | list) -> None:
        data = json.dumps(body, default=str).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, exc: RsfmError) -> None:
        self._send(exc.http_status, exc.to_dict())

    def _read_body(self) -> Any:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            self._body_read = True  # cannot be drained
            raise BadRequestError("chunked request bodies are not accepted; send Content-Length",
                                  code="length_required", http_status=411)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            self._body_read = True  # cannot be drained
            raise BadRequestError("Content-Length is not a number") from None
        limit = self.app.settings.max_body_bytes
        if length > limit:
            self._discard(length)
            raise PayloadTooLargeError(f"request body is {length} bytes; the limit is {limit} "
                                       "(send paths to rasters, not pixels)")
        if length <= 0:
            return None
        raw = self.rfile.read(length)
        self._body_read = True
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidJsonError(f"request body is not valid UTF-8 JSON ({exc})") from None
        except RecursionError:
            raise InvalidJsonError("request body nests JSON arrays/objects too deeply; send a flat JobRequest") \
                from None

    def _check_host(self) -> None:
        host = self.headers.get("Host") or ""
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if host and not is_loopback(name):
            raise UnauthorizedError(f"Host {host!r} is not a loopback name; connect to 127.0.0.1",
                                    code="bad_host", http_status=403)

    def _handle(self) -> None:
        self._body_read = False
        parts = urlsplit(self.path)
        try:
            self._check_host()
            self.app.check_token(self.headers.get("Authorization"))
            route, params, exists = routing.match(self.command, parts.path)
            if route is None:
                if exists:
                    raise MethodNotAllowedError(f"{self.command} is not allowed on {parts.path}; "
                                                "see GET /api/v1/openapi.json")
                raise NotFoundError(f"no endpoint {parts.path}; see GET /api/v1/openapi.json")
            body = self._read_body() if self.command in ("POST", "PUT", "PATCH") else None
            req = routing.Request(method=self.command, path=parts.path,
                                  params={k: unquote(v) for k, v in params.items()},
                                  query=dict(parse_qsl(parts.query)), body=body,
                                  headers={k.lower(): v for k, v in self.headers.items()}, app=self.app)
            out = route.handler(req)
            status, payload = out if isinstance(out, tuple) else (200, out)
            if not self._body_read and self.headers.get("Content-Length", "0") not in ("", "0"):
                self._drain()  # a body on GET: drop it so it is not read as the next request
            self._send(status, payload)
        except RsfmError as exc:
            if exc.http_status >= 500:
                log.error("%s %s -> %s: %s", self.command, parts.path, exc.code, exc.message)
            if not self._body_read and self.headers.get("Content-Length", "0") not in ("", "0"):
                self._drain()
            self._error(exc)
        except Exception as exc:  # noqa: BLE001 - answer with the error shape, never a stack trace
            log.error("unhandled error on %s %s:\n%s", self.command, parts.path, traceback.format_exc())
            self.close_connection = True
            self._error(RsfmError(f"internal error: {type(exc).__name__}: {exc} (a bug in RSFM; see the "
                                  "server log)"))

    def _discard(self, length: int, cap: int = 64 << 20) -> None:
        """Read and drop a refused body so the client sees our answer instead of a broken pipe."""
        self.close_connection = True
        self._body_read = True
        left = min(length, cap)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)

    def _drain(self) -> None:
        """An error raised before the body was read: drop the body (bounded), then close the connection."""
        if not self._body_read:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = 0
            self._discard(min(length, self.app.settings.max_body_bytes))
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = lambda self: self._handle()  # noqa: E731
    # methods no endpoint uses: answered by _handle with 405 (or 404) in the JSON error shape
    do_OPTIONS = do_TRACE = do_CONNECT = lambda self: self._handle()  # noqa: E731

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own errors (malformed request line, unknown method, oversized headers) in the one
        JSON error shape instead of its HTML page."""
        codes = {400: "bad_request", 404: "not_found", 408: "request_timeout", 414: "uri_too_long",
                 431: "headers_too_large", 501: "method_not_allowed", 505: "http_version_not_supported"}
        status = 405 if code == 501 else code  # an unknown method on a known server is a 405 to clients
        self.close_connection = True
        if not getattr(self, "command", None):
            self.command = "GET"  # the request line could not be parsed
        try:
            self._send(status, {"error": {"code": codes.get(code, "bad_request"),
                                          "message": f"{message or 'malformed request'}; see GET "
                                                     "/api/v1/openapi.json for the API"}})
        except OSError:  # the client is gone
            pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False


class Server6(Server):
    address_family = socket.AF_INET6


def make_server(app: App, host: str = "127.0.0.1", port: int = 0) -> Server:
    """Bind ``host:port`` (loopback only) and return the (not yet serving) server.

    Raises:
        ValueError: ``host`` is not a loopback address.
    """
    if not is_loopback(host):
        raise ValueError(f"refusing to bind {host!r}: the backend only listens on loopback (127.0.0.1) so "
                         "no other machine can reach it")
    handler = type("BoundHandler", (Handler,), {"app": app})
    cls = Server6 if ":" in host else Server
    return cls((host, port), handler)


def serve_in_thread(app: App, host: str = "127.0.0.1", port: int = 0) -> tuple[Server, threading.Thread]:
    """Start serving in a daemon thread (used by tests and embedding); stop with ``server.shutdown()``."""
    server = make_server(app, host, port)
    t = threading.Thread(target=server.serve_forever, name="rsfm-http", daemon=True)
    t.start()
    return server, t
