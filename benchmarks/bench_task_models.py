"""Forward and forward+backward time of every task model at 512x512, batch 2, on this CPU.

The backbones alone are in ``bench_backbones.py``; this times the full task models the backend runs and the
training package trains (heads included), on the CPU-sized EfficientNet-Lite0 backbone. Training mode uses
synthetic targets (four objects) so that detector losses, RoI sampling and the mask head all run.

Usage: .venv/bin/python benchmarks/bench_task_models.py [--size 512] [--threads 2] [--iters 2] [--out docs/bench/task_models.md]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from bench_backbones import _time  # benchmarks/ is on sys.path when run as a script

from training.models import create_model

BB = {"backbone": "efficientnet_lite0"}
MODELS: list[tuple[str, str, dict]] = [
    ("semantic segmentation", "upernet_segmenter", {**BB, "num_classes": 6, "channels": 64}),
    ("scene classification", "scene_classifier", {**BB, "num_classes": 30}),
    ("change detection", "change_detector", {**BB, "channels": 64}),
    ("object detection", "faster_rcnn", {**BB, "num_classes": 10}),
    ("instance segmentation", "mask_rcnn", {**BB, "num_classes": 10}),
    ("rotated detection", "oriented_rcnn", {**BB, "num_classes": 15}),
]


def synthetic_target(size: int) -> dict[str, torch.Tensor]:
    """Four axis-aligned objects with masks and rotated boxes (angle 0) spread over the image."""
    boxes, masks, rboxes = [], torch.zeros(4, size, size, dtype=torch.uint8), []
    for i, (x, y) in enumerate([(0.2, 0.2), (0.6, 0.3), (0.3, 0.7), (0.75, 0.75)]):
        x0, y0, w, h = int(x * size), int(y * size), size // 10, size // 16
        boxes.append([x0, y0, x0 + w, y0 + h])
        masks[i, y0:y0 + h, x0:x0 + w] = 1
        rboxes.append([x0 + w / 2, y0 + h / 2, w, h, 0.0])
    return {"boxes_xyxy": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor([0, 1, 2, 3]),
            "masks": masks, "boxes_cxcywha": torch.tensor(rboxes)}


def bench(task: str, arch: str, kwargs: dict, size: int, iters: int) -> dict:
    torch.manual_seed(0)
    model = create_model(arch, **kwargs)
    # batch 2: UperNet's 1x1 pyramid bin has no batch statistics to train BatchNorm with a single image
    x = torch.randn(2, 3, size, size)
    inputs = (x, torch.randn(2, 3, size, size)) if arch == "change_detector" else (x,)
    detector = arch.endswith("rcnn")
    target = synthetic_target(size)

    def fwd() -> None:
        model.eval()
        with torch.no_grad():
            model(*inputs)

    def fwd_bwd() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        if detector:
            loss = sum(model(x, [target, target]).values())
        else:
            out = model(*inputs)
            loss = out.float().mean()
        loss.backward()

    load0 = os.getloadavg()[0]
    fwd()
    fwd_bwd()  # warm-up
    row = {"task": task, "arch": arch, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
           "fwd_s": _time(fwd, iters), "fwd_bwd_s": _time(fwd_bwd, iters)}
    row["load"] = (load0, os.getloadavg()[0])
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="markdown report to write")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for task, arch, kwargs in MODELS:
        r = bench(task, arch, kwargs, args.size, args.iters)
        rows.append(r)
        print(f"{task:22s} {arch:18s} {r['params_m']:6.1f} M  fwd {r['fwd_s']:6.2f} s  fwd+bwd {r['fwd_bwd_s']:6.2f} s"
              f"  (load {r['load'][0]:.1f}->{r['load'][1]:.1f})", flush=True)
    if args.out:
        lines = [
            f"# Task models: forward / forward+backward at {args.size}x{args.size}, batch 1", "",
            f"Command: `.venv/bin/python benchmarks/bench_task_models.py --size {args.size} --threads {args.threads} --iters {args.iters} --out {args.out}`"
            , "",
            f"Machine: {os.cpu_count()} vCPU (shared VM), torch {torch.__version__}, {args.threads} threads; median of "
            f"{args.iters} timed runs after one warm-up. Training mode for detectors uses 4 synthetic objects.", "",
            "| task | architecture (EfficientNet-Lite0 backbone) | params (M) | forward (s) | forward+backward (s) | load avg |",
            "|---|---|---:|---:|---:|---|",
        ]
        for r in rows:
            lines.append(f"| {r['task']} | `{r['arch']}` | {r['params_m']:.1f} | {r['fwd_s']:.2f} | {r['fwd_bwd_s']:.2f} "
                         f"| {r['load'][0]:.1f}–{r['load'][1]:.1f} |")
        args.out.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
