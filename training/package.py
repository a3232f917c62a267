"""The model package: one directory (= one Hub repo) with ``config.json``, safetensors weights and a card.

:class:`PackageConfig` mirrors ``config.json`` field for field (see ``docs/CONTRACTS.md``). It is the single
implementation of the contract: training writes packages with :func:`save_package`, the backend reads
them with :func:`load_package`. Weights are only ever read with safetensors, so opening a package never
unpickles anything.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
TASKS = (
    "semantic_segmentation",
    "instance_segmentation",
    "object_detection",
    "rotated_detection",
    "scene_classification",
    "change_detection",
)
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
_COLOR_RE = re.compile(r"^#[0-9A-Fa-f]{6}$")


class PackageError(ValueError):
    """A model package is missing, malformed or does not match its weights."""


@dataclass
class ClassInfo:
    name: str
    color: str  # "#RRGGBB"


@dataclass
class PackageConfig:
    name: str
    task: str
    architecture: str
    classes: list[ClassInfo]
    bands: list[str]
    mean: list[float]
    std: list[float]
    gsd_m: float
    architecture_kwargs: dict[str, Any] = field(default_factory=dict)
    input_dtype: str = "uint8"
    gsd_range_m: tuple[float, float] | None = None
    tile_size_px: int = 512
    tile_overlap_px: int = 64
    batch_size: int = 4
    score_threshold: float = 0.3
    # validated to run in bf16 (class maps checked against fp32); lets the backend's precision=auto use it
    bf16: bool = False
    ignore_index: int | None = None
    weights: str = "model.safetensors"
    onnx: str | None = None
    licence: str = "unknown"
    training_data: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.classes = [c if isinstance(c, ClassInfo) else ClassInfo(**c) for c in self.classes]
        if self.gsd_range_m is not None:
            self.gsd_range_m = (float(self.gsd_range_m[0]), float(self.gsd_range_m[1]))
        self.validate()

    # -- contract ---------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`PackageError` naming the first field that breaks the contract."""
        problems = []
        if self.format_version != FORMAT_VERSION:
            problems.append(f"format_version is {self.format_version}; this RSFM reads {FORMAT_VERSION}")
        if self.task not in TASKS:
            problems.append(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        if not self.classes:
            problems.append("classes is empty")
        for c in self.classes:
            if not _COLOR_RE.match(c.color):
                problems.append(f"class {c.name!r} has colour {c.color!r}; use #RRGGBB")
        n = len(self.bands)
        if n == 0:
            problems.append("bands is empty")
        if len(self.mean) != n or len(self.std) != n:
            problems.append(f"mean/std need one value per band ({n}); got {len(self.mean)}/{len(self.std)}")
        if any(s <= 0 for s in self.std):
            problems.append("std values must be > 0")
        if not self.gsd_m > 0:
            problems.append("gsd_m must be > 0")
        if self.gsd_range_m is not None and not (0 < self.gsd_range_m[0] <= self.gsd_m <= self.gsd_range_m[1]):
            problems.append("gsd_range_m must be [min, max] around gsd_m")
        if self.tile_size_px <= 0 or not (0 <= self.tile_overlap_px < self.tile_size_px // 2 + 1):
            problems.append("tile_size_px must be > 0 and tile_overlap_px in [0, tile_size_px/2]")
        if self.batch_size <= 0:
            problems.append("batch_size must be > 0")
        if problems:
            raise PackageError(f"model package {self.name!r}: " + "; ".join(problems))

    @property
    def band_count(self) -> int:
        return len(self.bands)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    # -- (de)serialisation --------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PackageConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PackageError(f"config.json has unknown keys {unknown}; valid keys: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:  # missing required key
            raise PackageError(f"config.json is incomplete: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.gsd_range_m is not None:
            d["gsd_range_m"] = list(self.gsd_range_m)
        return d

    @classmethod
    def load(cls, path: str | os.PathLike) -> PackageConfig:
        """Read ``config.json`` from a package directory (or the file itself)."""
        p = Path(path)
        if p.is_dir():
            p = p / CONFIG_NAME
        if not p.is_file():
            raise PackageError(f"no {CONFIG_NAME} at {p}; a model package is a folder with config.json")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PackageError(f"{p} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise PackageError(f"{p} must hold a JSON object")
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        _atomic_write_text(Path(path) / CONFIG_NAME, json.dumps(self.to_dict(), indent=2) + "\n")


def _umask_mode() -> int:
    """Mode a plain ``open()`` would give a new file (mkstemp's 0600 is too strict for shared packages)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, path)


def build_model(config: PackageConfig):
    """Instantiate the (untrained) architecture a config names."""
    from training.models import create_model

    return create_model(config.architecture, **config.architecture_kwargs)


def save_package(model, config: PackageConfig, out_dir: str | os.PathLike, card: str | None = None) -> Path:
    """Write ``model``'s weights, ``config.json`` and the model card into ``out_dir``.

    The weights go through safetensors; shared tensors are cloned so the file round-trips.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".weights.")
    os.close(fd)
    save_file(state, tmp, metadata={"format": "pt", "rsfm_name": config.name})
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, out / config.weights)
    config.save(out)
    _atomic_write_text(out / CARD_NAME, card if card is not None else default_card(config))
    return out


def load_package(path: str | os.PathLike, device: str = "cpu"):
    """Load a package directory into ``(config, model)`` with the model in eval mode.

    Raises:
        PackageError: config broken, weights missing, or weights that do not fit the architecture
            (the message lists missing and unexpected keys).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    config = PackageConfig.load(p)
    wpath = p / config.weights
    if not wpath.is_file():
        raise PackageError(f"model package {config.name!r} has no weights file {wpath.name} in {p}")
    try:
        state = load_file(str(wpath), device=device)
    except (SafetensorError, OSError) as exc:
        raise PackageError(f"weights file {wpath} is unreadable or corrupt ({exc}); re-download the package") from None
    try:
        model = build_model(config)
    except (KeyError, TypeError) as exc:
        raise PackageError(f"model package {config.name!r}: cannot build architecture: {exc}") from None
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # same names, wrong shapes
        raise PackageError(f"weights in {wpath} have wrong shapes for {config.architecture!r} "
                           f"(re-export the package): {exc}") from None
    if result.missing_keys or result.unexpected_keys:
        raise PackageError(
            f"weights in {wpath} do not match architecture {config.architecture!r} (re-export the package): "
            f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})"
        )
    return config, model.to(device).eval()


def default_card(config: PackageConfig) -> str:
    """A minimal model card; training writes a fuller one with metrics and data."""
    classes = ", ".join(config.class_names)
    metrics = "\n".join(f"- {k}: {v}" for k, v in config.metrics.items()) or "- not evaluated"
    return (
        f"---\nlicense: {config.licence}\ntags:\n- rsfm\n- remote-sensing\n- {config.task.replace('_', '-')}\n---\n\n"
        f"# {config.name}\n\n{config.description}\n\n"
        f"- Task: {config.task}\n- Architecture: {config.architecture}\n- Classes: {classes}\n"
        f"- Bands: {', '.join(config.bands)} ({config.input_dtype})\n- GSD: {config.gsd_m} m\n"
        f"- Training data: {config.training_data}\n\n## Metrics\n\n{metrics}\n"
    )
