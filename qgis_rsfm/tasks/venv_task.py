"""Create the backend's Python environment (``python -m venv`` + ``pip install``) as a cancellable task.

The backend needs torch and friends, which must never be installed into QGIS's own Python; a private
venv keeps them apart. Progress follows pip's "Collecting/Installing" lines.
"""

from __future__ import annotations

import os
import shutil
import subprocess  # argv lists only, never a shell  # nosec B404
import sys
from pathlib import Path

from qgis.core import QgsMessageLog, QgsTask

from ..launcher import venv_python


def base_python() -> str | None:
    """A Python interpreter that can create a venv (inside QGIS, ``sys.executable`` may be QGIS itself)."""
    exe = Path(sys.executable or "")
    if exe.name.lower().startswith("python") and exe.is_file():
        return str(exe)
    return shutil.which("python3") or shutil.which("python")


class CreateVenvTask(QgsTask):
    """Make ``venv_dir`` and install ``requirement`` (e.g. ``rsfm[backend]`` or a source path) into it.

    After ``finished``: ``self.ok``, ``self.message`` (plain words) and ``self.log`` (pip's output).
    """

    def __init__(self, venv_dir: str, requirement: str, python: str | None = None) -> None:
        super().__init__("RSFM: create backend environment", QgsTask.Flag.CanCancel)
        self.venv_dir = venv_dir
        self.requirement = requirement
        self.python = python or base_python()
        self.ok = False
        self.message = ""
        self.log: list[str] = []
        self._proc: subprocess.Popen | None = None

    def _run_step(self, argv: list[str], progress_from: float, progress_to: float) -> int:
        self.log.append("$ " + " ".join(argv))
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # QGIS's paths must not leak into the venv
        env.pop("PYTHONHOME", None)
        # argv is a list we built (interpreter path + fixed pip/venv arguments) and no shell is involved.
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,  # nosec B603
                                      text=True, env=env)
        steps = 0
        if self._proc.stdout is None:  # cannot happen with stdout=PIPE; keeps type checkers honest
            return self._proc.wait()
        for line in self._proc.stdout:
            self.log.append(line.rstrip())
            if line.startswith(("Collecting", "Downloading", "Installing", "Building", "Successfully")):
                steps += 1
                # pip does not announce a total, so creep towards the end of this step.
                frac = 1.0 - 1.0 / (1.0 + steps / 8.0)
                self.setProgress(progress_from + (progress_to - progress_from) * frac)
            if self.isCanceled():
                self._proc.terminate()
                break
        self._proc.stdout.close()
        return self._proc.wait()

    def run(self) -> bool:
        try:
            if not self.python:
                self.message = ("no Python interpreter found to create the environment; install Python 3.10+ "
                                "or set the backend Python path in RSFM Settings")
                return False
            if self._run_step([self.python, "-m", "venv", self.venv_dir], 0, 10) != 0:
                self.message = f"'python -m venv {self.venv_dir}' failed; see the log below"
                return False
            py = str(venv_python(self.venv_dir))
            if self.isCanceled():
                self.message = "cancelled"
                return False
            rc = self._run_step([py, "-m", "pip", "install", "--disable-pip-version-check", self.requirement],
                                10, 100)
            if self.isCanceled():
                self.message = "cancelled; the half-made environment was left in place, delete it or run again"
                return False
            if rc != 0:
                self.message = (f"pip could not install {self.requirement!r} (exit code {rc}); check the network "
                                "or proxy, or point 'backend package' at a local RSFM source folder")
                return False
            self.ok = True
            self.message = f"backend environment ready: {py}"
            return True
        except OSError as exc:
            self.message = f"could not run Python: {exc}"
            return False
        finally:
            QgsMessageLog.logMessage("\n".join(self.log[-50:]), "RSFM")

    def cancel(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
        super().cancel()
