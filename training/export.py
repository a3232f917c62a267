"""``rsfm-train export``: turn a finetune checkpoint into a model package (``docs/CONTRACTS.md`` section 1).

Writes ``config.json`` (via :class:`training.package.PackageConfig`), ``model.safetensors``, a model card
``README.md`` (task, classes, data, licence, metrics, how it was trained, limitations) and ``model.onnx`` when
the exported graph reproduces PyTorch within ``--onnx-tolerance`` (max relative error, recorded in the card).
The ONNX graph has a static input shape ``1 x C x T x T`` with ``T = --tile-size``; the backend's tiler feeds
exactly that. The package is read back with :func:`training.package.load_package` before the command
returns, so a package that the backend cannot load is never reported as written.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

TASK_OUTPUT = {"semantic_segmentation": "logits", "scene_classification": "logits", "change_detection": "logits"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register ``export``'s options on ``p``."""
    p.add_argument("checkpoint", help="finetune checkpoint (best.pt / last.pt)")
    p.add_argument("--out", required=True, help="package folder to write")
    p.add_argument("--name", default=None, help="package name (default: the folder name)")
    p.add_argument("--metrics", default=None, help="JSON written by 'rsfm-train evaluate --out' (held-back metrics)")
    p.add_argument("--description", default=None, help="one paragraph for the model browser")
    p.add_argument("--licence", default="Apache-2.0", help="licence of the weights (SPDX id)")
    p.add_argument("--data-licence", default="see the data's source", help="licence of the training data")
    p.add_argument("--training-data", default=None, help="what it was trained on (default: from the checkpoint)")
    p.add_argument("--gsd-m", type=float, required=True, help="ground sample distance trained at, m/px")
    p.add_argument("--gsd-range-m", default=None, help="'min,max' GSDs the model is known to work at, m/px")
    p.add_argument("--gsd-note", default="", help="how the GSD was determined (goes into the card)")
    p.add_argument("--tile-size", type=int, default=None, help="default inference tile, px (default: eval tile)")
    p.add_argument("--overlap", type=int, default=None, help="default tile overlap, px")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True, help="also write model.onnx")
    p.add_argument("--onnx-tolerance", type=float, default=1e-3, help="max relative error to accept the ONNX graph")
    p.add_argument("--card-extra", default=None, help="markdown file appended to the card")
    p.add_argument("--colors", default=None,
                   help="display colours 'Name=#RRGGBB,...' (default: the training masks' colours)")


def _parse_colors(spec: str | None, class_names: list[str]) -> dict[str, str]:
    """``'Water=#2B83BA,Road=#FDAE61'`` -> ``{"Water": "#2B83BA", ...}``; unknown class names are refused."""
    if not spec:
        return {}
    colors = {}
    for item in spec.split(","):
        name, _, color = item.partition("=")
        if name.strip() not in class_names:
            raise ValueError(f"--colors names class {name.strip()!r}; classes are {class_names}")
        colors[name.strip()] = color.strip()
    return colors


def _compact_metrics(metrics: dict) -> dict[str, Any]:
    """The metrics that go into config.json: headline numbers, per-class IoU/F1 (or accuracy), split."""
    out: dict[str, Any] = {}
    for k in ("mIoU", "mF1", "OA", "mAcc", "F1", "IoU", "precision", "recall"):
        v = metrics.get(k)
        if isinstance(v, float) and not math.isnan(v):
            out[k] = round(v, 4)
    per = metrics.get("per_class", {})
    if per:
        first = next(iter(per.values()))
        for field in ("IoU", "F1", "accuracy"):
            if field in first:
                out[f"per_class_{field}"] = {n: (None if v[field] != v[field] else round(v[field], 4))
                                             for n, v in per.items()}
    for k in ("split", "images", "tile_size_px", "tile_overlap_px"):
        if k in metrics:
            out[k] = metrics[k]
    return out


def _pct(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _split_text(meta: dict) -> str:
    """One sentence on the train / validation / test split recorded in a checkpoint's ``meta``."""
    d = meta["data"]
    tail = (f"({d.get('train_images')} training / {d.get('val_images')} validation images). Label fraction "
            f"{d.get('label_fraction')}.")
    if d.get("train_groups") is not None:  # tiled data split by tile / city
        return (f"Split: train {d.get('train_groups')}, validation (checkpoint selection only) {d.get('val_groups')}, "
                f"held-back test (reported only, never used for any choice) {d.get('test_groups')} {tail}")
    if meta.get("task") == "scene_classification":
        v, t = d.get("val_fraction") or 0.2, d.get("test_fraction") or 0.0
        return (f"Split: per class, in file-number order: the first {1 - v - t:.0%} train, the next {v:.0%} "
                f"validation (checkpoint selection only), the last {t:.0%} held-back test (reported only) {tail}")
    return (f"Split: the dataset's own train / val / test split (whole images; validation for checkpoint "
            f"selection only, test reported only) {tail}")


def build_card(config, meta: dict, metrics: dict, source: str, onnx_note: str, gsd_note: str, data_licence: str,
               history: list[dict], extra: str = "") -> str:
    """Model card markdown (Hugging Face front matter + sections)."""
    a = meta.get("args", {})
    lines = [
        "---",
        f"license: {config.licence.lower()}",
        "library_name: rsfm",
        "tags:",
        "- rsfm",
        "- remote-sensing",
        f"- {config.task.replace('_', '-')}",
        "---",
        "",
        f"# {config.name}",
        "",
        config.description,
        "",
        "## Model",
        "",
        f"- Task: `{config.task}`; architecture `{config.architecture}` "
        f"(`{json.dumps(config.architecture_kwargs)}`)",
        f"- Input: {len(config.bands)} bands {', '.join(config.bands)} ({config.input_dtype}); normalised as "
        f"`(x - mean) / std` with mean {config.mean} and std {config.std} (0-255 units)",
        "- Classes: " + ", ".join(f"{c.name} (`{c.color}`)" for c in config.classes),
        f"- GSD: trained at about {config.gsd_m} m/px; known to work for {config.gsd_range_m} m/px. {gsd_note}",
        f"- Default tiling: {config.tile_size_px} px tiles, {config.tile_overlap_px} px overlap",
        f"- Weights licence: {config.licence}. Training data licence: {data_licence}.",
        "",
        "## Training data",
        "",
        config.training_data,
        "",
        _split_text(meta),
        "",
        "## Training",
        "",
        f"`rsfm-train finetune` from `{source}`: backbone `{a.get('backbone')}` "
        f"(ImageNet init: {a.get('pretrained')}), AdamW lr {a.get('lr')} wd {a.get('weight_decay')}, "
        f"warm-up then cosine, batch {a.get('batch_size')}, random {a.get('crop_size')} px crops with zoom "
        f"{meta.get('scale_range')}, flips, 90-degree rotations, brightness/contrast jitter; seed {a.get('seed')}; "
        f"time budget {a.get('time_budget_min')} min.",
    ]
    if history:
        last = history[-1]
        vals = ", ".join(f"{k} {v}" for k, v in last.items() if k.startswith("val_") and k != "val_s")
        lines += ["", f"This checkpoint: step {last['step']}, epoch {last['epoch']}, {last['elapsed_min']} min of "
                      f"wall time into the run; validation {vals}."]
    lines += ["", "## Held-back metrics", ""]
    if metrics:
        if config.task == "scene_classification":  # one label per whole image, no tiling
            lines.append(f"Split: {metrics.get('split', 'n/a')} ({metrics.get('images', '?')} images), each image "
                         "classified whole at its native size.")
        else:
            lines.append(f"Split: {metrics.get('split', 'n/a')} ({metrics.get('images', '?')} images), sliding "
                         f"window {metrics.get('tile_size_px')} px / overlap {metrics.get('tile_overlap_px')} px.")
        lines.append("")
        head = [k for k in ("mIoU", "mF1", "OA", "mAcc", "F1", "IoU", "precision", "recall") if k in metrics]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        lines.append("| " + " | ".join(_pct(metrics[k]) for k in head) + " |")
        per = metrics.get("per_class", {})
        if per:
            fields = [f for f in ("IoU", "F1", "precision", "recall", "accuracy") if f in next(iter(per.values()))]
            unit = "images" if config.task == "scene_classification" else "px"
            lines += ["", "| class | " + " | ".join(fields) + f" | support ({unit}) |",
                      "|---|" + "---|" * (len(fields) + 1)]
            for n, v in per.items():
                lines.append(f"| {n} | " + " | ".join(_pct(v[f]) for f in fields) + f" | {v.get('support', '')} |")
        lines += ["", "(percent; n/a = undefined: no pixel of the class predicted (precision) or present and predicted (IoU))"]
    else:
        lines.append("Not evaluated on held-back data.")
    lines += ["", "## ONNX", "", onnx_note, "", "## Limitations", ""]
    if config.task == "semantic_segmentation":  # the land-cover default's notes (Dubai colour masks)
        lines += ["- Trained on a few dozen image patches of one city; expect lower accuracy on other regions, "
                  "seasons, sensors and GSDs.",
                  "- Class colours are the dataset's mask colours; 'Unlabeled' is a real class of the source masks "
                  "(grey), while unannotated black pixels were ignored in training and evaluation."]
    else:
        lines.append("- A small model trained briefly on a CPU; expect lower accuracy on other regions, sensors and "
                     "GSDs than on the held-back split above.")
    if extra:
        lines += ["", extra.strip()]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from training.models import create_model
    from training.package import ClassInfo, PackageConfig, load_package, save_package

    ck = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    if "meta" not in ck:
        raise ValueError(f"{args.checkpoint} is not an rsfm-train finetune checkpoint (no 'meta')")
    meta = ck["meta"]
    colors = _parse_colors(args.colors, [c["name"] for c in meta["classes"]])
    model = create_model(meta["architecture"], **meta["architecture_kwargs"])
    model.load_state_dict(ck["model"], strict=True)
    model = model.eval().to(memory_format=torch.contiguous_format)

    out = Path(args.out)
    name = args.name or out.name
    metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else {}
    gsd_range = tuple(float(v) for v in args.gsd_range_m.split(",")) if args.gsd_range_m else None
    tile = args.tile_size or int(meta.get("eval_tile", 512))
    overlap = args.overlap if args.overlap is not None else int(meta.get("eval_overlap", 64))
    task = meta["task"]
    training_data = args.training_data or f"{meta['data']['dataset']} at {meta['data']['root']}"
    description = args.description or f"{task.replace('_', ' ')} model ({meta['architecture']} on "\
                                      f"{meta['architecture_kwargs'].get('backbone')})."
    config = PackageConfig(
        name=name, task=task, architecture=meta["architecture"], architecture_kwargs=meta["architecture_kwargs"],
        classes=[ClassInfo(c["name"], colors.get(c["name"], c["color"])) for c in meta["classes"]], bands=meta["bands"],
        input_dtype=meta["input_dtype"], mean=meta["mean"], std=meta["std"], gsd_m=args.gsd_m, gsd_range_m=gsd_range,
        tile_size_px=tile, tile_overlap_px=overlap, batch_size=args.batch_size, ignore_index=meta["ignore_index"],
        licence=args.licence, training_data=training_data, metrics=_compact_metrics(metrics),
        description=description,
    )
    out.mkdir(parents=True, exist_ok=True)
    onnx_note = "Not exported (--no-onnx)."
    if args.onnx:
        from training.onnx_export import export_onnx, onnx_max_rel_error

        c = len(config.bands)
        torch.manual_seed(0)
        # batch 2 and a dynamic batch axis: the backend runs tiles in batches of ``batch_size``
        x = torch.randn(2, c, tile, tile)
        inputs = (x, torch.randn(2, c, tile, tile)) if task == "change_detection" else (x,)
        names = ["image_before", "image_after"] if task == "change_detection" else ["image"]
        dynamic = {n: {0: "batch"} for n in [*names, TASK_OUTPUT[task]]}
        path = export_onnx(model, inputs, out / "model.onnx", names, [TASK_OUTPUT[task]], dynamic_axes=dynamic)
        err = onnx_max_rel_error(model, path, inputs)
        if err <= args.onnx_tolerance:
            config.onnx = "model.onnx"
            onnx_note = (f"`model.onnx`: opset 17, input `batch x {c} x {tile} x {tile}` (float32, normalised; dynamic batch), "
                         f"output `{TASK_OUTPUT[task]}`. Max relative error against PyTorch on a random input: "
                         f"{err:.2e} (tolerance {args.onnx_tolerance:g}).")
        else:
            path.unlink()
            onnx_note = f"ONNX export dropped: max relative error {err:.2e} > tolerance {args.onnx_tolerance:g}."
        print(onnx_note, flush=True)
    extra = Path(args.card_extra).read_text() if args.card_extra else ""
    card = build_card(config, meta, metrics, str(args.checkpoint), onnx_note, args.gsd_note, args.data_licence,
                      ck.get("history", []), extra)
    save_package(model, config, out, card=card)
    load_package(out)  # the backend's loader must accept what we wrote
    size_mb = sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 2**20
    print(f"wrote package {out} ({size_mb:.1f} MiB)", flush=True)
    return 0
