"""Runtimes run a model package on batches of tiles; they hold the weights and no other state.

A runtime is built from a :class:`~backend.models.ModelEntry` and called with one or two float32 arrays
``B x C x H x W`` (already normalised); it returns numpy arrays following the model call convention in
``docs/CONTRACTS.md`` (a ``B x K x H x W`` / ``B x K`` array, or a list of per-image dicts of arrays).
Runtimes register by name in :data:`RUNTIMES`; ``torch`` and ``onnx`` are built in the same way.

Precision (``fp32`` or ``bf16``) is a second axis: ``torch`` runs dense models in bfloat16 autocast on CPUs with
native bf16 matmul (AMX / AVX512-BF16): ~2x torch fp32 and ~1.05-1.2x onnxruntime fp32 on the default model
(docs/bench/throughput.md). Rounding flips only pixels the fp32 model is unsure of (top-class probability
<= 0.55): 99.4 % of the pixels of a 4096² Dubai mosaic keep their class (tests/backend/test_precision.py).
:func:`resolve_runtime` picks both for a job.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import BadRequestError, ModelPackageError
from backend.models import ModelEntry

RUNTIMES: dict[str, Callable[..., Runtime]] = {}
PRECISIONS = ("fp32", "bf16")  # what a runtime computes in; "auto" is resolved by resolve_runtime


def register_runtime(name: str):
    def deco(cls):
        RUNTIMES[name] = cls
        return cls
    return deco


class Runtime:
    name = "base"
    precision = "fp32"

    def __call__(self, *inputs: np.ndarray) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


def _to_numpy(out: Any) -> Any:
    import torch

    if isinstance(out, torch.Tensor):
        return out.detach().float().cpu().numpy()
    if isinstance(out, dict):
        return {k: _to_numpy(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return [_to_numpy(v) for v in out]
    return out


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@register_runtime("torch")
class TorchRuntime(Runtime):
    """Eager PyTorch: ``training.package.load_package`` (safetensors only, never unpickles)."""

    name = "torch"

    def __init__(self, entry: ModelEntry, *, device: str = "cpu", threads: int = 1, precision: str = "fp32") -> None:
        import torch

        from training.package import PackageError, load_package

        if precision not in PRECISIONS:
            raise BadRequestError(f"precision {precision!r} is unknown; use {' or '.join(PRECISIONS)}",
                                  code="invalid_option")
        torch.set_num_threads(max(1, threads))
        self.device = resolve_device(device)
        if precision == "bf16":
            check_bf16(self.device)
        self.precision = precision
        # bf16 = autocast: matmuls and convolutions in bfloat16, normalisations and softmax stay fp32, weights
        # stay fp32 (autocast casts them per call; ~15 MB, negligible next to a batch of 512 px tiles).
        self._autocast_device = self.device.split(":")[0]
        try:
            _, self.model = load_package(entry.path, device=self.device)
        except (PackageError, RuntimeError) as exc:
            # load_state_dict reports shape mismatches as RuntimeError: the package is wrong, not RSFM
            if not isinstance(exc, PackageError) and "state_dict" not in str(exc):
                raise
            why = str(exc).strip().splitlines()
            raise ModelPackageError(f"model package {entry.id!r} at {entry.path} cannot be loaded: "
                                    f"{' '.join(w.strip() for w in why[:3])}. Its weights must match config.json "
                                    "(classes, architecture_kwargs); re-export it (python -m training.cli export) "
                                    "or re-download it") from None
        self._lock = threading.Lock()  # one forward at a time per loaded model (jobs may share it)
        # Dense CNN graphs run 1.3-1.4x faster in channels-last on CPU (docs/BENCHMARKS.md); detection heads
        # reshape feature maps with .view(), so they keep the default layout.
        self.memory_format = (torch.channels_last if entry.config.task in _DENSE_TASKS
                              else torch.contiguous_format)
        self.model = self.model.to(memory_format=self.memory_format)

    def __call__(self, *inputs: np.ndarray) -> Any:
        import torch

        tensors = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
                   .contiguous(memory_format=self.memory_format) for x in inputs]
        with self._lock, torch.inference_mode(), torch.autocast(self._autocast_device, dtype=torch.bfloat16,
                                                                 enabled=self.precision == "bf16"):
            return _to_numpy(self.model(*tensors))


_DENSE_TASKS = ("semantic_segmentation", "scene_classification", "change_detection")


@register_runtime("onnx")
class OnnxRuntime(Runtime):
    """onnxruntime on the package's ``model.onnx`` (dense tasks: the graph returns one tensor)."""

    name = "onnx"

    def __init__(self, entry: ModelEntry, *, device: str = "cpu", threads: int = 1, precision: str = "fp32") -> None:
        import onnxruntime as ort

        if precision != "fp32":
            raise BadRequestError(f"runtime onnx computes in fp32 only, got precision {precision!r}; use runtime "
                                  "torch for bf16 (or precision fp32)", code="invalid_option")
        if not entry.config.onnx:
            raise BadRequestError(f"model {entry.id!r} has no ONNX graph; use runtime 'torch'")
        path = entry.path / entry.config.onnx
        if not path.is_file():
            raise ModelPackageError(f"model package {entry.path} names {entry.config.onnx} but the file is missing")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        # Idle worker threads must sleep, not spin: on a laptop shared with QGIS spinning costs up to 1.3x
        # (docs/BENCHMARKS.md, "runtimes").
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if resolve_device(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: np.ndarray) -> Any:
        if len(inputs) != len(self.input_names):
            raise ModelPackageError(f"ONNX graph takes {len(self.input_names)} inputs, got {len(inputs)}")
        feeds = {n: np.ascontiguousarray(x, dtype=np.float32) for n, x in zip(self.input_names, inputs, strict=True)}
        outs = self.session.run(None, feeds)
        return outs[0] if len(outs) == 1 else outs


# -- precision ---------------------------------------------------------------------------------------------

# Tasks whose model is one dense graph (conv / matmul, tensor out): bf16 autocast is validated for these only.
# Detection heads (RoI align, box decoding, NMS) keep fp32.
BF16_TASKS = ("semantic_segmentation", "change_detection", "scene_classification")
ONNX_TASKS = BF16_TASKS  # tasks whose model returns one tensor (what the onnx runtime returns)
# Whether runtime=auto picks torch bf16 over onnxruntime fp32 where both apply. Measured on the default model
# (docs/bench/throughput.md, runtimes.md): torch bf16 / onnx fp32 = 0.89-1.22x depending on load and threads
# (1.05x at 2 threads with the server's OMP_WAIT_POLICY=PASSIVE), i.e. no reliable gain, while bf16 changes
# 0.1-0.6 % of the pixels and makes class maps depend on the CPU. So auto keeps onnx fp32 (same classes as
# torch fp32); bf16 is what precision=auto gives a job that runs on torch (1.7x torch fp32).
AUTO_PREFERS_TORCH_BF16 = False


# CPU flags that mean "bf16 matrix multiplies run natively" (oneDNN uses AMX tiles or AVX512-BF16 dot products)
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The feature flags of the first ``flags`` (x86) or ``Features`` (arm64) line of ``/proc/cpuinfo``;
    ``None`` when it cannot be read (macOS, Windows). ``cpuinfo`` overrides the file's text (for tests)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return None


def _cpuinfo_flags() -> set[str] | None:
    return cpu_flags()


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> str | None:
    """Which native bf16 matmul the CPU has: ``"amx_bf16"``, ``"avx512_bf16"``, or ``None``.

    Read from ``/proc/cpuinfo`` (no torch import); elsewhere asked from torch (``torch.cpu`` probes). Without
    either, bf16 runs emulated in fp32 and is *slower* than fp32, so it is never chosen automatically.
    """
    flags = _cpuinfo_flags()
    if flags is not None:
        for f in BF16_FLAGS:
            if f in flags:
                return f
        return None
    try:  # macOS / Windows: torch's own CPU probes (private helpers; absent in some builds)
        import torch

        if torch.cpu._is_amx_tile_supported():
            return "amx_bf16"
        if torch.cpu._is_avx512_bf16_supported():
            return "avx512_bf16"
    except (ImportError, AttributeError):
        pass
    return None


def check_bf16(device: str) -> None:
    """Raise :class:`BadRequestError` when ``device`` cannot compute in bf16 at native speed."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_bf16_supported():
            raise BadRequestError(f"precision bf16 needs a GPU with bfloat16 support; {device} has none: use "
                                  "precision fp32 (or auto)", code="invalid_option")
        return
    if cpu_bf16_support() is None:
        raise BadRequestError("precision bf16 needs a CPU with native bf16 matmul (AMX or AVX512-BF16 in "
                              "/proc/cpuinfo flags); this CPU has neither, so bf16 would be emulated and slower "
                              "than fp32: use precision fp32 (or auto)", code="invalid_option")


def package_allows_bf16(entry: ModelEntry) -> bool:
    """Whether ``precision=auto`` may run this package in bf16 (validated dense package, see above)."""
    cfg = entry.config
    if cfg.task not in BF16_TASKS:
        return False
    # config.json "bf16": true is set by whoever validated the package's bf16 class maps against fp32 (the
    # default land-cover model: tests/backend/test_precision.py and docs/bench/throughput.md)
    return bool(cfg.bf16)


def _onnx_usable(entry: ModelEntry, *, check_file: bool = True) -> bool:
    """The package names an ONNX graph for a tensor-output task (and, with ``check_file``, the file exists
    and onnxruntime is installed; an explicit ``runtime=onnx`` reports a missing file when loading)."""
    cfg = entry.config
    if not (cfg.onnx and cfg.task in ONNX_TASKS):
        return False
    return not check_file or ((entry.path / cfg.onnx).is_file() and "onnx" in available_runtimes())


def gsd_in_range(entry: ModelEntry, gsd_m: float | None) -> bool:
    """Whether a raster pixel size (m) lies in the package's ``gsd_range_m`` (unknown size: assumed in range)."""
    cfg = entry.config
    if gsd_m is None or not math.isfinite(gsd_m):
        return True
    lo, hi = cfg.gsd_range_m or (cfg.gsd_m, cfg.gsd_m)
    return lo <= gsd_m <= hi


def resolve_runtime(entry: ModelEntry, runtime: str = "auto", precision: str = "auto",
                    device: str = "cpu", gsd_m: float | None = None) -> tuple[str, str]:
    """The ``(runtime, precision)`` a job runs with, from the requested values (each may be ``auto``).

    * ``precision=auto``: bf16 when the runtime is torch, the device is a CPU with native bf16 matmul
      (:func:`cpu_bf16_support`), the package allows it (:func:`package_allows_bf16`) and the raster's pixel
      size ``gsd_m`` is in the package's range; fp32 otherwise. bf16 only flips pixels the fp32 model is
      unsure of (top-class probability <= 0.6 on the NAIP sample), so agreement follows the model's
      confidence: 99.9 % on in-domain Dubai tiles, 98.7-99.9 % on NAIP crops resampled into the range, but
      95 % on NAIP at its native 5 m, off the range, where most pixels are unsure: auto keeps fp32 there.
    * ``runtime=auto``: onnx where the package ships a usable ``model.onnx`` and onnxruntime is installed
      (~1.5-2.5x eager torch fp32 and as fast as torch bf16, docs/bench/runtimes.md; see
      :data:`AUTO_PREFERS_TORCH_BF16`), else torch (in bf16 where ``precision=auto`` allows it).
      ``precision=bf16`` with ``runtime=auto`` runs torch.

    Args:
        entry: the model package.
        runtime: ``auto``, ``torch`` or ``onnx``.
        precision: ``auto``, ``fp32`` or ``bf16``.
        device: the resolved torch device (``cpu``, ``cuda:0``).

    Raises:
        BadRequestError (code ``invalid_option``): an unknown value, onnx without a usable graph, bf16 with
            onnx, bf16 for a detection model, or bf16 on a device without native bf16.
    """
    if runtime not in ("auto", *RUNTIMES):
        raise BadRequestError(f"runtime {runtime!r} is unknown; use auto, {', '.join(RUNTIMES)}",
                              code="invalid_option")
    if precision not in ("auto", *PRECISIONS):
        raise BadRequestError(f"precision {precision!r} is unknown; use auto, {', '.join(PRECISIONS)}",
                              code="invalid_option")
    task = entry.config.task
    if runtime == "onnx" and not _onnx_usable(entry, check_file=False):
        raise BadRequestError(f"model {entry.id!r} has no ONNX graph usable for {task}; use runtime torch",
                              code="invalid_option")
    if precision == "bf16":
        if runtime == "onnx":
            raise BadRequestError("runtime onnx computes in fp32 only; use runtime torch (or auto) with precision "
                                  "bf16, or precision fp32", code="invalid_option")
        if task not in BF16_TASKS:
            raise BadRequestError(f"precision bf16 is supported for {', '.join(BF16_TASKS)} models, not {task}; "
                                  "use precision fp32 (or auto)", code="invalid_option")
        check_bf16(device)
        return "torch", "bf16"
    auto_bf16 = (precision == "auto" and not device.startswith("cuda") and cpu_bf16_support() is not None
                 and package_allows_bf16(entry) and gsd_in_range(entry, gsd_m))
    if runtime == "auto":
        if auto_bf16 and AUTO_PREFERS_TORCH_BF16:
            return "torch", "bf16"
        runtime = "onnx" if _onnx_usable(entry) else "torch"
    if runtime == "torch" and auto_bf16:
        return "torch", "bf16"
    return runtime, "fp32"


def available_runtimes() -> list[str]:
    """Runtimes whose library is installed (checked without importing it: torch takes seconds to load)."""
    import importlib.util

    libs = {"torch": "torch", "onnx": "onnxruntime"}
    return [name for name in RUNTIMES if importlib.util.find_spec(libs.get(name, name)) is not None]


class RuntimeCache:
    """Keeps the last few loaded models so consecutive jobs do not reload weights."""

    def __init__(self, max_items: int = 2) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple, Runtime] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, entry: ModelEntry, runtime: str, device: str, rt: Runtime, precision: str = "fp32") -> None:
        """Install an already-built runtime for ``entry`` (embedding applications and tests)."""
        with self._lock:
            self._items[(str(entry.path), entry.revision, runtime, device, precision)] = rt

    def get(self, entry: ModelEntry, runtime: str, device: str, threads: int, precision: str = "fp32") -> Runtime:
        if runtime not in RUNTIMES:
            raise BadRequestError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        key = (str(entry.path), entry.revision, runtime, device, precision)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        rt = RUNTIMES[runtime](entry, device=device, threads=threads, precision=precision)
        with self._lock:
            self._items[key] = rt
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return rt
