"""One backend connection per QGIS process, shared by the dock, tasks and Processing algorithms.

:func:`get_client` reuses a live backend (this process's, another QGIS window's via the state file, or
``RSFM_BACKEND_URL``) and starts one when none answers, so a crashed backend is restarted on the next
use.
"""

from __future__ import annotations

import atexit
import threading

from .client import RsfmClient
from .launcher import BackendLauncher, LauncherError
from .settings import RsfmSettings, profile_dir

_lock = threading.Lock()
_launcher: BackendLauncher | None = None


def launcher() -> BackendLauncher:
    global _launcher
    with _lock:
        if _launcher is None or _launcher.state_dir != profile_dir():
            _launcher = BackendLauncher(profile_dir())
        return _launcher


def get_client(start: bool = True) -> RsfmClient:
    """A client for a live backend; starts one (from the settings) if ``start`` and none is running.

    Raises:
        LauncherError: no backend is running and none could be started.
    """
    lau = launcher()
    config = RsfmSettings.load().backend_config() if start else None
    with _lock:  # two tasks must not start two backends at once
        client = lau.ensure_running(config)
        if lau.owned and not _atexit_registered:
            _register_atexit()
        return client


_atexit_registered = False


def _register_atexit() -> None:
    # qgis_process and scripts never call unload(): stop a backend this process started when it exits.
    global _atexit_registered
    _atexit_registered = True
    atexit.register(shutdown)


def shutdown() -> None:
    """Stop the backend if this process started it and the user wants that."""
    global _launcher
    try:
        stop = RsfmSettings.load().stop_backend_on_exit
    except Exception:  # noqa: BLE001 - at interpreter exit QGIS may already be gone; default: stop
        stop = True
    with _lock:
        if _launcher is not None and stop:
            _launcher.stop()
        _launcher = None


__all__ = ["LauncherError", "get_client", "launcher", "shutdown"]
