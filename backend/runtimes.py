"""Runtimes run a model package on batches of tiles; they hold the weights and no other state.

A runtime is built from a :class:`~backend.models.ModelEntry` and called with one or two float32 arrays
``B x C x H x W`` (already normalised); it returns numpy arrays following the model call convention in
``docs/CONTRACTS.md`` (a ``B x K x H x W`` / ``B x K`` array, or a list of per-image dicts of arrays).
Runtimes register by name in :data:`RUNTIMES`; ``torch`` and ``onnx`` are built in the same way.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from backend.errors import BadRequestError, ModelPackageError
from backend.models import ModelEntry

RUNTIMES: dict[str, Callable[..., Runtime]] = {}


def register_runtime(name: str):
    def deco(cls):
        RUNTIMES[name] = cls
        return cls
    return deco


class Runtime:
    name = "base"

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

    def __init__(self, entry: ModelEntry, *, device: str = "cpu", threads: int = 1) -> None:
        import torch

        from training.package import PackageError, load_package

        torch.set_num_threads(max(1, threads))
        self.device = resolve_device(device)
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
        with self._lock, torch.inference_mode():
            return _to_numpy(self.model(*tensors))


_DENSE_TASKS = ("semantic_segmentation", "scene_classification", "change_detection")


@register_runtime("onnx")
class OnnxRuntime(Runtime):
    """onnxruntime on the package's ``model.onnx`` (dense tasks: the graph returns one tensor)."""

    name = "onnx"

    def __init__(self, entry: ModelEntry, *, device: str = "cpu", threads: int = 1) -> None:
        import onnxruntime as ort

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

    def put(self, entry: ModelEntry, runtime: str, device: str, rt: Runtime) -> None:
        """Install an already-built runtime for ``entry`` (embedding applications and tests)."""
        with self._lock:
            self._items[(str(entry.path), entry.revision, runtime, device)] = rt

    def get(self, entry: ModelEntry, runtime: str, device: str, threads: int) -> Runtime:
        if runtime not in RUNTIMES:
            raise BadRequestError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        key = (str(entry.path), entry.revision, runtime, device)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        rt = RUNTIMES[runtime](entry, device=device, threads=threads)
        with self._lock:
            self._items[key] = rt
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return rt
