"""Plugin settings, stored with ``QgsSettings`` under ``rsfm/``.

One dataclass mirrors what the settings dialog edits; units are in the names. The Hugging Face token
is stored in the QGIS profile like other plugin settings; it is passed to the backend through the
environment only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from qgis.core import QgsApplication, QgsSettings

from .launcher import BackendConfig, default_python, venv_python

PREFIX = "rsfm/"
DEVICES = ("auto", "cpu", "cuda")


def profile_dir() -> Path:
    """The plugin's folder in the active QGIS profile (``RSFM_STATE_DIR`` overrides it, for tests)."""
    override = os.environ.get("RSFM_STATE_DIR", "").strip()
    if override:
        return Path(override)
    return Path(QgsApplication.qgisSettingsDirPath()) / "rsfm"


def default_venv_dir() -> Path:
    """Where "Create backend venv" puts the backend environment."""
    return profile_dir() / "venv"


@dataclass
class RsfmSettings:
    """Everything the user can set.

    Attributes:
        backend_python: interpreter of the backend environment ("" = ``RSFM_BACKEND_PYTHON`` or the
            venv the plugin created).
        venv_dir: where the plugin creates the backend venv.
        backend_package: pip requirement installed into a new venv (a path to the RSFM source or
            ``rsfm[backend]``).
        device: ``auto``, ``cpu`` or ``cuda``.
        model_dirs: extra folders with model packages.
        hf_endpoint / hf_token: Hugging Face Hub mirror and access token.
        output_dir: where job results go ("" = a folder in the profile).
        stop_backend_on_exit: stop the backend this QGIS started when the plugin unloads.
    """

    backend_python: str = ""
    venv_dir: str = ""
    backend_package: str = "rsfm[backend]"
    device: str = "auto"
    model_dirs: list[str] = field(default_factory=list)
    hf_endpoint: str = ""
    hf_token: str = ""
    output_dir: str = ""
    stop_backend_on_exit: bool = True

    @classmethod
    def load(cls) -> RsfmSettings:
        s = QgsSettings()
        out = cls()
        for f in fields(cls):
            default = getattr(out, f.name)
            value = s.value(PREFIX + f.name, None)
            if value is None:
                continue
            if isinstance(default, bool):
                value = str(value).lower() in ("1", "true", "yes")
            elif isinstance(default, list):
                if isinstance(value, str):
                    value = [v for v in value.split(os.pathsep) if v]
                else:
                    value = [str(v) for v in value]
            else:
                value = str(value)
            setattr(out, f.name, value)
        if out.device not in DEVICES:
            out.device = "auto"
        return out

    def save(self) -> None:
        s = QgsSettings()
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                value = os.pathsep.join(value)
            s.setValue(PREFIX + f.name, value)

    # -- derived --------------------------------------------------------------------------------------
    def resolved_venv_dir(self) -> Path:
        return Path(self.venv_dir) if self.venv_dir else default_venv_dir()

    def resolved_python(self) -> str | None:
        """The backend interpreter: setting, then ``RSFM_BACKEND_PYTHON``, then the plugin's venv."""
        if self.backend_python:
            return self.backend_python
        env = default_python()
        if env:
            return env
        p = venv_python(self.resolved_venv_dir())
        return str(p) if p.is_file() else None

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else profile_dir() / "outputs"

    def backend_config(self) -> BackendConfig | None:
        """How to start the backend, or None when no interpreter is known yet."""
        py = self.resolved_python()
        if not py:
            return None
        return BackendConfig(python=py, device=self.device, model_dirs=list(self.model_dirs),
                             hf_endpoint=self.hf_endpoint, hf_token=self.hf_token)
