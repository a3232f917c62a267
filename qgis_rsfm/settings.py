"""Plugin settings, stored with ``QgsSettings`` under ``rsfm/``.

One dataclass mirrors what the settings dialog edits; units are in the names. The Hugging Face token
goes into the QGIS authentication database (``QgsAuthManager``, encrypted with the master password) and
only its authcfg id into ``QgsSettings``; where no auth database can be used (disabled, or no master
password given) it falls back to ``QgsSettings`` in plain text and :attr:`RsfmSettings.token_storage` says
so. It reaches the backend through the environment only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from qgis.core import QgsApplication, QgsAuthMethodConfig, QgsSettings

from .launcher import BackendConfig, default_python, venv_python

PREFIX = "rsfm/"
DEVICES = ("auto", "cpu", "cuda")
AUTHCFG_KEY = PREFIX + "hf_token_authcfg"
AUTHCFG_NAME = "RSFM Hugging Face token"
STORED_IN_AUTH_DB = "auth_db"
STORED_IN_SETTINGS = "settings"
STORED_NOWHERE = "none"


def _auth_manager():
    """The QGIS auth manager when it can store secrets now, else None (disabled, or no master password).

    Setting the master password asks the user for it in QGIS Desktop; headless runs (qgis_process, tests
    without a password) cannot answer and get None.
    """
    am = QgsApplication.authManager()
    if am is None or am.isDisabled():
        return None
    if not am.masterPasswordIsSet() and not am.setMasterPassword(True):
        return None
    return am


def store_token(token: str, authcfg: str = "") -> str | None:
    """Store ``token`` in the auth database (updating config ``authcfg`` if given); returns the authcfg id,
    or None when the auth database cannot be used (the caller falls back to QgsSettings)."""
    am = _auth_manager()
    if am is None:
        return None
    cfg = QgsAuthMethodConfig()
    if authcfg and am.loadAuthenticationConfig(authcfg, cfg, True) and cfg.isValid():
        cfg.setConfig("password", token)
        return authcfg if am.updateAuthenticationConfig(cfg) else None
    cfg = QgsAuthMethodConfig("Basic")
    cfg.setName(AUTHCFG_NAME)
    cfg.setConfig("username", "hf")
    cfg.setConfig("password", token)
    if not am.storeAuthenticationConfig(cfg) or not cfg.id():
        return None
    return cfg.id()


def load_token(authcfg: str) -> str | None:
    """The token behind ``authcfg``, or None when it cannot be read (auth DB locked or entry deleted)."""
    am = _auth_manager()
    if am is None or not authcfg:
        return None
    cfg = QgsAuthMethodConfig()
    if not am.loadAuthenticationConfig(authcfg, cfg, True):
        return None
    return cfg.config("password") or None


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
    # Where hf_token lives: STORED_IN_AUTH_DB, STORED_IN_SETTINGS or STORED_NOWHERE (filled by load/save).
    token_storage: str = field(default=STORED_NOWHERE, compare=False)

    @property
    def token_storage_note(self) -> str:
        """One plain sentence for the settings dialog about where the token is kept."""
        if self.token_storage == STORED_IN_AUTH_DB:
            return "The token is kept encrypted in the QGIS authentication database."
        if self.token_storage == STORED_IN_SETTINGS:
            return ("The QGIS authentication database is not available (no master password set), so the "
                    "token is kept in plain text in the QGIS profile settings. Set a master password "
                    "(Settings > Options > Authentication) and save again to encrypt it.")
        return ""

    @classmethod
    def load(cls) -> RsfmSettings:
        s = QgsSettings()
        out = cls()
        for f in fields(cls):
            if f.name == "token_storage":
                continue
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
        authcfg = str(s.value(AUTHCFG_KEY, "") or "")
        if out.hf_token:
            out.token_storage = STORED_IN_SETTINGS
        elif authcfg:
            token = load_token(authcfg)
            if token:
                out.hf_token, out.token_storage = token, STORED_IN_AUTH_DB
        return out

    def save(self) -> None:
        """Write every setting; the token goes to the auth database when possible (see module doc)."""
        s = QgsSettings()
        for f in fields(self):
            if f.name in ("token_storage", "hf_token"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, list):
                value = os.pathsep.join(value)
            s.setValue(PREFIX + f.name, value)
        old_authcfg = str(s.value(AUTHCFG_KEY, "") or "")
        if not self.hf_token:
            s.setValue(PREFIX + "hf_token", "")
            if old_authcfg:
                am = _auth_manager()
                if am is not None:
                    am.removeAuthenticationConfig(old_authcfg)
                s.remove(AUTHCFG_KEY)
            self.token_storage = STORED_NOWHERE
            return
        authcfg = store_token(self.hf_token, old_authcfg)
        if authcfg:
            s.setValue(AUTHCFG_KEY, authcfg)
            s.setValue(PREFIX + "hf_token", "")  # never leave a plain copy behind
            self.token_storage = STORED_IN_AUTH_DB
        else:
            s.setValue(PREFIX + "hf_token", self.hf_token)
            self.token_storage = STORED_IN_SETTINGS

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
