"""Training throughput on this machine: MTP steps, finetune steps, and 2-process torchrun scaling.

Measures images per second of full optimisation steps (forward, backward, gradient clipping, AdamW):

* ``mtp``: one MTP step = one image from each of the 5 pretraining sources through the shared encoder and
  the semseg / insseg / rotdet decoders (:mod:`training.models.mtp`), on the synthetic fixture in the real
  folder layouts (``make_multitask_fixture``), so the numbers do not depend on /work/shared/data;
* ``finetune``: one UperNet semantic-segmentation step (batch ``--finetune-batch``) per backbone;
* ``scaling``: ``rsfm-train mtp`` for a few steps as 1 process x 1 image/source, 1 process x 2 and
  ``torchrun --nproc_per_node=2`` x 1 (gloo), read from each run's ``log.jsonl``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_training.py --out docs/bench/training.json

Prints a Markdown table; ``--out`` also writes the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BACKBONES = ("efficientnet_lite0", "vit_t_rvsa", "internimage_t")
SMALL_DECODERS = {"semseg_channels": 64, "det_channels": 64, "roi_fc_channels": 256, "roi_samples": 128}


def _backbone_kwargs(name: str, crop: int) -> dict:
    return {"img_size": crop} if name.startswith("vit_") else {}


def _timed_steps(step, warmup: int, steps: int) -> float:
    """Seconds per step (median of ``steps`` after ``warmup``)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def bench_mtp(backbone: str, crop: int, root: Path, warmup: int, steps: int) -> dict:
    from training.data.multitask import (
        SOURCE_TASKS,
        MultiTaskDataset,
        StepBatchSampler,
        build_sources,
        collate_multitask,
    )
    from training.models.mtp import DatasetSpec, MultiTaskModel, total_loss
    from training.models.registry import create_model
    from training.mtp import backbone_normalisation, param_groups, set_norm_mode

    torch.manual_seed(0)
    sources = build_sources(root, list(SOURCE_TASKS))
    specs = [DatasetSpec(s.name, {t: s.classes(t) for t in s.tasks}) for s in sources]
    enc = create_model(backbone, **_backbone_kwargs(backbone, crop))
    model = MultiTaskModel(enc, specs, **SMALL_DECODERS)
    mean, std = backbone_normalisation(enc)
    data = MultiTaskDataset(sources, crop, mean, std)
    sampler = StepBatchSampler(data.lengths, 1, 0, 1, 0, warmup + steps)
    batches = [collate_multitask([data[k] for k in keys]) for keys in sampler]  # data loading not timed
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)
    model.train()
    set_norm_mode(model, "frozen")
    it = iter(batches)

    def step():
        loss = total_loss(model(next(it)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    s = _timed_steps(step, warmup, steps)
    n_img = len(sources)
    return {"kind": "mtp", "backbone": backbone, "crop": crop, "images_per_step": n_img, "s_per_step": s,
            "images_per_s": n_img / s, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def bench_finetune(backbone: str, crop: int, batch: int, warmup: int, steps: int) -> dict:
    from training.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("upernet_segmenter", backbone=backbone, num_classes=6,
                         backbone_kwargs=_backbone_kwargs(backbone, crop))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, crop, crop)
    y = torch.randint(0, 6, (batch, crop, crop))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    s = _timed_steps(step, warmup, steps)
    return {"kind": "finetune", "backbone": backbone, "crop": crop, "images_per_step": batch, "s_per_step": s,
            "images_per_s": batch / s, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def bench_scaling(root: Path, crop: int, steps: int, work: Path) -> list[dict]:
    """``rsfm-train mtp`` as 1x1, 1x2 and torchrun 2x1; img/s from the logged steps after the first."""
    common = ["mtp", "--backbone", "efficientnet_lite0", "--init", "random", "--data-root", str(root),
              "--crop-size", str(crop), "--steps", str(steps), "--log-every", "1", "--device", "cpu",
              "--threads", "1", "--semseg-channels", "64", "--det-channels", "64", "--roi-fc-channels", "256",
              "--roi-samples", "128"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {
        "1 process x 1 image/source": [sys.executable, "-m", "training.cli", *common, "--batch-per-source", "1"],
        "1 process x 2 images/source": [sys.executable, "-m", "training.cli", *common, "--batch-per-source", "2"],
        "torchrun 2 processes x 1 image/source": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   "--nproc_per_node=2", "-m", "training.cli", *common,
                                                   "--batch-per-source", "1"],
    }
    out = []
    for name, cmd in runs.items():
        d = work / name.replace(" ", "_").replace("/", "_")
        res = subprocess.run([*cmd, "--out", str(d)], env=env, capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{res.stderr[-2000:]}")
        log = [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()]
        rates = sorted(r["images_per_s"] for r in log[1:])  # the first step carries start-up costs
        out.append({"kind": "scaling", "run": name, "images_per_s": rates[len(rates) // 2], "steps": len(log)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crop", type=int, default=128, help="MTP crop / finetune tile size in pixels")
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--finetune-batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--scaling-steps", type=int, default=6)
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the in-process benchmarks")
    p.add_argument("--out", type=Path, help="write the raw results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from training.data.multitask import make_multitask_fixture

    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_multitask_fixture(Path(tmp) / "data", size=2 * args.crop, images=3)
        for b in args.backbones.split(","):
            results.append(bench_mtp(b, args.crop, root, args.warmup, args.steps))
            results.append(bench_finetune(b, args.crop, args.finetune_batch, args.warmup, args.steps))
            print(json.dumps(results[-2:]), flush=True)
        if not args.skip_scaling:
            results += bench_scaling(root, args.crop, args.scaling_steps, Path(tmp))
    meta = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "threads": args.threads, "load_avg_1m": os.getloadavg()[0], "crop": args.crop,
            "time_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    print(f"\nmachine: {meta}\n")
    print("| kind | backbone / run | crop | images/step | s/step | images/s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if r["kind"] == "scaling":
            print(f"| scaling | {r['run']} | {args.crop} | | | {r['images_per_s']:.2f} |")
        else:
            print(f"| {r['kind']} | {r['backbone']} | {r['crop']} | {r['images_per_step']} | "
                  f"{r['s_per_step']:.2f} | {r['images_per_s']:.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
