"""``rsfm-train evaluate``: metrics of a model package (or a finetune checkpoint) on held-back data.

* semantic segmentation: sliding-window inference over whole images, then mIoU, mean F1, OA and per-class
  IoU / F1 / precision / recall from one confusion matrix over the split;
* scene classification: OA, mean per-class accuracy, per-class accuracy;
* change detection: F1, IoU, precision and recall of the *change* class, OA.

Normalisation, tile size and overlap come from the package's ``config.json`` (overridable). The result is
printed as JSON and, with ``--out``, written to a file that ``rsfm-train export --metrics`` can put into a card.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from training.checkpoints import load_checkpoint_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register ``evaluate``'s options on ``p``."""
    p.add_argument("model", help="model package folder (config.json + weights) or a finetune checkpoint .pt")
    p.add_argument("--data", required=True, help="dataset root folder")
    p.add_argument("--dataset", default="auto", help="reader (see rsfm-train finetune --dataset)")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    p.add_argument("--val-groups", default=None, help="comma list (colour-mask data; default: the Dubai split)")
    p.add_argument("--test-groups", default=None)
    p.add_argument("--val-fraction", type=float, default=None,
                   help="scene folders: per-class validation fraction (default: the checkpoint's / 0.2)")
    p.add_argument("--test-fraction", type=float, default=None,
                   help="scene folders: per-class held-back fraction (default: the checkpoint's / 0.0)")
    p.add_argument("--tile", type=int, default=None, help="sliding-window tile, px (default: package's)")
    p.add_argument("--overlap", type=int, default=None, help="window overlap, px (default: package's)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write the metrics JSON here")
    from training.detection_trainer import add_detection_arguments  # split ranges of detection data

    add_detection_arguments(p)


def load_for_eval(path: str | Path) -> tuple[dict, torch.nn.Module]:
    """Load a package folder or a finetune checkpoint -> ``(info, model in eval mode)``.

    ``info`` has ``task``, ``classes`` (``[(name, colour)]``), ``mean``, ``std``, ``ignore_index``,
    ``tile_size_px``, ``tile_overlap_px``.
    """
    p = Path(path)
    if p.is_dir():
        from training.package import load_package

        config, model = load_package(p)
        info = {"task": config.task, "classes": [(c.name, c.color) for c in config.classes], "mean": config.mean,
                "std": config.std, "ignore_index": config.ignore_index, "tile_size_px": config.tile_size_px,
                "tile_overlap_px": config.tile_overlap_px, "name": config.name}
        return info, model
    if not p.is_file():
        raise FileNotFoundError(f"{p} is neither a model package folder nor a checkpoint file")
    from training.models import create_model

    ck = load_checkpoint_file(p)  # weights_only unpickling: a checkpoint runs no code when read
    if "meta" not in ck:
        raise ValueError(f"{p} is not an rsfm-train finetune checkpoint (no 'meta'); pass a package folder")
    meta = ck["meta"]
    model = create_model(meta["architecture"], **meta["architecture_kwargs"])
    model.load_state_dict(ck["model"], strict=True)
    info = {"task": meta["task"], "classes": [(c["name"], c["color"]) for c in meta["classes"]], "mean": meta["mean"],
            "std": meta["std"], "ignore_index": meta["ignore_index"], "tile_size_px": meta.get("eval_tile", 512),
            "tile_overlap_px": meta.get("eval_overlap", 64), "name": p.stem,
            "split_fractions": {k: meta.get("data", {}).get(k) for k in ("val_fraction", "test_fraction")}}
    return info, model.eval()


def run(args: argparse.Namespace) -> int:
    from training.detection_trainer import DETECTION_TASKS, run_evaluate, task_of

    if task_of(args.model) in DETECTION_TASKS:
        return run_evaluate(args)
    from training.data.transforms import Normalize
    from training.finetune import build_dataset, evaluate_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    info, model = load_for_eval(args.model)
    fractions = info.get("split_fractions", {})
    val_fraction = args.val_fraction if args.val_fraction is not None else fractions.get("val_fraction")
    test_fraction = args.test_fraction if args.test_fraction is not None else fractions.get("test_fraction")
    ds_args = argparse.Namespace(task=info["task"], data=args.data, dataset=args.dataset, val_groups=args.val_groups,
                                 test_groups=args.test_groups,
                                 val_fraction=0.2 if val_fraction is None else val_fraction,
                                 test_fraction=0.0 if test_fraction is None else test_fraction)
    ds = build_dataset(ds_args, args.split, Normalize(info["mean"], info["std"]))
    classes = info["classes"]
    base_classes = getattr(getattr(ds, "dataset", ds), "classes", None)
    if info["task"] != "change_detection" and base_classes is not None:
        if [c[0] for c in base_classes] != [c[0] for c in classes]:
            raise ValueError(f"the data's classes {[c[0] for c in base_classes]} differ from the model's "
                             f"{[c[0] for c in classes]}; evaluate on data with the model's classes")
    tile = args.tile or info["tile_size_px"]
    overlap = args.overlap if args.overlap is not None else info["tile_overlap_px"]
    t0 = time.time()
    metrics = evaluate_dataset(model, ds, info["task"], len(classes), info["ignore_index"], [c[0] for c in classes],
                               tile=tile, overlap=overlap, batch_size=args.batch_size)
    groups = getattr(ds, "groups", None)
    metrics["split"] = args.split + (f" ({', '.join(groups)})" if groups else "")
    metrics["images"] = len(ds)
    metrics["data"] = str(Path(args.data).resolve())
    metrics["tile_size_px"], metrics["tile_overlap_px"] = tile, overlap
    metrics["eval_seconds"] = round(time.time() - t0, 1)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0
