"""Export a model to ONNX and measure its parity with PyTorch eager.

Uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): the dynamo exporter needs
``onnxscript``, which is not a dependency of RSFM. Every backbone here is built from ops the TorchScript
exporter handles at opset 17 (``GridSample`` needs opset >= 16, ``LayerNormalization`` >= 17).

Typical use::

    path = export_onnx(model, (x,), "model.onnx", ["image"], ["logits"])
    assert onnx_max_rel_error(model, path, (x,)) < 1e-4
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

__all__ = ["export_onnx", "flatten_outputs", "onnx_max_rel_error", "run_onnx"]

# Opset 16 is the first with GridSample; 17 adds LayerNormalization (one node instead of ~8).
_MIN_OPSET = 16


def flatten_outputs(out: object) -> list[torch.Tensor]:
    """Flatten a model output (tensor, list/tuple, dict, nested) to a list of tensors, in ONNX order.

    The TorchScript exporter flattens nested outputs depth-first and dicts by insertion order; this
    function follows the same order so output i of the ONNX graph matches element i here.

    Raises:
        TypeError: an output leaf is not a tensor (e.g. a string or None); such models cannot be exported.
    """
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flatten_outputs(v)]
    raise TypeError(
        f"model output of type {type(out).__name__} is not a tensor, list, tuple or dict of tensors; "
        "wrap the model so that forward() returns only tensors before exporting"
    )


def export_onnx(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    opset: int = 17,
) -> Path:
    """Export ``model`` (in eval mode, on CPU) to an ONNX file and check it with ``onnx.checker``.

    Args:
        model: module to export; it is put in ``eval()`` for the export and its previous mode restored.
        example_inputs: tuple of example tensors, e.g. ``(x,)`` with ``x`` of shape ``BxCxHxW`` float32.
            Shapes that are not listed in ``dynamic_axes`` are frozen into the graph.
        path: output ``.onnx`` file; parent folders are created.
        input_names: one name per example input.
        output_names: one name per (flattened, see :func:`flatten_outputs`) output tensor.
        dynamic_axes: e.g. ``{"image": {0: "batch"}, "logits": {0: "batch"}}``; ``None`` = all static.
        opset: ONNX opset; >= 16 (GridSample).

    Returns:
        The path of the written file.

    Raises:
        ValueError: wrong number of names, or opset too old.
        RuntimeError: the exporter or the ONNX checker failed (message says which).
    """
    if not isinstance(example_inputs, tuple):
        raise ValueError(
            f"example_inputs must be a tuple of tensors, e.g. (x,), got {type(example_inputs).__name__}"
        )
    if len(input_names) != len(example_inputs):
        raise ValueError(
            f"{len(input_names)} input_names for {len(example_inputs)} example inputs; give one name per input"
        )
    if opset < _MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: GridSample needs opset >= {_MIN_OPSET}; use 17")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            n_out = len(flatten_outputs(model(*example_inputs)))
            if n_out != len(output_names):
                raise ValueError(
                    f"the model returns {n_out} tensors but {len(output_names)} output_names were given; "
                    "give one name per returned tensor (nested outputs are flattened depth-first)"
                )
            with warnings.catch_warnings():
                # TracerWarnings about python-int conversions are expected: shapes are frozen by design.
                warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
                # The legacy exporter warns that it is deprecated; it is still the one that needs no onnxscript.
                warnings.simplefilter("ignore", category=DeprecationWarning)
                warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
                try:
                    torch.onnx.export(
                        model,
                        example_inputs,
                        str(path),
                        input_names=list(input_names),
                        output_names=list(output_names),
                        dynamic_axes=dynamic_axes,
                        opset_version=opset,
                        do_constant_folding=True,
                        dynamo=False,
                    )
                except Exception as exc:  # the exporter raises many unrelated types
                    raise RuntimeError(
                        f"ONNX export of {type(model).__name__} failed at opset {opset}: {exc}. "
                        "Check that forward() uses only exportable ops and returns tensors only."
                    ) from exc
    finally:
        model.train(was_training)

    import onnx  # local import: onnx is only needed when exporting

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise RuntimeError(f"exported file {path} fails onnx.checker: {exc}") from exc
    return path


def run_onnx(onnx_path: str | Path, example_inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """Run an ONNX file with onnxruntime (CPU provider) on ``example_inputs``; returns all outputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    sess = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(example_inputs):
        raise ValueError(
            f"{onnx_path} has {len(names)} inputs but {len(example_inputs)} example inputs were given"
        )
    feed = {n: t.detach().cpu().numpy() for n, t in zip(names, example_inputs, strict=True)}
    return sess.run(None, feed)


def onnx_max_rel_error(
    model: nn.Module, onnx_path: str | Path, example_inputs: tuple[torch.Tensor, ...]
) -> float:
    """Max relative error of onnxruntime vs PyTorch eager over all outputs.

    For each output the error is ``max|ort - torch| / max(max|torch|, 1e-12)`` (relative to the output's
    largest magnitude, so near-zero elements do not blow it up); the maximum over outputs is returned.

    Raises:
        ValueError: the two runtimes return a different number of outputs or different shapes.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = [t.detach().cpu().double().numpy() for t in flatten_outputs(model(*example_inputs))]
    finally:
        model.train(was_training)
    got = run_onnx(onnx_path, example_inputs)
    if len(got) != len(ref):
        raise ValueError(
            f"onnxruntime returned {len(got)} outputs, PyTorch {len(ref)}; was the file exported from this model?"
        )
    worst = 0.0
    for i, (r, g) in enumerate(zip(ref, got, strict=True)):
        if r.shape != g.shape:
            raise ValueError(f"output {i}: onnxruntime shape {g.shape} != PyTorch shape {r.shape}")
        denom = max(float(np.abs(r).max()) if r.size else 0.0, 1e-12)
        err = float(np.abs(g.astype(np.float64) - r).max()) / denom if r.size else 0.0
        worst = max(worst, err)
    return worst
