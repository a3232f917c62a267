"""Detection finetuning: ``object_detection`` (Faster R-CNN), ``rotated_detection`` (Oriented R-CNN) and
``instance_segmentation`` (Mask R-CNN) on a COCO-format dataset (e.g. NWPU VHR-10; rotated boxes are the
minimum-area rectangles of the polygons).

Three entry points, each ``add_*_arguments(parser)`` + ``run_*(args) -> int`` (the ``rsfm-train`` stage style):

* :func:`run` (``train``): AdamW or SGD, linear warm-up then cosine (the cosine follows
  ``max(step / max_steps, elapsed / time_budget)``, so a time budget ends the schedule properly), gradient
  clipping, ``last.pt`` / ``best.pt`` checkpoints with ``--resume``, periodic validation mAP (checkpoint
  selection), label fraction, seed, DDP through :mod:`training.distributed` (``torchrun``).
* :func:`run_evaluate` (``evaluate``): COCO mAP / AP50 / AP75 and per-class AP (boxes; masks for instance
  segmentation; rotated boxes with COCO-style and DOTA-style VOC07 mAP for rotated detection) on a split.
* :func:`run_export` (``export``): a model package (``docs/CONTRACTS.md``) with a full model card, the score
  threshold chosen on the *validation* split (best F1 at IoU 0.5).

Splits of a COCO folder are ranges of the image-file number (``--train-range 1-440`` etc.), because the
NWPU VHR-10 copy in ``shared/data`` is one ``annotations.json``; a file ``annotations_<split>.json`` is not
needed. Training uses random ``--crop-size`` windows at native resolution (so the GSD seen in training is the
one the backend's tiler feeds); evaluation runs on whole images at native resolution.

Command line: ``python -m training.detection_trainer {train,evaluate,export} ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from training.checkpoints import load_checkpoint_file
from training.data.box_transforms import DetRandomCrop, DetRandomFlip, DetRandomResize, DetRandomRot90
from training.data.splits import file_number, parse_range

__all__ = [
    "DETECTION_TASKS",
    "add_arguments",
    "add_evaluate_arguments",
    "add_export_arguments",
    "build_split",
    "choose_score_threshold",
    "evaluate_detector",
    "predict_split",
    "run",
    "run_evaluate",
    "run_export",
    "task_of",
]

DETECTION_TASKS: dict[str, str] = {
    "object_detection": "faster_rcnn",
    "rotated_detection": "oriented_rcnn",
    "instance_segmentation": "mask_rcnn",
}
# Per-instance keys each task's targets need (others are dropped early: they cost time in crops).
_TARGET_KEYS = {
    "object_detection": ("labels", "boxes_xyxy"),
    "rotated_detection": ("labels", "boxes_xyxy", "boxes_cxcywha", "masks"),  # masks: exact rboxes after crops
    "instance_segmentation": ("labels", "boxes_xyxy", "masks"),
}
_PALETTE = ("#E6194B", "#3CB44B", "#FFE119", "#4363D8", "#F58231", "#911EB4", "#42D4F4", "#F032E6",
            "#BFEF45", "#FABED4", "#469990", "#DCBEFF", "#9A6324", "#FFFAC8", "#800000", "#AAFFC3")  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------
class _Prepared(Dataset):
    """A split of a base dataset with the task's keys kept, optional augmentation and normalisation.

    Items: ``image`` float32 ``3 x H x W`` normalised ``(x - mean) / std`` plus the per-instance keys of the task
    and ``image_id``.
    """

    def __init__(self, base: Dataset, indices: Sequence[int], task: str, mean: Sequence[float],
                 std: Sequence[float], augment: Callable | None = None) -> None:  # fmt: skip
        self.base, self.indices, self.task, self.augment = base, list(indices), task, augment
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.indices)

    def raw(self, i: int) -> dict[str, Any]:
        """Sample ``i`` with only the task's keys, not augmented, not normalised (image 0-255)."""
        s = self.base[self.indices[i]]
        keep = set(_TARGET_KEYS[self.task]) | {"image", "image_id"}
        return {k: v for k, v in s.items() if k in keep}

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.raw(i)
        if self.augment is not None:
            s = self.augment(s)
        s["image"] = (s["image"].float() - self.mean) / self.std
        if self.task == "rotated_detection":
            s.pop("masks", None)  # only needed to recompute exact rotated boxes after crops
        return s


def _compose(steps: Sequence[Callable]) -> Callable:
    def apply(s):
        for t in steps:
            s = t(s)
        return s

    return apply


def _base_dataset(args: argparse.Namespace):
    """The COCO reader over the whole folder (splits are file-number ranges, see :func:`build_split`)."""
    from training.data.coco import CocoDetection

    return CocoDetection(args.data, split="all", ann_file=getattr(args, "ann_file", None))


def build_split(base, split: str, args: argparse.Namespace) -> list[int]:
    """Indices of ``base`` in ``split`` (``train``/``val``/``test``) by file-number range; train honours
    ``--label-fraction`` (seeded)."""
    lo, hi = parse_range(getattr(args, f"{split}_range"))
    images = getattr(base, "images", None)
    if images is None:
        raise ValueError("split ranges need a COCO-style dataset with an 'images' list")
    idx = [i for i, im in enumerate(images) if lo <= file_number(im["file_name"]) <= hi]
    if not idx:
        raise ValueError(f"no image of {args.data} has a file number in {lo}-{hi} (split {split}); check --{split}-range")
    if split == "train" and args.label_fraction < 1.0:
        if not 0 < args.label_fraction <= 1:
            raise ValueError(f"--label-fraction must be in (0, 1], got {args.label_fraction}")
        # A reproducible data subset, not a secret: a seeded non-cryptographic generator is what is wanted.
        rng = random.Random(args.seed)  # noqa: S311  # nosec B311
        idx = sorted(rng.sample(idx, max(1, round(len(idx) * args.label_fraction))))
    return idx


def class_counts(ds: _Prepared, num_classes: int) -> list[int]:
    """Instances per class in a split (reads the annotations through the dataset)."""
    counts = [0] * num_classes
    base = ds.base
    if hasattr(base, "_anns") and hasattr(base, "_cat_to_label"):  # COCO: no need to decode the images
        for i in ds.indices:
            for a in base._anns.get(base.images[i]["id"], []):
                counts[base._cat_to_label[a["category_id"]]] += 1
        return counts
    for i in range(len(ds)):
        for lab in ds.raw(i)["labels"].tolist():
            counts[int(lab)] += 1
    return counts


class _FixedCollate:
    """``collate_detection`` padded to a fixed ``size x size``: one input shape for every training step
    (CPU backends re-plan convolutions for each new shape, which made varying crop sizes many times slower)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, samples):
        from training.data.box_transforms import collate_detection

        return collate_detection(samples, size_divisor=self.size)


# ----------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_split(model: torch.nn.Module, ds: _Prepared, device: torch.device | str = "cpu",
                  limit: int | None = None) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """Whole-image inference at native resolution -> ``(predictions, ground_truths)`` on the CPU.

    Masks are thresholded at 0.5 and kept as bool to bound memory.
    """
    model.eval()
    preds, gts = [], []
    n = len(ds) if limit is None else min(limit, len(ds))
    for i in range(n):
        s = ds[i]
        out = model(s["image"][None].to(device))[0]
        p = {k: v.detach().cpu() for k, v in out.items()}
        if "masks" in p:
            p["masks"] = p["masks"] >= 0.5
        preds.append(p)
        gts.append({k: v for k, v in s.items() if k != "image"})
    return preds, gts


def evaluate_detector(preds: Sequence[dict], gts: Sequence[dict], task: str, class_names: Sequence[str]
                      ) -> dict[str, Any]:  # fmt: skip
    """COCO mAP@[.5:.95], AP50, AP75 and per-class AP for the task's geometries.

    ``object_detection``: boxes (``bbox_*``); ``instance_segmentation``: boxes and masks (``segm_*``);
    ``rotated_detection``: rotated boxes COCO-style (``rbox_*``) and DOTA-style VOC07 11-point mAP@0.5
    (``dota_mAP50``). Per-class AP is nan for classes absent from the split. The headline ``mAP`` / ``AP50``
    are those of the task's main geometry (masks for instance segmentation).
    """
    from training.eval.detection import coco_map, dota_map, voc_map

    k = len(class_names)
    kinds = {"object_detection": ["bbox"], "instance_segmentation": ["bbox", "segm"],
             "rotated_detection": ["rbox"]}[task]  # fmt: skip
    out: dict[str, Any] = {"images": len(gts)}
    for kind in kinds:
        r = coco_map(preds, gts, iou_type=kind, num_classes=k)
        out[f"{kind}_mAP"], out[f"{kind}_AP50"], out[f"{kind}_AP75"] = r["mAP"], r["AP50"], r["AP75"]
        out[f"{kind}_per_class_AP"] = dict(zip(class_names, r["per_class_AP"], strict=True))
        ap50 = voc_map(preds, gts, iou_thr=0.5, iou_type=kind, num_classes=k) if kind != "rbox" else \
            dota_map(preds, gts, iou_thr=0.5, method="area", num_classes=k)  # fmt: skip
        out[f"{kind}_per_class_AP50"] = dict(zip(class_names, ap50["per_class_AP"], strict=True))
    if task == "rotated_detection":
        out["dota_mAP50"] = dota_map(preds, gts, iou_thr=0.5, num_classes=k)["mAP"]
    main = kinds[-1]
    out["mAP"], out["AP50"], out["AP75"] = out[f"{main}_mAP"], out[f"{main}_AP50"], out[f"{main}_AP75"]
    return out


def choose_score_threshold(preds: Sequence[dict], gts: Sequence[dict], task: str, iou_thr: float = 0.5
                           ) -> tuple[float, float]:  # fmt: skip
    """Score threshold with the best micro F1 (greedy matching by score at ``iou_thr``, class-aware).

    Use it on the validation split only. Returns ``(threshold, F1 at it)``.
    """
    from training.eval.detection import _box_iou, _rbox_iou

    key, iou_fn = ("boxes_cxcywha", _rbox_iou) if task == "rotated_detection" else ("boxes_xyxy", _box_iou)
    scores, tps, n_gt = [], [], 0
    for p, g in zip(preds, gts, strict=True):
        n_gt += len(g["labels"])
        for c in p["labels"].unique().tolist():
            ps, gs = p["labels"] == c, g["labels"] == c
            sc = p["scores"][ps]
            order = torch.argsort(sc, descending=True)
            sc = sc[order]
            hit = np.zeros(len(sc), dtype=bool)
            if gs.any():
                ious = iou_fn(p[key][ps][order], g[key][gs])
                used = np.zeros(ious.shape[1], dtype=bool)
                for d in range(len(sc)):
                    cand = np.where(~used & (ious[d] >= iou_thr))[0]
                    if cand.size:
                        j = cand[np.argmax(ious[d, cand])]
                        used[j], hit[d] = True, True
            scores.append(sc.numpy())
            tps.append(hit)
    if not scores or n_gt == 0:
        return 0.5, 0.0
    s, t = np.concatenate(scores), np.concatenate(tps)
    best = (0.5, -1.0)
    for thr in np.round(np.arange(0.05, 0.96, 0.05), 2):
        keep = s >= thr
        tp = float(t[keep].sum())
        prec = tp / max(int(keep.sum()), 1)
        rec = tp / n_gt
        f1 = 2 * prec * rec / max(prec + rec, 1e-9)
        if f1 > best[1]:
            best = (float(thr), f1)
    return best


# ----------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the ``train`` options (names match ``rsfm-train finetune`` where they overlap)."""
    p.add_argument("--task", required=True, choices=tuple(DETECTION_TASKS))
    p.add_argument("--backbone", default="efficientnet_lite0", help="registered pyramid backbone")
    p.add_argument("--backbone-kwargs", default="{}", help="JSON dict for the backbone factory")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="ImageNet weights for the backbone (offline; backbone_kwargs pretrained=True)")
    p.add_argument("--backbone-weights", default=None,
                   help="state dict (.safetensors/.pt, e.g. an MTP encoder) loaded into the backbone after --pretrained")
    p.add_argument("--data", required=True, help="dataset root (annotations.json + images/)")
    add_detection_arguments(p)
    add_detector_training_arguments(p)
    p.add_argument("--out", required=True, help="run folder (checkpoints, log.jsonl)")
    p.add_argument("--label-fraction", type=float, default=1.0, help="use this fraction of training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=10000)
    p.add_argument("--time-budget-min", type=float, default=None, help="wall-clock budget; the cosine ends by it")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (SGD: try 0.01)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--crop-size", type=int, default=512, help="random training window at native resolution, px")
    p.add_argument("--scale-min", type=float, default=0.8, help="min zoom of the scale jitter (1 = off)")
    p.add_argument("--scale-max", type=float, default=1.25, help="max zoom of the scale jitter")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--log-every", type=int, default=10)


def add_detection_arguments(p: argparse.ArgumentParser) -> None:
    """Options only the detection tasks have (for reuse by ``rsfm-train finetune``)."""
    p.add_argument("--ann-file", default=None, help="annotation JSON relative to --data (default annotations.json)")
    p.add_argument("--train-range", default="1-440", help="image-file numbers used for training")
    p.add_argument("--val-range", default="441-470", help="image-file numbers for validation (checkpoint choice)")
    p.add_argument("--test-range", default="471-520", help="held-back test numbers (never used in training)")


def add_detector_training_arguments(p: argparse.ArgumentParser) -> None:
    """Training options only the two-stage detectors have (for reuse by ``rsfm-train finetune``)."""
    p.add_argument("--fpn-channels", type=int, default=96, help="FPN/RPN/RoI width (MTP: 256; 96 keeps a package < 40 MB)")
    p.add_argument("--clip-grad", type=float, default=10.0, help="max gradient norm (0 = off)")
    p.add_argument("--val-every-min", type=float, default=10.0, help="validate every this many minutes")
    p.add_argument("--val-every-steps", type=int, default=None, help="or every this many steps")
    p.add_argument("--val-limit", type=int, default=None, help="validate on the first N val images only")


def _fill_defaults(args: argparse.Namespace, register: Callable[[argparse.ArgumentParser], None]) -> None:
    """Give ``args`` every option of ``register``'s parser it lacks, at its default.

    Lets ``rsfm-train finetune`` / ``evaluate`` hand their own namespace over for detection tasks.
    """
    p = argparse.ArgumentParser(add_help=False)
    register(p)
    for a in p._actions:
        if a.dest != "help" and not hasattr(args, a.dest):
            setattr(args, a.dest, a.default)


def _lr_factor(step: int, elapsed_s: float, args: argparse.Namespace) -> float:
    """Linear warm-up, then cosine to 0 over ``max(step / max_steps, elapsed / budget)``."""
    if step < args.warmup_steps:
        return (step + 1) / args.warmup_steps
    prog = step / max(args.max_steps, 1)
    if args.time_budget_min:
        prog = max(prog, elapsed_s / (60 * args.time_budget_min))
    return 0.5 * (1 + math.cos(math.pi * min(prog, 1.0)))


def _architecture_kwargs(args: argparse.Namespace, num_classes: int) -> dict[str, Any]:
    bk = json.loads(args.backbone_kwargs) if isinstance(args.backbone_kwargs, str) else dict(args.backbone_kwargs)
    return {"backbone": args.backbone, "num_classes": num_classes, "backbone_kwargs": bk,
            "fpn_channels": args.fpn_channels}  # fmt: skip


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(args: argparse.Namespace) -> int:
    """Train a detector; writes ``OUT/last.pt``, ``OUT/best.pt`` (best validation mAP) and ``OUT/log.jsonl``."""
    from training.distributed import (
        all_reduce_mean,
        cleanup_distributed,
        init_distributed,
        make_sampler,
        print0,  # fmt: skip
        unwrap,
        wrap_ddp,
    )
    from training.models import create_model

    _fill_defaults(args, add_arguments)
    if args.task not in DETECTION_TASKS:
        raise ValueError(f"task {args.task!r} is not a detection task; choose one of {list(DETECTION_TASKS)}")
    # rsfm-train finetune's namespace leaves these None (its defaults are derived later)
    if args.warmup_steps is None:
        args.warmup_steps = 50
    epochs = getattr(args, "epochs", None)
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = init_distributed(args.device)
    _seed_all(args.seed + ctx.rank)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    base = _base_dataset(args)
    classes = list(base.classes)
    arch = DETECTION_TASKS[args.task]
    akw = _architecture_kwargs(args, len(classes))
    init_kw = dict(akw, backbone_kwargs={**akw["backbone_kwargs"], **({"pretrained": True} if args.pretrained else {})})
    model = create_model(arch, **init_kw)
    if args.backbone_weights:
        from training.finetune import load_backbone_weights

        load_backbone_weights(model, args.backbone_weights)
    model = model.to(ctx.device)
    mean, std = _backbone_norm(args.backbone)

    zoom = [DetRandomResize((args.scale_min, args.scale_max))] if args.scale_max > args.scale_min else []
    augment = _compose([*zoom, DetRandomCrop(args.crop_size), DetRandomFlip(0.75), DetRandomRot90()])
    train_idx = build_split(base, "train", args)
    val_idx = build_split(base, "val", args)
    test_idx = build_split(base, "test", args)
    if set(train_idx) & (set(val_idx) | set(test_idx)) or set(val_idx) & set(test_idx):
        raise ValueError("train/val/test ranges overlap; give disjoint --train-range/--val-range/--test-range")
    train_ds = _Prepared(base, train_idx, args.task, mean, std, augment)
    val_ds = _Prepared(base, val_idx, args.task, mean, std)
    counts = {s: dict(zip(classes, class_counts(d, len(classes)), strict=True))
              for s, d in (("train", train_ds), ("val", val_ds), ("test", _Prepared(base, test_idx, args.task, mean, std)))}  # fmt: skip
    sampler = make_sampler(train_ds, ctx, shuffle=True, seed=args.seed)
    loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        collate_fn=_FixedCollate(args.crop_size), drop_last=True, persistent_workers=args.workers > 0)  # fmt: skip
    if len(loader) == 0:
        raise ValueError(f"{len(train_ds)} training images < batch size {args.batch_size}; lower --batch-size")
    if args.max_steps is None:
        args.max_steps = epochs * len(loader) if epochs else (10**9 if args.time_budget_min else 10000)

    decay, no_decay = [], []
    for prm in model.parameters():
        if prm.requires_grad:
            (no_decay if prm.ndim <= 1 else decay).append(prm)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr) if args.optimizer == "adamw" else \
        torch.optim.SGD(groups, lr=args.lr, momentum=0.9)  # fmt: skip

    meta = {
        "task": args.task, "architecture": arch, "architecture_kwargs": akw,
        "classes": [{"name": c, "color": _PALETTE[i % len(_PALETTE)]} for i, c in enumerate(classes)],
        "bands": ["red", "green", "blue"], "input_dtype": "uint8", "mean": list(mean), "std": list(std),
        "data": {"dataset": "coco", "root": str(args.data), "train_range": args.train_range,
                 "val_range": args.val_range, "test_range": args.test_range, "label_fraction": args.label_fraction,
                 "train_images": len(train_idx), "val_images": len(val_idx), "test_images": len(test_idx),
                 "class_counts": counts},
        "args": {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))},
    }  # fmt: skip
    step, epoch, elapsed0, best, history = 0, 0, 0.0, -1.0, []
    last = out / "last.pt"
    if args.resume:
        if not last.is_file():
            raise FileNotFoundError(f"--resume given but {last} does not exist; drop --resume to start fresh")
        ck = load_checkpoint_file(last)  # weights_only unpickling: tensors, numbers, str, lists, dicts
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, epoch, elapsed0 = ck["step"], ck["epoch"], ck["elapsed_s"]
        best, history = ck["best"], ck["history"]
        torch.set_rng_state(ck["rng"])
        print0(ctx, f"resumed {last} at step {step}")
    model = wrap_ddp(model, ctx, find_unused_parameters=True)
    print0(ctx, json.dumps({"event": "start", "train": len(train_idx), "val": len(val_idx), "test": len(test_idx),
                            "class_counts": counts}))  # fmt: skip

    def save(path: Path) -> None:
        torch.save({"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "epoch": epoch, "elapsed_s": elapsed, "best": best, "history": history, "meta": meta,
                    "rng": torch.get_rng_state()}, path)  # fmt: skip

    t0 = time.time() - elapsed0
    last_val_t, imgs_seen, t_rate = time.time(), 0, time.time()
    budget_s = 60 * args.time_budget_min if args.time_budget_min else math.inf
    done, elapsed = False, elapsed0
    log = open(out / "log.jsonl", "a") if ctx.is_main else None
    while not done:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        for images, targets in loader:
            elapsed = time.time() - t0
            if step >= args.max_steps or elapsed >= budget_s:
                done = True
                break
            model.train()
            f = _lr_factor(step, elapsed, args)
            for g in opt.param_groups:
                g["lr"] = args.lr * f
            images = images.to(ctx.device)
            targets = [{k: (v.to(ctx.device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
            losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}: { {k: float(v) for k, v in losses.items()} }; "
                                         "lower --lr or raise --warmup-steps")  # fmt: skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad) if args.clip_grad > 0 \
                else torch.tensor(0.0)  # fmt: skip
            opt.step()
            step += 1
            imgs_seen += images.shape[0] * ctx.world_size
            if step % args.log_every == 0 or step == 1:
                vals = {k: float(all_reduce_mean(v.detach(), ctx)) for k, v in losses.items()}
                rate = imgs_seen / max(time.time() - t_rate, 1e-6)
                rec = {"step": step, "epoch": epoch, "lr": opt.param_groups[0]["lr"], "loss": sum(vals.values()),
                       **vals, "grad_norm": float(gnorm), "img_per_s": round(rate, 3),
                       "elapsed_min": round((time.time() - t0) / 60, 2)}  # fmt: skip
                print0(ctx, json.dumps(rec))
                if log:
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                imgs_seen, t_rate = 0, time.time()
            due = (args.val_every_steps and step % args.val_every_steps == 0) or \
                (time.time() - last_val_t) >= 60 * args.val_every_min  # fmt: skip
            if due:
                best = _validate(model, val_ds, ctx, args, classes, step, epoch, t0, best, history, log, save, out)
                last_val_t = time.time()
                elapsed = time.time() - t0
                if ctx.is_main:
                    save(last)
        else:
            epoch += 1
    elapsed = time.time() - t0
    if not history or history[-1]["step"] != step:
        best = _validate(model, val_ds, ctx, args, classes, step, epoch, t0, best, history, log, save, out)
    elapsed = time.time() - t0
    if ctx.is_main:
        save(last)
        print0(ctx, json.dumps({"event": "done", "steps": step, "epochs": epoch, "wall_min": round(elapsed / 60, 2),
                                "best_val_mAP": best}))  # fmt: skip
    if log:
        log.close()
    cleanup_distributed(ctx)
    return 0


def _validate(model, val_ds, ctx, args, classes, step, epoch, t0, best, history, log, save, out) -> float:
    """Validation mAP on rank 0, ``best.pt`` when it improves; returns the best mAP so far."""
    from training.distributed import barrier, print0, unwrap

    if ctx.is_main:
        tv = time.time()
        preds, gts = predict_split(unwrap(model), val_ds, ctx.device, args.val_limit)
        m = evaluate_detector(preds, gts, args.task, classes)
        thr, f1 = choose_score_threshold(preds, gts, args.task)  # recorded so export needs no second pass
        rec = {"step": step, "epoch": epoch, "val_mAP": round(m["mAP"], 4), "val_AP50": round(m["AP50"], 4),
               "val_score_thr": thr, "val_F1_at_thr": round(f1, 4), "val_s": round(time.time() - tv, 1),
               "elapsed_min": round((time.time() - t0) / 60, 2)}  # fmt: skip
        history.append(rec)
        print0(ctx, json.dumps(rec))
        if log:
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if m["mAP"] > best:
            best = m["mAP"]
            save(out / "best.pt")
    barrier(ctx)
    return best


def _backbone_norm(backbone: str) -> tuple[list[float], list[float]]:
    """Per-band mean/std in 0-255 units that the backbone's pretraining used."""
    if backbone.startswith("efficientnet"):
        return [127.5] * 3, [127.5] * 3  # TF EfficientNet-Lite: x / 127.5 - 1
    return [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]  # ImageNet


# ----------------------------------------------------------------------------------------------------------
# evaluate / export
# ----------------------------------------------------------------------------------------------------------
def load_detector(path: str | Path) -> tuple[dict, torch.nn.Module]:
    """A package folder or a ``train`` checkpoint -> ``(info, model in eval mode)``; ``info`` has ``task``,
    ``classes`` (names), ``mean``, ``std``, ``meta`` (checkpoint meta or None)."""
    from training.models import create_model

    p = Path(path)
    if p.is_dir():
        from training.package import load_package

        cfg, model = load_package(p)
        return {"task": cfg.task, "classes": cfg.class_names, "mean": cfg.mean, "std": cfg.std, "meta": None,
                "config": cfg}, model  # fmt: skip
    ck = load_checkpoint_file(p)  # weights_only unpickling: a checkpoint runs no code when read
    if "meta" not in ck:
        raise ValueError(f"{p} is not a detection_trainer checkpoint (no 'meta'); pass best.pt/last.pt or a package")
    meta = ck["meta"]
    model = create_model(meta["architecture"], **meta["architecture_kwargs"])
    model.load_state_dict(ck["model"], strict=True)
    return {"task": meta["task"], "classes": [c["name"] for c in meta["classes"]], "mean": meta["mean"],
            "std": meta["std"], "meta": meta, "history": ck.get("history", [])}, model.eval()  # fmt: skip


def task_of(path: str | Path) -> str:
    """The task of a package folder (``config.json``) or a checkpoint (its ``meta``); '' if neither says."""
    p = Path(path)
    if p.is_dir():
        from training.package import PackageConfig

        return PackageConfig.load(p).task
    ck = load_checkpoint_file(p)  # weights_only unpickling
    return ck.get("meta", {}).get("task", "") if isinstance(ck, dict) else ""


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """Register ``evaluate``'s options."""
    p.add_argument("model", help="package folder or train checkpoint (best.pt)")
    p.add_argument("--data", required=True)
    add_detection_arguments(p)
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write the metrics JSON here")


def run_evaluate(args: argparse.Namespace) -> int:
    """Print (and with ``--out`` write) the metrics of a detector on a split."""
    _fill_defaults(args, add_evaluate_arguments)
    if args.threads:
        torch.set_num_threads(args.threads)
    info, model = load_detector(args.model)
    args.label_fraction, args.seed = 1.0, 0
    base = _base_dataset(args)
    ds = _Prepared(base, build_split(base, args.split, args), info["task"], info["mean"], info["std"])
    t = time.time()
    preds, gts = predict_split(model, ds, "cpu", args.limit)
    m = evaluate_detector(preds, gts, info["task"], info["classes"])
    m.update(split=f"{args.split} (image numbers {getattr(args, f'{args.split}_range')})",
             class_counts=dict(zip(info["classes"], class_counts(ds, len(info["classes"])), strict=True)),
             seconds_per_image=round((time.time() - t) / max(len(gts), 1), 3))
    text = json.dumps(m, indent=2, allow_nan=True)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """Register ``export``'s options."""
    p.add_argument("checkpoint", help="train checkpoint (best.pt)")
    p.add_argument("--data", required=True, help="dataset root (validation split picks the score threshold)")
    add_detection_arguments(p)
    p.add_argument("--out", required=True, help="package folder")
    p.add_argument("--name", default=None)
    p.add_argument("--metrics", default=None, help="held-back metrics JSON from 'evaluate --out'")
    p.add_argument("--gsd-m", type=float, required=True)
    p.add_argument("--gsd-range-m", default=None, help="'min,max' m/px")
    p.add_argument("--gsd-note", default="")
    p.add_argument("--tile-size", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--score-threshold", type=float, default=None, help="default: best val F1 at IoU 0.5")
    p.add_argument("--threshold-note", default="given on the command line", help="how --score-threshold was chosen")
    p.add_argument("--licence", default="Apache-2.0")
    p.add_argument("--data-licence", default="see the data's source")
    p.add_argument("--training-data", default=None)
    p.add_argument("--description", default=None)
    p.add_argument("--card-extra", default=None, help="markdown file appended to the card")
    p.add_argument("--threads", type=int, default=None)


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def build_card(config, meta: dict, metrics: dict, history: list[dict], thr_note: str, gsd_note: str,
               data_licence: str, extra: str = "") -> str:  # fmt: skip
    """Model card markdown for a detection package."""
    a, d = meta.get("args", {}), meta.get("data", {})
    lines = [
        "---", f"license: {config.licence.lower()}", "library_name: rsfm", "tags:", "- rsfm", "- remote-sensing",
        f"- {config.task.replace('_', '-')}", "---", "", f"# {config.name}", "", config.description, "",
        "## Model", "",
        f"- Task: `{config.task}`; architecture `{config.architecture}` (`{json.dumps(config.architecture_kwargs)}`)",
        f"- Input: {len(config.bands)} bands {', '.join(config.bands)} ({config.input_dtype}); normalised as "
        f"`(x - mean) / std` with mean {config.mean} and std {config.std} (0-255 units)",
        "- Classes: " + ", ".join(f"{c.name} (`{c.color}`)" for c in config.classes),
        f"- GSD: trained at native resolution, about {config.gsd_m} m/px; range {config.gsd_range_m} m/px. {gsd_note}",
        f"- Default tiling: {config.tile_size_px} px tiles, {config.tile_overlap_px} px overlap; default score "
        f"threshold {config.score_threshold} ({thr_note})",
        f"- Weights licence: {config.licence}. Training data licence: {data_licence}.",
        "", "## Training data", "", config.training_data, "",
        f"Split by image-file number: train {d.get('train_range')} ({d.get('train_images')} images), validation "
        f"{d.get('val_range')} ({d.get('val_images')} images; checkpoint and score-threshold choice only), held-back "
        f"test {d.get('test_range')} ({d.get('test_images')} images; reported once, never used for any choice). "
        f"Label fraction {d.get('label_fraction')}.",
    ]  # fmt: skip
    counts = d.get("class_counts")
    if counts:
        names = list(counts["train"])
        lines += ["", "| instances | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for s in ("train", "val", "test"):
            lines.append(f"| {s} | " + " | ".join(str(counts[s][n]) for n in names) + " |")
    lines += ["", "## Training", "",
              f"`python -m training.detection_trainer train`: backbone `{a.get('backbone')}` (ImageNet init: "
              f"{a.get('pretrained')}), {a.get('optimizer')} lr {a.get('lr')} wd {a.get('weight_decay')}, "
              f"{a.get('warmup_steps')} warm-up steps then cosine, gradient clip {a.get('clip_grad')}, batch "
              f"{a.get('batch_size')}, random {a.get('crop_size')} px crops at native resolution with zoom "
              f"{a.get('scale_min')}-{a.get('scale_max')}, flips and 90-degree rotations; seed {a.get('seed')}; "
              f"time budget {a.get('time_budget_min')} min."]  # fmt: skip
    if history:
        bestr = max(history, key=lambda r: r.get("val_mAP", -1))
        lines += ["", f"Chosen checkpoint: step {bestr['step']} ({bestr['epoch']} full epochs done, "
                      f"{bestr['elapsed_min']} min wall time), validation mAP {_fmt(bestr['val_mAP'])}, AP50 "
                      f"{_fmt(bestr['val_AP50'])}. Validations up to it: "
                      + ", ".join(f"step {r['step']}: {_fmt(r['val_mAP'])}" for r in history) + "."]  # fmt: skip
    lines += ["", "## Held-back metrics", ""]
    if metrics:
        lines += [f"Split: {metrics.get('split')} ({metrics.get('images')} images, whole images at native "
                  "resolution, COCO-style AP in percent, area range 'all', 100 detections per image).", ""]
        kinds = [k for k in ("bbox", "segm", "rbox") if f"{k}_mAP" in metrics]
        lines += ["| geometry | mAP@[.5:.95] | AP50 | AP75 |", "|---|---|---|---|"]
        for k in kinds:
            lines.append(f"| {k} | {_fmt(metrics[f'{k}_mAP'])} | {_fmt(metrics[f'{k}_AP50'])} | "
                         f"{_fmt(metrics[f'{k}_AP75'])} |")  # fmt: skip
        if "dota_mAP50" in metrics:
            lines += ["", f"DOTA-style mAP50 (VOC07 11-point): {_fmt(metrics['dota_mAP50'])}"]
        k = kinds[-1]
        cc = metrics.get("class_counts", {})
        lines += ["", f"| class | COCO AP ({k}) | VOC AP50, all points ({k}) | instances in split |", "|---|---|---|---|"]
        for n, v in metrics[f"{k}_per_class_AP"].items():
            lines.append(f"| {n} | {_fmt(v)} | {_fmt(metrics[f'{k}_per_class_AP50'][n])} | {cc.get(n, '')} |")
        lines += ["", "(n/a = no instance of the class in the split)"]
    else:
        lines.append("Not evaluated on held-back data.")
    lines += ["", "## Limitations", "",
              "- A small CPU-trained model (short budget): far below published NWPU VHR-10 results; treat it as a "
              "working default, not a benchmark.",
              "- NWPU VHR-10 is grouped by content upstream, so the splits by file number are not stratified: "
              "some classes are rare or absent in validation/test (see the table above); per-class AP on few "
              "instances is noisy.",
              "- Google Earth RGB at roughly 0.5-2 m (plus a few 0.08 m Vaihingen CIR images); other sensors, band "
              "orders and GSDs may fail."]  # fmt: skip
    if extra:
        lines += ["", extra.strip()]
    return "\n".join(lines) + "\n"


def run_export(args: argparse.Namespace) -> int:
    """Write the package, choosing the score threshold on validation; read it back before returning."""
    _fill_defaults(args, add_export_arguments)
    from training.package import ClassInfo, PackageConfig, load_package, save_package

    if args.threads:
        torch.set_num_threads(args.threads)
    info, model = load_detector(args.checkpoint)
    meta = info["meta"]
    if meta is None:
        raise ValueError("export needs a train checkpoint (best.pt), not a package")
    task = meta["task"]
    thr_note = args.threshold_note
    thr = args.score_threshold
    chosen = max(info.get("history") or [{}], key=lambda r: r.get("val_mAP", -1))
    if thr is None and "val_score_thr" in chosen:  # picked on validation when this checkpoint was chosen
        thr = chosen["val_score_thr"]
        thr_note = (f"best F1 {chosen['val_F1_at_thr']:.3f} at IoU 0.5 on the validation split "
                    f"{meta['data']['val_range']}, step {chosen['step']}")  # fmt: skip
    if thr is None:
        args.label_fraction, args.seed = 1.0, 0
        base = _base_dataset(args)
        val = _Prepared(base, build_split(base, "val", args), task, meta["mean"], meta["std"])
        preds, gts = predict_split(model, val)
        thr, f1 = choose_score_threshold(preds, gts, task)
        thr_note = f"best F1 {f1:.3f} at IoU 0.5 on the validation split {args.val_range}"
        print(f"score threshold {thr} ({thr_note})", flush=True)
    metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else {}
    compact = {k: round(v, 4) for k, v in metrics.items() if k in ("mAP", "AP50", "AP75", "dota_mAP50",
                                                                     "bbox_mAP", "bbox_AP50", "segm_mAP", "segm_AP50")
               and isinstance(v, float) and not math.isnan(v)}  # fmt: skip
    for k in ("bbox", "segm", "rbox"):
        if f"{k}_per_class_AP50" in metrics:
            compact[f"per_class_AP50_{k}"] = {n: (None if v != v else round(v, 4))
                                              for n, v in metrics[f"{k}_per_class_AP50"].items()}  # fmt: skip
    if "split" in metrics:
        compact["split"] = metrics["split"]
        compact["images"] = metrics.get("images")
    out = Path(args.out)
    name = args.name or out.name
    gsd_range = tuple(float(v) for v in args.gsd_range_m.split(",")) if args.gsd_range_m else None
    config = PackageConfig(
        name=name, task=task, architecture=meta["architecture"], architecture_kwargs=meta["architecture_kwargs"],
        classes=[ClassInfo(c["name"], c["color"]) for c in meta["classes"]], bands=meta["bands"],
        input_dtype=meta["input_dtype"], mean=meta["mean"], std=meta["std"], gsd_m=args.gsd_m, gsd_range_m=gsd_range,
        tile_size_px=args.tile_size, tile_overlap_px=args.overlap, batch_size=args.batch_size,
        score_threshold=float(thr), ignore_index=None, licence=args.licence,
        training_data=args.training_data or f"{meta['data']['dataset']} at {meta['data']['root']}",
        metrics=compact,
        description=args.description or f"{task.replace('_', ' ')} ({meta['architecture']} on "
                                        f"{meta['architecture_kwargs'].get('backbone')})",
    )  # fmt: skip
    extra = Path(args.card_extra).read_text() if args.card_extra else ""
    card = build_card(config, meta, metrics, info.get("history", []), thr_note, args.gsd_note, args.data_licence,
                      extra)
    save_package(model, config, out, card=card)
    load_package(out)  # the backend's loader must accept what we wrote
    size_mb = sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 2**20
    print(f"wrote package {out} ({size_mb:.1f} MiB)", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.detection_trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("train", help="finetune a detector"))
    add_evaluate_arguments(sub.add_parser("evaluate", help="COCO / DOTA mAP on a split"))
    add_export_arguments(sub.add_parser("export", help="write a model package"))
    args = parser.parse_args(argv)
    return {"train": run, "evaluate": run_evaluate, "export": run_export}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
