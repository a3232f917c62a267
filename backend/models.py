"""The model registry: which packages this server can run, and loading them into a runtime.

Sources, in priority order (the first package with a given ``name`` wins; later duplicates are reported in
:attr:`ModelRegistry.shadowed`):

1. ``bundled`` — every package folder in ``<repo>/resources/models/``;
2. ``local`` — every package folder in each ``--models-dir`` / ``RSFM_MODELS_PATH`` folder (a folder that is
   itself a package counts too);
3. ``hub`` — ids ``hf://ORG/NAME@REV`` are resolved on demand through :func:`backend.hub.fetch_model`.

A model's id is its package ``name`` (or the ``hf://`` id it was asked for).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.errors import ModelNotFoundError, ModelPackageError
from training.package import CARD_NAME, CONFIG_NAME, PackageConfig, PackageError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_DIR = REPO_ROOT / "resources" / "models"
HUB_PREFIX = "hf://"


@dataclass
class ModelEntry:
    """One runnable package: where it is, its parsed config and card."""

    id: str
    source: str  # "bundled" | "local" | "hub"
    path: Path
    config: PackageConfig
    card: str

    @property
    def revision(self) -> str:
        """A short content id for provenance: the hub revision, else a hash of config + weights header."""
        if self.source == "hub":
            # the snapshot folder is named after the commit: pin provenance to it, not to a branch name
            if re.fullmatch(r"[0-9a-f]{40}", self.path.name):
                return self.path.name
            return self.id.rsplit("@", 1)[1] if "@" in self.id else "main"
        return _content_revision(self.path, self.config)

    def info(self) -> dict[str, Any]:
        """ModelInfo as in docs/CONTRACTS.md."""
        return {"id": self.id, "source": self.source, "path": str(self.path), "revision": self.revision,
                "config": self.config.to_dict(), "card": self.card}


_REV_CACHE: dict[tuple[str, float, int], str] = {}


def _content_revision(path: Path, config: PackageConfig) -> str:
    w = path / config.weights
    try:
        st = w.stat()
    except OSError:
        return "unknown"
    key = (str(w), st.st_mtime, st.st_size)
    if key not in _REV_CACHE:
        h = hashlib.sha256()
        h.update((path / CONFIG_NAME).read_bytes())
        with open(w, "rb") as f:  # weights can be big: hash the head and the size, enough to tell versions apart
            h.update(f.read(1 << 20))
        h.update(str(st.st_size).encode())
        _REV_CACHE[key] = "sha256:" + h.hexdigest()[:12]
    return _REV_CACHE[key]


def _read_entry(path: Path, source: str, id_: str | None = None) -> ModelEntry:
    config = PackageConfig.load(path)
    card_path = path / CARD_NAME
    card = card_path.read_text(encoding="utf-8", errors="replace") if card_path.is_file() else ""
    return ModelEntry(id=id_ or config.name, source=source, path=path.resolve(), config=config, card=card)


def parse_hub_id(model_id: str) -> tuple[str, str | None]:
    """``hf://ORG/NAME@REV`` -> ``("ORG/NAME", "REV")`` (revision None when absent).

    Raises:
        ModelNotFoundError: the id is not of that form.
    """
    rest = model_id[len(HUB_PREFIX):]
    repo, _, rev = rest.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise ModelNotFoundError(f"hub model id {model_id!r} is malformed; use hf://ORG/NAME@REVISION")
    return repo, (rev or None)


class ModelRegistry:
    """Finds packages in the bundled and extra folders; resolves ``hf://`` ids through backend.hub."""

    def __init__(self, model_dirs: list[str | Path] | None = None, *, include_bundled: bool = True) -> None:
        self.include_bundled = include_bundled
        self.model_dirs = [Path(p).expanduser() for p in (model_dirs or [])]
        self.shadowed: list[str] = []
        self.broken: dict[str, str] = {}  # path -> why it was skipped
        self._hub: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()

    # -- discovery ----------------------------------------------------------------------------------
    def _candidates(self) -> list[tuple[Path, str]]:
        roots: list[tuple[Path, str]] = []
        if self.include_bundled:
            roots.append((BUNDLED_DIR, "bundled"))
        roots += [(d, "local") for d in self.model_dirs]
        out: list[tuple[Path, str]] = []
        for root, source in roots:
            if (root / CONFIG_NAME).is_file():
                out.append((root, source))
            elif root.is_dir():
                out += [(p, source) for p in sorted(root.iterdir()) if (p / CONFIG_NAME).is_file()]
        return out

    def scan(self) -> dict[str, ModelEntry]:
        """Read every package's config (cheap: no weights are loaded). Broken ones go to :attr:`broken`."""
        found: dict[str, ModelEntry] = {}
        shadowed, broken = [], {}
        for path, source in self._candidates():
            try:
                entry = _read_entry(path, source)
            except PackageError as exc:
                broken[str(path)] = str(exc)
                continue
            if entry.id in found:
                shadowed.append(f"{path} (name {entry.id!r} already provided by {found[entry.id].path})")
                continue
            found[entry.id] = entry
        with self._lock:
            self.shadowed, self.broken = shadowed, broken
            found.update(self._hub)
        return found

    def list(self) -> list[ModelEntry]:
        return sorted(self.scan().values(), key=lambda e: e.id)

    def get(self, model_id: str) -> ModelEntry:
        """Find a model by id, fetching ``hf://`` ids through :mod:`backend.hub`.

        Raises:
            ModelNotFoundError: no package has that name (the message lists the known ones).
            ModelPackageError: the package was found but its config is broken.
        """
        if not isinstance(model_id, str) or not model_id:
            raise ModelNotFoundError("no model given; pass the id of one of GET /api/v1/models")
        if model_id.startswith(HUB_PREFIX):
            return self._get_hub(model_id)
        models = self.scan()
        if model_id in models:
            return models[model_id]
        for path, why in self.broken.items():
            if Path(path).name == model_id:
                raise ModelPackageError(f"model package {path} is broken: {why}. Fix its {CONFIG_NAME} (see "
                                        "docs/CONTRACTS.md) or re-download / re-export the package")
        known = ", ".join(sorted(models)) or "none installed"
        raise ModelNotFoundError(
            f"unknown model {model_id!r}; known models: {known}. Add a package folder with --models-dir "
            f"or RSFM_MODELS_PATH, or use a hub id hf://ORG/NAME@REVISION")

    def _get_hub(self, model_id: str) -> ModelEntry:
        with self._lock:
            if model_id in self._hub:
                return self._hub[model_id]
        try:
            from backend import hub  # written by the hub engineer; optional
        except ImportError as exc:
            parse_hub_id(model_id)  # a malformed id is still reported as such
            raise ModelNotFoundError(f"cannot fetch {model_id!r}: Hub support is not available in this "
                                     f"backend ({exc}); install the package folder and use --models-dir") from None
        from backend.errors import RsfmError

        try:
            path = Path(hub.fetch_model(model_id))
        except RsfmError:
            raise
        except Exception as exc:  # noqa: BLE001 - anything else from the network stack, reported plainly
            raise ModelNotFoundError(f"cannot fetch {model_id!r} from the Hub: {exc}") from exc
        try:
            entry = _read_entry(path, "hub", model_id)
        except PackageError as exc:
            raise ModelPackageError(f"hub model {model_id!r} is not a valid RSFM package: {exc}") from None
        with self._lock:
            self._hub[model_id] = entry
        return entry
