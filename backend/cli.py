"""``rsfm-backend`` / ``python -m backend``: start the model server.

``rsfm-backend serve --port 0 --token-file ~/.rsfm/token`` binds 127.0.0.1, prints one JSON line
``{"event": "ready", "url": ..., "pid": ..., "api_version": 1}`` on stdout and serves until SIGINT/SIGTERM.

The token comes from the environment variable ``RSFM_TOKEN`` or from ``--token-file`` (a file readable only by
its owner, mode 0600). When neither holds one, a random token is generated and written to ``--token-file``
(created 0600); without a token file the server refuses to start. It is never accepted on the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import stat
import sys
import threading
from pathlib import Path

from backend import API_VERSION, __version__
from backend.settings import SETTINGS, Settings


class TokenError(SystemExit):
    pass


def read_or_create_token(token_file: str | None, env: dict[str, str] | None = None) -> str:
    """Find the API token: ``RSFM_TOKEN``, else the token file, else a new one written to the token file.

    Raises:
        SystemExit: the file is readable by others, empty/short, or there is nowhere to get a token from.
    """
    env = os.environ if env is None else env
    token = env.get("RSFM_TOKEN", "").strip()
    if token:
        if len(token) < 16:
            raise SystemExit("RSFM_TOKEN is shorter than 16 characters; use a random token, e.g. "
                             "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return token
    if not token_file:
        raise SystemExit("no API token: set RSFM_TOKEN or pass --token-file PATH (a new token is written there "
                         "if the file does not exist); tokens are never accepted on the command line")
    p = Path(token_file).expanduser()
    if p.exists():
        mode = stat.S_IMODE(p.stat().st_mode)
        if os.name == "posix" and mode & 0o077:
            raise SystemExit(f"token file {p} has mode {mode:o}; other users could read it. "
                             f"Run: chmod 600 {p}")
        token = p.read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise SystemExit(f"token file {p} holds no token of at least 16 characters; delete it to get a new one")
        return token
    token = secrets.token_urlsafe(32)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token


def _add_settings(p: argparse.ArgumentParser) -> None:
    for s in SETTINGS:
        flag = "--" + s.name.replace("_", "-")
        text = s.help.replace("%", "%%")  # argparse %-formats help strings
        if s.repeatable:
            p.add_argument(flag, dest=s.name, action="append", default=None, metavar="PATH", help=text)
        else:
            p.add_argument(flag, dest=s.name, type=s.type, default=None, choices=s.choices,
                           help=f"{text} (default: {s.default})")


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while idle make torch up to 2.8x slower when QGIS or anything else shares the
    # cores (docs/BENCHMARKS.md). Set before torch is first imported (the runtimes import it lazily).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(prog="rsfm-backend", description="RSFM model server (HTTP/JSON on loopback)")
    parser.add_argument("--version", action="version", version=f"rsfm-backend {__version__} (API {API_VERSION})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="start the server")
    serve.add_argument("--token-file", help="0600 file holding the API token (created with a new token if "
                                            "missing); alternatively set RSFM_TOKEN")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    _add_settings(serve)
    sub.add_parser("settings", help="print every setting with its default and help as JSON")
    args = parser.parse_args(argv)

    if args.command == "settings":
        print(json.dumps([{"name": s.name, "default": s.default, "help": s.help} for s in SETTINGS], indent=2))
        return 0

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.resolve({s.name: getattr(args, s.name) for s in SETTINGS})
    except ValueError as exc:
        parser.error(str(exc))
    from backend.server import App, is_loopback, make_server

    if not is_loopback(settings.host):
        parser.error(f"--host {settings.host} is not a loopback address; the backend only binds 127.0.0.1 "
                     "(or ::1) so other machines cannot reach it")
    token = read_or_create_token(args.token_file)
    app = App(settings, token)
    try:
        server = make_server(app, settings.host, settings.port)
    except OSError as exc:
        print(json.dumps({"event": "error", "message": f"cannot bind {settings.host}:{settings.port}: {exc}"}),
              flush=True)
        return 2
    host, port = server.server_address[:2]
    url_host = f"[{host}]" if ":" in host else host

    def _stop(signum, frame):  # noqa: ARG001 - signal handler signature
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _stop)
    print(json.dumps({"event": "ready", "url": f"http://{url_host}:{port}", "pid": os.getpid(),
                      "api_version": API_VERSION, "version": __version__}), flush=True)
    # Import torch and resolve the device now, off the request path, so the first job starts quickly.
    threading.Thread(target=lambda: app.device, name="rsfm-warmup", daemon=True).start()
    logging.getLogger("backend").info("serving on http://%s:%s with models from %s", url_host, port,
                                      [str(d) for d in app.models.model_dirs] or "resources/models only")
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        app.jobs.shutdown(timeout=10.0)  # running jobs stop at their next tile and remove their outputs
        from backend.outputs import abort_all_outputs

        abort_all_outputs()  # a job stuck in a long forward pass: remove its temporary files anyway
        server.server_close()
    print(json.dumps({"event": "stopped", "pid": os.getpid()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
