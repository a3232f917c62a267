"""``rsfm-train finetune``: train a backbone + task head on one downstream task (MTP spec section 3).

Tasks and what they build:

==========================  =========================  ====================================================
``--task``                  architecture               data (``--dataset``, default: detected from the folder)
==========================  =========================  ====================================================
``semantic_segmentation``   ``upernet_segmenter``      colour masks in tiles (``dubai`` / ``color_masks``)
``scene_classification``    ``scene_classifier``       class folders (``aid`` / ``scene_folder``)
``change_detection``        ``change_detector``        ``levir_cd`` (A/B/label) or ``oscd`` (city pairs)
==========================  =========================  ====================================================

Recipe (spec section 3, scaled down for CPU): AdamW (betas 0.9/0.999), linear warm-up then cosine to 0,
optional layer-wise lr decay for ViT backbones (:mod:`training.lr_decay`), cross-entropy. Segmentation trains
on random crops with scale jitter, flips and 90-degree rotations; validation uses sliding-window inference on
whole images of the validation split, which picks ``best.pt``. The test split is never touched here.

Schedule progress is ``max(step / total_steps, elapsed / time_budget)``: with ``--time-budget-min`` the cosine
always reaches 0 by the deadline, whatever the machine's speed (the run then stops). Every epoch writes
``last.pt`` (resumable with ``--resume``: model, optimiser, step, elapsed time, RNG states) and, when
validation improves, ``best.pt``. ``log.jsonl`` holds one JSON line per log step / epoch with throughput.

Runs unchanged under ``torchrun`` (DDP via :mod:`training.distributed`; rank 0 logs and writes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from training.checkpoints import load_checkpoint_file

DENSE_TASKS = ("semantic_segmentation", "scene_classification", "change_detection")
DETECTION_TASKS = ("object_detection", "rotated_detection", "instance_segmentation")
TASKS = DENSE_TASKS + DETECTION_TASKS
DATASETS = ("auto", "dubai", "color_masks", "aid", "scene_folder", "levir_cd", "oscd")
ARCHITECTURES = {
    "semantic_segmentation": "upernet_segmenter",
    "scene_classification": "scene_classifier",
    "change_detection": "change_detector",
}
# Normalisation (0-255 units) that matches each backbone family's pretraining.
TF_LITE_MEAN_STD = ([127.5, 127.5, 127.5], [127.5, 127.5, 127.5])
IMAGENET_MEAN_STD = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
# Backbone kwargs that only matter when the run starts; never stored in a package's architecture_kwargs.
INIT_ONLY_KWARGS = ("pretrained", "checkpoint_path", "pretrained_path")
CHECKPOINT_VERSION = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register ``finetune``'s options on ``p``."""
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--backbone", default="efficientnet_lite0", help="registered backbone name")
    p.add_argument("--backbone-kwargs", default="{}", help="JSON dict for the backbone factory")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="start from the backbone's offline ImageNet weights (passes pretrained=True)")
    p.add_argument("--backbone-weights", default=None,
                   help="state dict (.safetensors/.pt, e.g. an MTP encoder) loaded into the backbone")
    p.add_argument("--data", required=True, help="dataset root folder")
    p.add_argument("--dataset", default="auto", choices=DATASETS)
    p.add_argument("--val-groups", default=None, help="comma list of tiles for validation (color masks)")
    p.add_argument("--test-groups", default=None, help="comma list of held-back test tiles (never used here)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="scene folders: per-class fraction (after train, in file-number order) for validation")
    p.add_argument("--test-fraction", type=float, default=0.0,
                   help="scene folders: per-class fraction (the last numbers) held back as the test split")
    p.add_argument("--out", required=True, help="run folder (checkpoints, log.jsonl)")
    p.add_argument("--label-fraction", type=float, default=1.0, help="use this fraction of training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="default: one pass over the images (segmentation: over the pixels, in crops)")
    p.add_argument("--time-budget-min", type=float, default=None, help="wall-clock budget; the cosine ends by it")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--layer-decay", type=float, default=1.0, help="ViT layer-wise lr decay (spec: 0.9)")
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 5%% of the steps")
    p.add_argument("--crop-size", type=int, default=320, help="training crop (segmentation/change), px")
    p.add_argument("--scale-min", type=float, default=0.75, help="min zoom of the scale jitter")
    p.add_argument("--scale-max", type=float, default=1.5, help="max zoom of the scale jitter")
    p.add_argument("--head-channels", type=int, default=None, help="decoder width (UperNet/UNet)")
    p.add_argument("--eval-tile", type=int, default=512, help="sliding-window tile for validation, px")
    p.add_argument("--eval-overlap", type=int, default=128)
    p.add_argument("--mean", default=None, help="comma list, 0-255 units (default: backbone's pretraining)")
    p.add_argument("--std", default=None)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC memory format (~1.5x faster for CNNs on CPU)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--log-every", type=int, default=10)
    from training.detection_trainer import add_detection_arguments, add_detector_training_arguments

    d = p.add_argument_group("detection tasks (object_detection, rotated_detection, instance_segmentation)")
    add_detection_arguments(d)  # NWPU-style COCO splits by image-file number
    add_detector_training_arguments(d)


# ------------------------------------------------------------------------------------------------- data
def detect_dataset(root: Path, task: str) -> str:
    """Guess the reader from the folder layout; raises ValueError naming ``--dataset`` when unsure."""
    if task == "semantic_segmentation":
        if (root / "mask_colors.json").is_file():
            return "dubai" if any(p.name.startswith("Tile ") for p in root.iterdir()) else "color_masks"
    elif task == "change_detection":
        if (root / "A").is_dir() or (root / "train" / "A").is_dir():
            return "levir_cd"
        if any((p / "img1.png").is_file() for p in root.iterdir() if p.is_dir()):
            return "oscd"
    elif task == "scene_classification":
        return "scene_folder"
    raise ValueError(f"cannot tell the dataset format of {root} for {task}; pass --dataset "
                     f"(one of {', '.join(DATASETS[1:])})")


def _groups(text: str | None) -> list[str] | None:
    return None if text is None else [g.strip() for g in text.split(",") if g.strip()]


def build_dataset(args: argparse.Namespace, split: str, transforms) -> Dataset:
    """The reader for ``args.dataset`` / ``args.task`` on ``split`` (``train``/``val``/``test``)."""
    root = Path(args.data)
    if not root.is_dir():
        from training.data import DatasetNotFoundError

        raise DatasetNotFoundError(f"--data {root} is not a folder")
    kind = args.dataset if args.dataset != "auto" else detect_dataset(root, args.task)
    if args.task == "semantic_segmentation":
        from training.data.masks import DUBAI_TEST_TILES, DUBAI_VAL_TILES, ColorMaskSegmentation

        if kind not in ("dubai", "color_masks"):
            raise ValueError(f"--dataset {kind} does not hold segmentation masks; use dubai or color_masks")
        val = _groups(args.val_groups) or (list(DUBAI_VAL_TILES) if kind == "dubai" else [])
        test = _groups(args.test_groups) or (list(DUBAI_TEST_TILES) if kind == "dubai" else [])
        return ColorMaskSegmentation(root, split, transforms, val_groups=val, test_groups=test)
    if args.task == "scene_classification":
        from training.data.scenes import SceneFolder

        if kind not in ("aid", "scene_folder"):
            raise ValueError(f"--dataset {kind} is not a scene-folder dataset; use aid or scene_folder")
        # Same fractions at train and evaluate time, or the splits would overlap (defaults: 0.2 val, no test).
        return SceneFolder(root, split, transforms, val_fraction=getattr(args, "val_fraction", 0.2),
                           test_fraction=getattr(args, "test_fraction", 0.0))
    from training.data.change_pairs import LevirCD, OSCDPairs

    if kind == "levir_cd":
        return LevirCD(root, split, transforms)
    if kind == "oscd":
        val = _groups(args.val_groups) or []
        if split == "val":
            if not val:
                raise ValueError("OSCD has no official validation cities; pass --val-groups CITY[,CITY]")
            return OSCDPairs(root, split, transforms, cities=val)
        return OSCDPairs(root, split, transforms, exclude=val)
    raise ValueError(f"--dataset {kind} is not a change-detection dataset; use levir_cd or oscd")


def train_transforms(args: argparse.Namespace, mean: list[float], std: list[float], ignore_index: int):
    from training.data.transforms import (
        ColorJitter,
        Compose,
        Normalize,
        RandomFlip,
        RandomRot90,
        RandomScaleCrop,
    )

    steps = []
    if args.task in ("semantic_segmentation", "change_detection"):
        steps.append(RandomScaleCrop(args.crop_size, (args.scale_min, args.scale_max), ignore_index=ignore_index,
                                     fill=float(np.mean(mean))))
    else:
        steps.append(RandomScaleCrop(args.crop_size, (args.scale_min, args.scale_max)))
    steps += [RandomFlip(), RandomRot90(), ColorJitter(), Normalize(mean, std)]
    return Compose(steps)


def eval_transforms(args: argparse.Namespace, mean: list[float], std: list[float]):
    from training.data.transforms import Normalize

    return Normalize(mean, std)


def label_subset(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """A seeded subset holding ``fraction`` of ``ds``; stratified per class when ``ds.targets`` exists."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--label-fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return ds
    rng = np.random.default_rng(seed)
    targets = getattr(ds, "targets", None)
    if targets is not None:
        idx: list[int] = []
        targets = np.asarray(targets)
        for c in np.unique(targets):
            members = np.flatnonzero(targets == c)
            idx += rng.choice(members, max(1, round(fraction * len(members))), replace=False).tolist()
    else:
        idx = rng.choice(len(ds), max(1, round(fraction * len(ds))), replace=False).tolist()
    sub = Subset(ds, sorted(idx))
    return sub


def _base(ds: Dataset) -> Dataset:
    return ds.dataset if isinstance(ds, Subset) else ds


# ------------------------------------------------------------------------------------------------ model
def backbone_kwargs_of(args: argparse.Namespace) -> dict[str, Any]:
    kw = json.loads(args.backbone_kwargs) if isinstance(args.backbone_kwargs, str) else dict(args.backbone_kwargs)
    if not isinstance(kw, dict):
        raise ValueError(f"--backbone-kwargs must be a JSON object, got {args.backbone_kwargs!r}")
    if args.pretrained:
        kw.setdefault("pretrained", True)
    return kw


def architecture_kwargs(args: argparse.Namespace, num_classes: int, for_package: bool) -> dict[str, Any]:
    """Factory kwargs of the task model; ``for_package`` drops init-only keys (``pretrained``...)."""
    bkw = backbone_kwargs_of(args)
    if for_package:
        bkw = {k: v for k, v in bkw.items() if k not in INIT_ONLY_KWARGS}
    kw: dict[str, Any] = {"backbone": args.backbone, "backbone_kwargs": bkw}
    if args.task != "change_detection":
        kw["num_classes"] = num_classes
    if args.head_channels is not None and args.task != "scene_classification":
        kw["channels"] = args.head_channels
    return kw


def default_mean_std(backbone: str) -> tuple[list[float], list[float]]:
    return TF_LITE_MEAN_STD if backbone.startswith("efficientnet_lite") else IMAGENET_MEAN_STD


def load_backbone_weights(model: nn.Module, path: str) -> None:
    """Load an encoder state dict (``encoder.``/``backbone.`` prefixes stripped) into ``model.backbone``.

    Raises:
        ValueError: no key of the file matches the backbone (wrong file or architecture).
    """
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("model", "state_dict", "encoder"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
    own = model.backbone.state_dict()
    clean = {}
    for k, v in sd.items():
        for pre in ("module.", "encoder.", "backbone."):
            if k.startswith(pre):
                k = k[len(pre):]
        if k in own and own[k].shape == v.shape:
            clean[k] = v
    if not clean:
        raise ValueError(f"--backbone-weights {path}: no tensor matches backbone keys (e.g. {list(own)[:3]}); "
                         "is it a checkpoint of the same --backbone?")
    model.backbone.load_state_dict(clean, strict=False)
    print(f"loaded {len(clean)}/{len(own)} backbone tensors from {path}", flush=True)


def forward_task(model: nn.Module, batch: dict, task: str, device: torch.device, channels_last: bool):
    """Run the model on a collated batch; returns ``(logits, target)``."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if task == "change_detection":
        x1 = batch["image1"].to(device).contiguous(memory_format=fmt)
        x2 = batch["image2"].to(device).contiguous(memory_format=fmt)
        return model(x1, x2), batch["mask"].to(device).long()
    x = batch["image"].to(device).contiguous(memory_format=fmt)
    target = batch["label"] if task == "scene_classification" else batch["mask"]
    return model(x), target.to(device).long()


# ------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_dataset(model: nn.Module, ds: Dataset, task: str, num_classes: int, ignore_index: int | None,
                     class_names: list[str], tile: int = 512, overlap: int = 128, batch_size: int = 4,
                     device: torch.device | None = None, channels_last: bool = False) -> dict:
    """Metrics of ``model`` on every sample of ``ds`` (already normalised by its transforms).

    Segmentation and change: sliding-window logits over whole images, then a confusion matrix;
    scene classification: OA, mean per-class accuracy and per-class accuracy.
    """
    from training.eval.segmentation import (
        change_metrics,
        confusion_matrix,
        segmentation_metrics,
        sliding_window_logits,
    )

    model.eval()
    device = device or next(model.parameters()).device
    if task == "scene_classification":
        cm = np.zeros((num_classes, num_classes), dtype=np.int64)
        loader = DataLoader(ds, batch_size=batch_size * 8, shuffle=False, num_workers=0)
        for batch in loader:
            x = batch["image"].to(device).float()
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            pred = model(x).argmax(1).cpu()
            cm += confusion_matrix(pred, batch["label"], num_classes, ignore_index=None)
        support = cm.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.diag(cm) / support
        return {"OA": float(np.trace(cm) / max(cm.sum(), 1)), "mAcc": float(np.nanmean(acc)),
                "per_class": {n: {"accuracy": float(a), "support": int(s)}
                              for n, a, s in zip(class_names, acc, support, strict=True)},
                "confusion_matrix": cm.tolist()}
    k = 2 if task == "change_detection" else num_classes
    cm = np.zeros((k, k), dtype=np.int64)
    for i in range(len(ds)):
        s = ds[i]
        if task == "change_detection":
            logits = sliding_window_logits(model, s["image1"].float(), 2, tile, overlap, batch_size,
                                           second=s["image2"].float(), channels_last=channels_last)
        else:
            logits = sliding_window_logits(model, s["image"].float(), k, tile, overlap, batch_size,
                                           channels_last=channels_last)
        cm += confusion_matrix(logits.argmax(0), s["mask"], k, ignore_index)
    if task == "change_detection":
        out = change_metrics(cm)
    else:
        out = segmentation_metrics(cm, class_names)
    out["confusion_matrix"] = cm.tolist()
    return out


def primary_metric(task: str) -> str:
    return {"semantic_segmentation": "mIoU", "scene_classification": "OA", "change_detection": "F1"}[task]


# --------------------------------------------------------------------------------------------- training
def lr_factor(progress: float, warmup_frac: float) -> float:
    """Linear warm-up over ``warmup_frac`` of the run, then cosine to 0 (``progress`` in [0, 1])."""
    if progress < warmup_frac:
        return max(progress / warmup_frac, 1e-3)
    p = min(1.0, (progress - warmup_frac) / max(1e-8, 1 - warmup_frac))
    return 0.5 * (1 + math.cos(math.pi * p))


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _save_checkpoint(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-write never leaves a truncated checkpoint


def run(args: argparse.Namespace) -> int:
    """Train; returns 0. Writes ``OUT/last.pt``, ``OUT/best.pt``, ``OUT/log.jsonl``, ``OUT/run.json``."""
    if args.task in DETECTION_TASKS:  # two-stage detectors have their own loop (targets, RoI sampling, mAP)
        from training.detection_trainer import run as run_detection

        return run_detection(args)
    from training.distributed import (
        all_reduce_mean,
        broadcast_object,
        cleanup_distributed,
        init_distributed,
        print0,
        unwrap,
        wrap_ddp,
    )
    from training.lr_decay import param_groups_layer_decay
    from training.models import create_model

    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = init_distributed(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed = args.seed + ctx.rank
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)

    mean, std = default_mean_std(args.backbone)
    if args.mean:
        mean = [float(v) for v in args.mean.split(",")]
    if args.std:
        std = [float(v) for v in args.std.split(",")]
    ignore_index = 255
    train_ds = build_dataset(args, "train", train_transforms(args, mean, std, ignore_index))
    val_ds = build_dataset(args, "val", eval_transforms(args, mean, std))
    base = _base(train_ds)
    if args.task == "change_detection":
        class_list = [("no change", "#000000"), ("change", "#FF0000")]
    else:
        class_list = list(base.classes)
    class_names = [c[0] for c in class_list]
    num_classes = len(class_list)
    train_ds = label_subset(train_ds, args.label_fraction, args.seed)

    # Samples per epoch: segmentation crops are drawn area-weighted, enough to cover every pixel ~once.
    if args.task == "semantic_segmentation":
        counts = base.pixel_counts()
        if isinstance(train_ds, Subset):
            counts = [counts[i] for i in train_ds.indices]
        weights = torch.tensor(counts, dtype=torch.double)
        samples_per_epoch = max(args.batch_size, int(sum(counts) / (args.crop_size / args.scale_min) ** 2))
    else:
        weights = None
        samples_per_epoch = len(train_ds)
    steps_per_epoch = args.steps_per_epoch or max(1, samples_per_epoch // (args.batch_size * ctx.world_size))
    if args.max_steps is None and args.epochs is None and args.time_budget_min is None:
        raise ValueError("give --epochs, --max-steps or --time-budget-min so the run knows when to stop")
    if args.max_steps is not None:
        total_steps = args.max_steps
    elif args.epochs is not None:
        total_steps = args.epochs * steps_per_epoch
    else:
        total_steps = 10**9  # time budget only
    budget_s = args.time_budget_min * 60 if args.time_budget_min else None
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, int(0.05 * min(total_steps, 10**6)))
    warmup_frac = min(0.5, warmup / total_steps) if total_steps < 10**9 else 0.05

    arch = ARCHITECTURES[args.task]
    model = create_model(arch, **architecture_kwargs(args, num_classes, for_package=False))
    if args.backbone_weights:
        load_backbone_weights(model, args.backbone_weights)
    model = model.to(ctx.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    groups = param_groups_layer_decay(model, args.lr, args.weight_decay, args.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)

    step, epoch, elapsed, best = 0, 0, 0.0, -math.inf
    history: list[dict] = []
    last_path, best_path = out / "last.pt", out / "best.pt"
    if args.resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint {last_path}; drop --resume to start afresh")
        ck = load_checkpoint_file(last_path)  # weights_only unpickling (numpy RNG state is allow-listed)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        step, epoch, elapsed, best = ck["step"], ck["epoch"], ck["elapsed_s"], ck["best"]
        history = ck.get("history", [])
        if ctx.rank < len(ck.get("rng", [])):
            _set_rng_state(ck["rng"][ctx.rank])
        print0(ctx, f"resumed from {last_path} at step {step}, epoch {epoch}, {elapsed / 60:.1f} min done")
    ddp_model = wrap_ddp(model, ctx)
    run_t0, elapsed0 = time.time(), elapsed  # elapsed = wall time of all sessions (data, steps, validation)

    meta = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "task": args.task,
        "architecture": arch,
        "architecture_kwargs": architecture_kwargs(args, num_classes, for_package=True),
        "classes": [{"name": n, "color": c} for n, c in class_list],
        "bands": ["red", "green", "blue"],
        "input_dtype": "uint8",
        "mean": mean,
        "std": std,
        "ignore_index": ignore_index if args.task != "scene_classification" else None,
        "data": {"root": str(Path(args.data).resolve()), "dataset": args.dataset,
                 "train_groups": getattr(base, "groups", None),
                 "val_groups": getattr(_base(val_ds), "groups", None),
                 "test_groups": _groups(args.test_groups), "train_images": len(train_ds),
                 "val_fraction": getattr(args, "val_fraction", None),
                 "test_fraction": getattr(args, "test_fraction", None),
                 "val_images": len(val_ds), "label_fraction": args.label_fraction},
        "crop_size": args.crop_size,
        "scale_range": [args.scale_min, args.scale_max],
        "eval_tile": args.eval_tile,
        "eval_overlap": args.eval_overlap,
        "args": {k: v for k, v in vars(args).items() if k != "func"},
    }
    if ctx.is_main:
        (out / "run.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")

    criterion = nn.CrossEntropyLoss(ignore_index=ignore_index)
    log_f = open(out / "log.jsonl", "a") if ctx.is_main else None  # noqa: SIM115 - closed in finally
    print0(ctx, f"finetune {args.task}: {arch} on {args.backbone}, {len(train_ds)} train / {len(val_ds)} val "
                f"images, {steps_per_epoch} steps/epoch, total {total_steps if total_steps < 10**9 else 'budget'} "
                f"steps, budget {args.time_budget_min} min")

    def progress() -> float:
        p = step / total_steps
        if budget_s:
            p = max(p, elapsed / budget_s)
        return p

    try:
        while progress() < 1.0:
            model.train()
            gen = torch.Generator()
            gen.manual_seed(args.seed * 100_003 + epoch * 1009 + ctx.rank)
            if weights is not None:
                sampler = torch.utils.data.WeightedRandomSampler(weights, steps_per_epoch * args.batch_size,
                                                                 replacement=True, generator=gen)
            elif ctx.distributed:
                sampler = torch.utils.data.DistributedSampler(train_ds, ctx.world_size, ctx.rank, shuffle=True,
                                                              seed=args.seed, drop_last=True)
                sampler.set_epoch(epoch)
            else:
                sampler = torch.utils.data.RandomSampler(train_ds, replacement=len(train_ds) < args.batch_size,
                                                         num_samples=steps_per_epoch * args.batch_size,
                                                         generator=gen)
            loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                                drop_last=True, persistent_workers=False)
            t_epoch, seen, loss_sum, n_loss = time.time(), 0, 0.0, 0
            for batch in loader:
                scale = lr_factor(progress(), warmup_frac)
                for g in optimizer.param_groups:
                    g["lr"] = args.lr * g.get("lr_scale", 1.0) * scale
                logits, target = forward_task(ddp_model, batch, args.task, ctx.device, args.channels_last)
                loss = criterion(logits, target)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower --lr or check the data")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                seen += target.shape[0]
                loss_sum += loss.item()
                n_loss += 1
                elapsed = elapsed0 + time.time() - run_t0
                if ctx.is_main and step % args.log_every == 0:
                    rate = seen / max(time.time() - t_epoch, 1e-6)
                    rec = {"step": step, "epoch": epoch, "loss": round(loss_sum / n_loss, 4),
                           "lr": round(args.lr * scale, 7), "img_per_s": round(rate * ctx.world_size, 2),
                           "elapsed_min": round(elapsed / 60, 2)}
                    print(json.dumps(rec), flush=True)
                    log_f.write(json.dumps(rec) + "\n")
                    log_f.flush()
                if progress() >= 1.0:
                    break
            epoch += 1
            train_loss = all_reduce_mean(torch.tensor(loss_sum / max(n_loss, 1)), ctx).item()
            # Validation on rank 0 only (whole images, sliding window), then share the result.
            t_val = time.time()
            metrics = {}
            if ctx.is_main:
                metrics = evaluate_dataset(unwrap(ddp_model), val_ds, args.task, num_classes,
                                           ignore_index if args.task != "scene_classification" else None,
                                           class_names, args.eval_tile, args.eval_overlap,
                                           channels_last=args.channels_last)
            metrics = broadcast_object(metrics, ctx)
            key = primary_metric(args.task)
            score = metrics.get(key, float("nan"))
            improved = bool(score == score and score > best)
            if improved:
                best = score
            rec = {"epoch": epoch, "step": step, "train_loss": round(train_loss, 4), f"val_{key}": round(score, 4),
                   "val_OA": round(metrics.get("OA", float("nan")), 4), "best": round(best, 4),
                   "epoch_img_per_s": round(seen * ctx.world_size / max(time.time() - t_epoch, 1e-6), 2),
                   "val_s": round(time.time() - t_val, 1), "elapsed_min": round(elapsed / 60, 2)}
            elapsed = elapsed0 + time.time() - run_t0
            rec["elapsed_min"] = round(elapsed / 60, 2)
            history.append(rec)
            if ctx.is_main:
                print(json.dumps(rec), flush=True)
                log_f.write(json.dumps(rec) + "\n")
                log_f.flush()
                state = {k: v.detach().cpu() for k, v in unwrap(ddp_model).state_dict().items()}
                payload = {"meta": meta, "model": state, "optimizer": optimizer.state_dict(), "step": step,
                           "epoch": epoch, "elapsed_s": elapsed, "best": best, "history": history,
                           "val_metrics": metrics, "rng": [_rng_state()]}
                _save_checkpoint(last_path, payload)
                if improved:
                    _save_checkpoint(best_path, {k: v for k, v in payload.items() if k not in ("optimizer", "rng")})
        if ctx.is_main and not best_path.exists() and last_path.exists():
            # No validation score was ever finite (e.g. empty change class): the last weights stand in.
            ck = load_checkpoint_file(last_path)
            _save_checkpoint(best_path, {k: v for k, v in ck.items() if k not in ("optimizer", "rng")})
        print0(ctx, f"done: {step} steps, {epoch} epochs, {elapsed / 60:.1f} min, best val {best:.4f} -> {best_path}")
    finally:
        if log_f is not None:
            log_f.close()
        cleanup_distributed(ctx)
    return 0


__all__ = ["add_arguments", "evaluate_dataset", "run"]
