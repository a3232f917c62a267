"""Load official MTP checkpoint files safely and map them onto RSFM modules.

The official files (MTP_SPEC §1.8, §5) are ``torch.save`` pickles of a dict
``{'epoch', 'iteration', 'state_dict', 'optimizer', 'scheduler', 'loss_pretrain'}`` where
``loss_pretrain`` is a numpy array; finetuned MMEngine files also pickle MMEngine classes
(``message_hub``). Unpickling runs arbitrary code, so this module never uses plain pickle by default:

* :func:`load_checkpoint_file` uses ``torch.load(weights_only=True)`` with an allow-list of the numpy
  globals the official files hold. Any other Python object makes it fail with a message naming the
  objects (:class:`UnsafeCheckpointError`). ``placeholder_unknown=True`` turns such objects into inert
  placeholders (nothing of theirs is executed; tensors still load), for MMEngine files.
* :func:`extract_state_dict` unwraps ``state_dict``/``model`` and strips ``module.``;
  :func:`split_mtp_checkpoint` splits a full multi-task checkpoint into encoder and decoder parts.
* :func:`load_weights` filters (architecture-specific ``checkpoint_filter_fn``), loads, and returns a
  :class:`LoadReport` that says in plain words what was missing, unexpected or mis-shaped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

__all__ = [
    "CheckpointMismatchError",
    "LoadReport",
    "UnsafeCheckpointError",
    "fill_deterministic_",
    "extract_state_dict",
    "load_checkpoint_file",
    "load_weights",
    "split_mtp_checkpoint",
]


class UnsafeCheckpointError(ValueError):
    """The file holds Python objects outside the allow-list; it was not unpickled."""

    def __init__(self, path: str | os.PathLike, names: list[str]) -> None:
        self.path, self.names = str(path), names
        super().__init__(
            f"refusing to load {path}: it contains Python objects outside the allow-list "
            f"({', '.join(names)}). Unpickling them could run arbitrary code. If this is an MMEngine/mm* "
            "checkpoint from a source you trust, call load_checkpoint_file(path, placeholder_unknown=True) "
            "(the objects become inert placeholders; tensors load normally), or convert the file to "
            "safetensors on a machine where you trust it."
        )


class CheckpointMismatchError(RuntimeError):
    """Strict loading failed; ``report`` says which keys were missing, unexpected or mis-shaped."""

    def __init__(self, report: LoadReport) -> None:
        self.report = report
        super().__init__(str(report))


# ------------------------------------------------------------------------------------- safe unpickling


def _numpy_allow_list() -> list[tuple[object, str]]:
    """numpy globals that official checkpoints reference, under both the numpy 1.x and 2.x module paths."""
    import numpy as np

    try:
        from numpy._core import multiarray as ma
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray as ma  # type: ignore[no-redef]
    entries: list[tuple[object, str]] = []
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        entries.append((ma._reconstruct, f"{mod}._reconstruct"))
        entries.append((ma.scalar, f"{mod}.scalar"))
    entries.append((np.ndarray, "numpy.ndarray"))
    entries.append((np.dtype, "numpy.dtype"))
    # numpy >= 1.25 pickles dtypes through their classes (numpy.dtypes.Float64DType, ...).
    dtypes_mod = getattr(np, "dtypes", None)
    if dtypes_mod is not None:
        for name in dir(dtypes_mod):
            obj = getattr(dtypes_mod, name)
            if isinstance(obj, type) and issubclass(obj, np.dtype):
                entries.append((obj, f"numpy.dtypes.{name}"))
    return entries


class _Placeholder:
    """Inert stand-in for a class outside the allow-list: stores whatever state it is given, runs nothing."""

    _qualname = "?"

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: object) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<placeholder for {self._qualname}>"


def _placeholder_for(qualname: str) -> type:
    return type(f"Placeholder[{qualname}]", (_Placeholder,), {"_qualname": qualname})


@dataclass
class _Loaded:
    obj: object
    placeholders: list[str]


def _load(path: Path, placeholder_unknown: bool) -> _Loaded:
    allow = _numpy_allow_list()
    allowed_names = {name for _, name in allow}
    try:
        unknown = [
            g
            for g in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
            if g not in allowed_names
        ]
    except Exception:  # legacy (non-zip) format: the unpickler itself will enforce the allow-list
        unknown = []
    if unknown and not placeholder_unknown:
        raise UnsafeCheckpointError(path, unknown)
    extra: list[tuple[object, str]] = []
    for g in unknown:
        stub = _placeholder_for(g)
        extra.append((stub, g))
        if g.startswith("builtins."):  # protocol-2 pickles name the module __builtin__
            extra.append((stub, "__builtin__." + g[len("builtins.") :]))
    try:
        with torch.serialization.safe_globals(allow + extra):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        if isinstance(exc, UnsafeCheckpointError):
            raise
        msg = str(exc)
        if "Weights only load failed" in msg or "WeightsUnpickler" in msg:
            names = re.findall(r"GLOBAL (\S+)|unrecognized function (.+)", msg)
            names = [a or b for a, b in names] or ["an object the safe unpickler cannot rebuild"]
            raise UnsafeCheckpointError(path, sorted(set(names))) from exc
        raise
    return _Loaded(obj, unknown)


def load_checkpoint_file(
    path: str | os.PathLike, *, placeholder_unknown: bool = False
) -> object:
    """Read a ``.pth``/``.pt``/``.safetensors`` checkpoint on CPU without executing foreign code.

    Args:
        path: file path.
        placeholder_unknown: replace objects of classes outside the allow-list (e.g. MMEngine's
            ``HistoryBuffer``) by inert placeholders instead of refusing the file.

    Returns:
        The unpickled object (usually a dict); for ``.safetensors`` a ``dict[str, Tensor]``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the file holds objects outside the allow-list (names in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found; check the path (MTP weights are user-supplied files)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return _load(path, placeholder_unknown).obj


# ------------------------------------------------------------------------------------- state-dict shapes


def extract_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """Unwrap a checkpoint container to a flat ``name -> tensor`` dict.

    Accepts ``{'state_dict': ...}``, ``{'model': ...}``, ``{'module': ...}`` or a bare state dict; strips a
    leading ``module.`` (DataParallel/DDP). Non-tensor entries of a bare dict are dropped.

    Raises:
        ValueError: no tensors found (the message lists the top-level keys that were seen).
    """
    sd: object = obj
    if isinstance(sd, Mapping):
        for key in ("state_dict", "model", "module"):
            if key in sd and isinstance(sd[key], Mapping):
                sd = sd[key]
                break
    if not isinstance(sd, Mapping):
        raise ValueError(f"checkpoint holds a {type(obj).__name__}, expected a dict with a state dict inside")
    out = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not out:
        keys = list(obj.keys())[:10] if isinstance(obj, Mapping) else []
        raise ValueError(
            f"no tensors found in the checkpoint (top-level keys: {keys}); expected 'state_dict', 'model' or a bare state dict"
        )
    if all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def split_mtp_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a full MTP multi-task checkpoint into ``(encoder, decoders)``.

    ``encoder.*`` keys go to the first dict with the prefix removed; everything else (``semsegdecoder.*``,
    ``semseghead_1.*``, ``inssegdecoder.*``, ``rotdetdecoder.*``, per-dataset heads...) goes to the second
    with the original key names. An encoder-only file (no ``encoder.`` keys) returns ``(all, {})``.
    """
    sd = dict(state_dict)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    if not any(k.startswith("encoder.") for k in sd):
        return sd, {}
    enc = {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
    dec = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
    return enc, dec


# ------------------------------------------------------------------------------------------- reporting


@dataclass
class LoadReport:
    """What happened when weights were loaded into a module.

    Attributes:
        source: file name or description.
        loaded: number of tensors copied into the module.
        missing: module keys the checkpoint did not provide (they keep their init values).
        unexpected: checkpoint keys the module has no place for (ignored).
        shape_mismatch: ``(key, checkpoint shape, module shape)`` for keys that were skipped.
        placeholders: classes outside the allow-list that were replaced by inert placeholders.
    """

    source: str = ""
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every module key was loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def __str__(self) -> str:
        def some(keys: list[str]) -> str:
            head = ", ".join(keys[:8])
            return head + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")

        lines = [f"loaded {self.loaded} tensors from {self.source or 'the checkpoint'}"]
        if self.missing:
            lines.append(
                f"{len(self.missing)} weights of the model were not in the file and keep their initial values: {some(self.missing)}"
            )
        if self.unexpected:
            lines.append(
                f"{len(self.unexpected)} entries of the file have no place in the model and were ignored: {some(self.unexpected)}"
            )
        if self.shape_mismatch:
            desc = [f"{k} (file {tuple(a)}, model {tuple(b)})" for k, a, b in self.shape_mismatch]
            lines.append(
                f"{len(desc)} entries have a different shape in the file and were skipped: {some(desc)}"
            )
        if self.placeholders:
            lines.append(f"non-tensor objects replaced by inert placeholders: {', '.join(self.placeholders)}")
        if self.ok:
            lines.append("every weight of the model was loaded")
        else:
            lines.append(
                "check that the architecture (and img_size for ViTs) matches the checkpoint, or pass "
                "allowed_missing for keys you expect to train from scratch"
            )
        return "; ".join(lines)


def _default_filter(
    model: nn.Module,
) -> Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None:
    """The ``checkpoint_filter_fn`` of the model's family, if it is one of ours."""
    from training.models import intern_image, vit_rvsa

    if isinstance(model, vit_rvsa.ViTRVSA):
        return vit_rvsa.checkpoint_filter_fn
    if isinstance(model, intern_image.InternImage):
        return intern_image.checkpoint_filter_fn
    return None


def load_weights(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    filter_fn: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None,
    strict: bool = True,
    allowed_missing: Iterable[str] = (),
    placeholder_unknown: bool = False,
) -> LoadReport:
    """Load a checkpoint file (or a state dict) into ``model`` and report what happened.

    For a full MTP checkpoint only the ``encoder.*`` part is used (the decoders are reported as
    unexpected only if no encoder part exists). The architecture's ``checkpoint_filter_fn`` is applied by
    default (prefix stripping, pos-embed / rel-pos resizing for ViTs).

    Args:
        model: target module (e.g. ``create_model("vit_b_rvsa")``).
        source: path to a checkpoint file, or an already-loaded state dict / container.
        filter_fn: override the architecture's filter; ``None`` = pick by model type (identity if unknown).
        strict: raise :class:`CheckpointMismatchError` unless every key matches (``allowed_missing`` aside).
        allowed_missing: module keys that may be absent (e.g. a new head).
        placeholder_unknown: see :func:`load_checkpoint_file`.

    Returns:
        A :class:`LoadReport`.

    Raises:
        CheckpointMismatchError: ``strict`` and keys are missing/unexpected/mis-shaped.
        UnsafeCheckpointError: the file holds objects outside the allow-list.
    """
    placeholders: list[str] = []
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix == ".safetensors":
            obj: object = load_checkpoint_file(path)
        else:
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint {path} not found; check the path")
            loaded = _load(path, placeholder_unknown)
            obj, placeholders = loaded.obj, loaded.placeholders
        name = path.name
    else:
        obj, name = source, "state dict"
    sd = extract_state_dict(obj)
    enc, _ = split_mtp_checkpoint(sd)
    fn = filter_fn if filter_fn is not None else _default_filter(model)
    if fn is not None:
        enc = fn(enc, model)
    elif any(k.startswith("backbone.") for k in enc):  # MMEngine finetune file, model without a filter
        enc = {k[len("backbone.") :]: v for k, v in enc.items() if k.startswith("backbone.")}

    own = model.state_dict()
    allowed = set(allowed_missing)
    report = LoadReport(source=name, placeholders=placeholders)
    to_load: dict[str, torch.Tensor] = {}
    for k, v in enc.items():
        if k not in own:
            report.unexpected.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            report.shape_mismatch.append((k, tuple(v.shape), tuple(own[k].shape)))
        else:
            to_load[k] = v
    report.missing = [
        k
        for k in own
        if k not in to_load and k not in allowed and not any(k == m for m, _, _ in report.shape_mismatch)
    ]
    if strict and not report.ok:
        raise CheckpointMismatchError(report)
    model.load_state_dict(to_load, strict=False)
    report.loaded = len(to_load)
    return report


# ----------------------------------------------------------------------------------------- test support


def fill_deterministic_(model: nn.Module) -> nn.Module:
    """Overwrite every floating-point parameter/buffer of ``model`` in place with the deterministic weights
    of MTP_SPEC §7.9 (for golden-output tests; in place so that big models need no second copy).

    For a tensor with key k and ``t = arange(numel)`` (float64, row-major) the value is
    ``off + amp * sin(0.37 t + 0.11 len(k))`` with (off, amp) by the first matching rule:
    (1, 0.1) 1-D norm weights (k contains ``norm`` or ``.ln.``, ends with ``weight``); (0, 0.3) ``rel_pos``
    or ``relative_position_bias_table``; (0, 0.1) ``pos_embed``; (0, 0.05) ``.qkv.weight``; else (0, 0.02).
    Integer buffers keep their values. Keys must be the official ones for the goldens to apply.

    Returns:
        ``model`` itself.
    """
    with torch.no_grad():
        for k, v in model.state_dict(keep_vars=True).items():
            if not v.is_floating_point():
                continue
            if v.ndim == 1 and ("norm" in k or ".ln." in k) and k.endswith("weight"):
                off, amp = 1.0, 0.1
            elif "rel_pos" in k or "relative_position_bias_table" in k:
                off, amp = 0.0, 0.3
            elif "pos_embed" in k:
                off, amp = 0.0, 0.1
            elif ".qkv.weight" in k:
                off, amp = 0.0, 0.05
            else:
                off, amp = 0.0, 0.02
            t = torch.arange(v.numel(), dtype=torch.float64)
            v.copy_((off + amp * torch.sin(0.37 * t + 0.11 * len(k))).reshape(v.shape))
    return model
