"""Start, reuse, watch and stop the backend process (``python -m backend serve``).

Standard library only and no QGIS import (``make demo`` reuses it). The plugin never imports torch: the
backend runs in its own Python (a venv) and is reached over loopback HTTP with a random token.

* The token reaches the backend through the environment (``RSFM_TOKEN``), never argv, so other users
  cannot read it from the process list.
* The backend prints one JSON ready line (``{"event": "ready", "url", "pid", "api_version"}``); stdout and
  stderr go to a log file that the launcher reads, so no pipe can fill up and block the backend.
* A state file (mode 0600) in the QGIS profile folder records url, pid and token, so a second QGIS window
  or ``qgis_process`` reuses the running backend instead of starting another one.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess  # argv lists only, never a shell  # nosec B404
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .client import BackendUnreachableError, RsfmClient, RsfmClientError

STATE_FILE_NAME = "backend_state.json"
LOG_FILE_NAME = "backend.log"
ENV_PYTHON = "RSFM_BACKEND_PYTHON"
ENV_URL = "RSFM_BACKEND_URL"
# The variable's name, not a secret:
ENV_TOKEN = "RSFM_TOKEN"  # noqa: S105  # nosec B105


class LauncherError(RuntimeError):
    """The backend could not be started; the message says why and what to change."""


@dataclass
class BackendConfig:
    """How to start a backend.

    Attributes:
        python: the interpreter of the backend venv (must be able to ``import backend``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        model_dirs: extra folders holding model packages.
        hf_endpoint / hf_token: Hugging Face Hub mirror and token for model downloads ("" = default).
        extra_env: more environment variables for the backend process.
        startup_timeout_s: how long to wait for the ready line.
    """

    python: str
    device: str = "auto"
    model_dirs: list[str] = field(default_factory=list)
    hf_endpoint: str = ""
    hf_token: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 90.0


@dataclass
class BackendState:
    """What the state file holds about a running backend."""

    url: str
    token: str
    pid: int
    python: str = ""
    started: float = 0.0


def default_python() -> str | None:
    """The backend interpreter from ``RSFM_BACKEND_PYTHON``, or None."""
    p = os.environ.get(ENV_PYTHON, "").strip()
    return p or None


def venv_python(venv_dir: str | os.PathLike) -> Path:
    """Path of the interpreter inside a venv on this OS."""
    v = Path(venv_dir)
    return v / "Scripts" / "python.exe" if sys.platform == "win32" else v / "bin" / "python"


def build_command(config: BackendConfig) -> list[str]:
    """argv for the backend process (no secrets in it)."""
    cmd = [config.python, "-m", "backend", "serve", "--host", "127.0.0.1", "--port", "0"]
    if config.device and config.device != "auto":
        cmd += ["--device", config.device]
    for d in config.model_dirs:
        cmd += ["--models-dir", str(d)]
    return cmd


class BackendLauncher:
    """Owns (or shares) one backend process.

    Args:
        state_dir: folder for the state file and the backend log (the QGIS profile's ``rsfm`` folder).
    """

    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.state_dir = Path(state_dir)
        self.process: subprocess.Popen | None = None  # set only when this launcher started the backend
        self.state: BackendState | None = None
        # Several job tasks may notice a dead backend at once (worker threads): one restarts it, the others
        # then find it alive instead of starting (and killing) backends of their own.
        self._lock = threading.RLock()

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE_NAME

    @property
    def log_path(self) -> Path:
        return self.state_dir / LOG_FILE_NAME

    @property
    def owned(self) -> bool:
        """True when this launcher started the running backend (and so stops it)."""
        return self.process is not None and self.process.poll() is None

    # -- state file ---------------------------------------------------------------------------------
    def read_state(self) -> BackendState | None:
        try:
            d = json.loads(self.state_path.read_text(encoding="utf-8"))
            return BackendState(url=str(d["url"]), token=str(d["token"]), pid=int(d["pid"]),
                                python=str(d.get("python", "")), started=float(d.get("started", 0.0)))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_state(self, state: BackendState) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        # Created 0600 from the start: the file holds the token.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(state), f)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.state_path)

    def _remove_state(self) -> None:
        try:
            self.state_path.unlink()
        except OSError:
            pass

    # -- lifecycle ----------------------------------------------------------------------------------
    def client(self) -> RsfmClient:
        """A client for the current backend (call :meth:`ensure_running` first)."""
        if self.state is None:
            raise LauncherError("no backend is running; call ensure_running() first")
        return RsfmClient(self.state.url, self.state.token)

    def find_running(self) -> BackendState | None:
        """A backend already serving: from ``RSFM_BACKEND_URL``/``RSFM_TOKEN`` or the state file."""
        url = os.environ.get(ENV_URL, "").strip()
        if url:
            st = BackendState(url=url, token=os.environ.get(ENV_TOKEN, ""), pid=0)
            if RsfmClient(st.url, st.token).is_alive():
                return st
        st = self.read_state()
        if st is not None and RsfmClient(st.url, st.token).is_alive():
            return st
        return None

    def ensure_running(self, config: BackendConfig | None) -> RsfmClient:
        """Reuse a live backend or start one; restarts a backend that died.

        Args:
            config: how to start one if none is running (None: only reuse).

        Raises:
            LauncherError: none is running and none can be started (message says how to fix it).
        """
        with self._lock:
            return self._ensure_running(config)

    def _ensure_running(self, config: BackendConfig | None) -> RsfmClient:
        if self.state is not None and RsfmClient(self.state.url, self.state.token).is_alive():
            return self.client()
        found = self.find_running()
        if found is not None:
            self.state = found
            return self.client()
        if config is None:
            raise LauncherError("no RSFM backend is running and no backend Python is configured; set it in "
                                "RSFM Settings (or the RSFM_BACKEND_PYTHON environment variable)")
        self.start(config)
        return self.client()

    def start(self, config: BackendConfig) -> BackendState:
        """Start a new backend and wait for its ready line.

        Raises:
            LauncherError: the interpreter is missing, the process exits early, or no ready line comes.
        """
        python = Path(config.python)
        if not python.is_file():
            raise LauncherError(f"the backend Python {config.python} does not exist; create the backend "
                                "environment (RSFM Settings > Create backend venv) or set its path")
        self.stop()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        env = dict(os.environ)
        env.update(config.extra_env)
        env[ENV_TOKEN] = token
        env.pop(ENV_URL, None)
        env["PYTHONUNBUFFERED"] = "1"
        # QGIS's own Python paths must not leak into the backend's interpreter.
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        if config.hf_endpoint:
            env["HF_ENDPOINT"] = config.hf_endpoint
        if config.hf_token:
            env["HF_TOKEN"] = config.hf_token
        cmd = build_command(config)
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
        try:
            kwargs: dict = {"stdin": subprocess.DEVNULL, "stdout": log, "stderr": subprocess.STDOUT,
                            "env": env, "cwd": str(self.state_dir)}
            if sys.platform == "win32":
                kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
            else:
                kwargs["start_new_session"] = True  # Ctrl-C in QGIS's terminal must not kill it
            # cmd is build_command()'s list: the configured interpreter plus fixed arguments, no shell.
            self.process = subprocess.Popen(cmd, **kwargs)  # nosec B603
        except OSError as exc:
            raise LauncherError(f"cannot run {config.python}: {exc}") from None
        finally:
            log.close()
        ready = self._wait_ready(config.startup_timeout_s)
        self.state = BackendState(url=ready["url"], token=token, pid=int(ready.get("pid", self.process.pid)),
                                  python=config.python, started=time.time())
        # The first request may be slow (the backend imports its runtimes lazily); wait for it here so
        # later health checks can use short timeouts.
        try:
            RsfmClient(self.state.url, token).health(timeout_s=config.startup_timeout_s)
        except RsfmClientError as exc:
            self.stop()
            raise LauncherError(f"the backend started but does not answer: {exc.message}; see {self.log_path}") \
                from None
        self._write_state(self.state)
        return self.state

    def _wait_ready(self, timeout_s: float) -> dict:
        if self.process is None:
            raise LauncherError("internal: _wait_ready called before the backend process was started")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self._log_lines():
                if line.startswith("{") and '"ready"' in line:
                    try:
                        d = json.loads(line)
                    except ValueError:
                        continue
                    if d.get("event") == "ready" and d.get("url"):
                        return d
            if self.process.poll() is not None:
                tail = "\n".join(self._log_lines()[-15:])
                self.process = None
                raise LauncherError(f"the backend exited during start-up (see {self.log_path}):\n{tail}")
            time.sleep(0.1)
        self.stop()
        raise LauncherError(f"the backend printed no ready line within {timeout_s:.0f} s; see {self.log_path}")

    def _log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []

    def log_tail(self, n: int = 40) -> str:
        """Last ``n`` lines of the backend log (for diagnostics)."""
        return "\n".join(self._log_lines()[-n:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the backend if this launcher started it; a shared backend is left running."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                if sys.platform == "win32":
                    proc.terminate()
                else:
                    os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            except OSError:
                pass
        st = self.read_state()
        if st is not None and st.pid in (proc.pid, getattr(self.state, "pid", -1)):
            self._remove_state()
        self.state = None

    def health(self) -> dict | None:
        """The backend's health answer, or None when it is down."""
        if self.state is None:
            self.state = self.find_running()
        if self.state is None:
            return None
        try:
            return RsfmClient(self.state.url, self.state.token).health(timeout_s=2.0)
        except (BackendUnreachableError, RsfmClientError):
            return None
