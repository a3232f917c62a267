"""``rsfm-train mtp``: MTP multi-task pretraining (MTP_SPEC §2, §7.11).

One shared encoder, three decoders (UperNet semantic segmentation, Mask R-CNN instance segmentation,
Oriented R-CNN rotated detection) with per-dataset output layers (:mod:`training.models.mtp`); per step one
image from each pretraining source (:mod:`training.data.multitask`); the plain sum of every loss term (all
weights 1); AdamW + cosine schedule without warm-up, stepped per iteration; gradient clipping at norm 5.
The encoder starts from random, ImageNet (``--init imp``) or a weights file (``--init file``, e.g. MAE).

Single process::

    rsfm-train mtp --backbone efficientnet_lite0 --init imp --data-root /work/shared/data --steps 500 \\
        --out runs/mtp/effl0

Distributed (PyTorch DDP via torchrun; gloo on CPU, NCCL + mixed precision on GPU)::

    torchrun --nproc_per_node=4 -m training.cli mtp --backbone vit_b_rvsa --init file \\
        --init-weights mae_vit_b.pth --crop-size 224 --steps 80000 --out runs/mtp/vitb

Outputs in ``--out`` (rank 0 writes): ``checkpoint_last.pt`` (model, optimizer, scheduler, step; resume
with ``--resume``), ``checkpoint_<step>.pt`` every ``--save-every`` steps, ``encoder.safetensors`` +
``encoder.json`` (the encoder alone, keys without prefix, for ``rsfm-train finetune``), ``log.jsonl``.

Deviations from the official loop, each for a stated reason:

* ``--norm frozen`` (default): BatchNorm layers use their running statistics and do not update them. The
  official run used SyncBN over 32 GPUs; with one image per source per process the batch statistics of a
  1x1 pyramid-pooling bin do not exist. ``--norm sync`` (multi-GPU) and ``--norm batch`` restore them.
* Sources are sampled independently and cyclically (each reshuffled when exhausted) instead of ending an
  "epoch" with the shortest source: some sources here have a single image.
* No layer-wise lr decay: the spec (§2.5) shows it was inactive for ViTs in MTP anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from training.checkpoints import load_checkpoint_file
from training.distributed import (
    DistContext,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
    print0,
    unwrap,
    wrap_ddp,
)

__all__ = ["add_arguments", "run", "load_encoder_weights", "backbone_normalisation"]

DEFAULT_SOURCES = "dubai_seg,nwpu_vhr10,dota,isaid,hrsid"
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)
CHECKPOINT_VERSION = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the ``mtp`` options on ``p``."""
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="efficientnet_lite0", help="registered backbone name (default: %(default)s)")
    g.add_argument("--backbone-kwargs", default="{}", type=json.loads,
                   help='JSON keyword arguments for the backbone factory, e.g. \'{"img_size": 224}\'')
    g.add_argument("--init", choices=("random", "imp", "mae", "file"), default="imp",
                   help="encoder start: random; imp = ImageNet weights of the backbone factory (pretrained=True); "
                        "mae = MAE checkpoint in --init-weights (cls/mask tokens and decoder dropped, pos_embed "
                        "resized by the backbone's checkpoint_filter_fn); file = any encoder state dict in "
                        "--init-weights (default: %(default)s)")
    g.add_argument("--init-weights", type=Path, help="weights file for --init mae/file (.pth/.pt/.safetensors)")
    g.add_argument("--semseg-channels", type=int, default=256, help="UperNet width (official MTP: 256)")
    g.add_argument("--det-channels", type=int, default=256, help="FPN/RPN/RoI width of the detectors (official 256)")
    g.add_argument("--roi-fc-channels", type=int, default=1024, help="box-head FC width (official 1024)")
    g.add_argument("--roi-samples", type=int, default=512, help="RoIs sampled per image (official 512)")
    g.add_argument("--dropout", type=float, default=0.1, help="dropout before the semseg classifiers (official 0.1)")
    g.add_argument("--norm", choices=("frozen", "batch", "sync"), default="frozen",
                   help="BatchNorm mode: frozen running stats, per-process batch stats, or SyncBN (GPU DDP)")
    g.add_argument("--channels-last", action="store_true", help="channels_last memory format (faster CNNs on CPU)")

    d = p.add_argument_group("data")
    d.add_argument("--data-root", type=Path, default=Path("/work/shared/data"),
                   help="folder holding the source folders (default: %(default)s)")
    d.add_argument("--sources", default=DEFAULT_SOURCES,
                   help="comma-separated pretraining sources (default: %(default)s)")
    d.add_argument("--hold-out", action="append", default=[], metavar="SOURCE=SPEC",
                   help="keep a downstream split out of pretraining: SPEC is 'FIRST-LAST' image-file numbers or "
                        "comma-separated folder names, e.g. 'nwpu_vhr10=441-520' or 'dubai_seg=Tile 1,Tile 2' "
                        "(repeatable; recorded in encoder.json)")
    d.add_argument("--crop-size", type=int, default=256, help="square training crop S in pixels (default: %(default)s)")
    d.add_argument("--batch-per-source", type=int, default=1,
                   help="images per source per step and process (official MTP: 1)")
    d.add_argument("--scale-range", type=float, nargs=2, default=(0.5, 2.0), metavar=("LO", "HI"),
                   help="random resize of the long side to S * U(LO, HI) (default: 0.5 2.0)")
    d.add_argument("--no-augment", action="store_true", help="no flips / photometric jitter (tests, benchmarks)")
    d.add_argument("--workers", type=int, default=0, help="data-loading worker processes per rank")

    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, default=80000, help="total training steps (official: 80000)")
    o.add_argument("--lr", type=float, default=6e-5, help="AdamW learning rate (official: 6e-5 ViT, 2e-5 XL)")
    o.add_argument("--weight-decay", type=float, default=0.05)
    o.add_argument("--clip-grad", type=float, default=5.0, help="max gradient norm (official 5; 0 = off)")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto",
                   help="mixed precision on GPU (auto: bf16 where supported, else fp16); CPU runs in fp32")

    r = p.add_argument_group("run")
    r.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, encoder, log)")
    r.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a checkpoint (no value: <out>/checkpoint_last.pt)")
    r.add_argument("--save-every", type=int, default=1000, help="write a checkpoint every N steps")
    r.add_argument("--log-every", type=int, default=10, help="log every N steps")
    r.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop (with a checkpoint) after this wall time; the schedule still spans --steps")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    r.add_argument("--threads", type=int, default=0, help="torch intra-op threads per process (0 = default)")


def parse_hold_outs(items: list[str]) -> list[tuple[str, str]]:
    """``["nwpu_vhr10=441-520"]`` -> ``[("nwpu_vhr10", "441-520")]``."""
    out = []
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise ValueError(f"--hold-out {item!r} must look like SOURCE=SPEC, e.g. 'nwpu_vhr10=441-520'")
        out.append((name.strip(), spec.strip()))
    return out


def apply_hold_outs(sources: list, items: list[str]) -> None:
    """Drop every ``--hold-out`` split from its source; a source not in ``--sources`` is an error."""
    by_name = {s.name: s for s in sources}
    for name, spec in parse_hold_outs(items):
        if name not in by_name:
            raise ValueError(f"--hold-out names source {name!r}, which is not in --sources ({', '.join(by_name)})")
        dropped = by_name[name].hold_out(spec)
        print(f"[mtp] hold-out {name}: {dropped} images ({spec}) kept out of pretraining, {len(by_name[name])} left",
              flush=True)


# ---------------------------------------------------------------------------------------------------------
def backbone_normalisation(encoder: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std (0-255 units) the encoder's pretrained weights expect.

    A backbone module may define ``IMAGENET_MEAN_255`` / ``IMAGENET_STD_255`` (EfficientNet-Lite: 127.5);
    otherwise the ImageNet statistics of the MTP configs (MTP_SPEC §2.1).
    """
    mod = sys.modules.get(type(encoder).__module__)
    mean = getattr(mod, "IMAGENET_MEAN_255", IMAGENET_MEAN_255)
    std = getattr(mod, "IMAGENET_STD_255", IMAGENET_STD_255)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, read without running foreign pickled code (:mod:`training.checkpoints`)."""
    from training.checkpoints import extract_state_dict, load_checkpoint_file

    if not path.is_file():
        raise FileNotFoundError(f"--init-weights {path} does not exist")
    return extract_state_dict(load_checkpoint_file(path))


def load_encoder_weights(encoder: nn.Module, path: Path) -> tuple[list[str], list[str]]:
    """Load an encoder state dict (MAE, MTP encoder, ImageNet) into ``encoder`` with the backbone's own filter.

    The backbone module's ``checkpoint_filter_fn(state_dict, model)`` (if any) maps official names and sizes.
    Missing keys are allowed (e.g. the ViT feature pyramid has no MAE counterpart) and returned.

    Returns:
        ``(missing, unexpected)`` key lists.

    Raises:
        ValueError: no key of the file matches the encoder (wrong backbone for this file).
    """
    sd = _read_state_dict(path)
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    if any(k.startswith("encoder.") for k in sd):
        sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    mod = sys.modules.get(type(encoder).__module__)
    filt = getattr(mod, "checkpoint_filter_fn", None)
    if filt is not None:
        sd = filt(sd, encoder)
    own = encoder.state_dict()
    matched = [k for k in sd if k in own and own[k].shape == sd[k].shape]
    if not matched:
        raise ValueError(f"no weight of {path} fits {type(encoder).__name__} (first file keys: "
                         f"{list(sd)[:4]}); pass the weights of the chosen --backbone")
    result = encoder.load_state_dict({k: sd[k] for k in matched}, strict=False)
    unexpected = sorted(set(sd) - set(matched))
    return list(result.missing_keys), unexpected


def _build_encoder(args: argparse.Namespace) -> nn.Module:
    from training.models.registry import create_model

    kwargs = dict(args.backbone_kwargs)
    if args.init == "imp":
        kwargs["pretrained"] = True
    try:
        encoder = create_model(args.backbone, **kwargs)
    except TypeError as exc:
        if args.init == "imp" and "pretrained" in str(exc):
            raise SystemExit(f"--init imp: backbone {args.backbone!r} has no ImageNet weights "
                             "(its factory takes no 'pretrained'); use --init random or --init file") from None
        raise
    if args.init in ("mae", "file"):
        if args.init_weights is None:
            raise SystemExit(f"--init {args.init} needs --init-weights PATH")
        missing, unexpected = load_encoder_weights(encoder, args.init_weights)
        print(f"[mtp] encoder weights from {args.init_weights}: {len(missing)} missing, "
              f"{len(unexpected)} unused keys", flush=True)
    return encoder


def set_norm_mode(model: nn.Module, mode: str) -> None:
    """After ``model.train()``: put BatchNorm layers in eval mode when ``mode == 'frozen'``."""
    if mode != "frozen":
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights and the model's ``no_weight_decay()`` names (norms, biases)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name in skip or p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _autocast(ctx: DistContext, amp: str):
    if ctx.device.type != "cuda" or amp == "off":
        return torch.autocast("cpu", enabled=False), None
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    if amp == "auto" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return torch.autocast("cuda", dtype=dtype), dtype


def _move(batches: list[dict], device: torch.device, channels_last: bool) -> list[dict]:
    def mv(x):
        if isinstance(x, torch.Tensor):
            return x.to(device, non_blocking=True)
        if isinstance(x, dict):
            return {k: mv(v) for k, v in x.items()}
        if isinstance(x, list):
            return [mv(v) for v in x]
        return x

    out = []
    for b in batches:
        b = mv(b)
        if channels_last:
            b["images"] = b["images"].contiguous(memory_format=torch.channels_last)
        out.append(b)
    return out


def save_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, scaler, step: int, args, datasets) -> None:
    """Write a full training checkpoint atomically (temp file + rename)."""
    state = {
        "version": CHECKPOINT_VERSION,
        "step": step,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "backbone": args.backbone,
        "backbone_kwargs": args.backbone_kwargs,
        "datasets": [{"name": d.name, "classes": d.classes} for d in datasets],
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def export_encoder(out_dir: Path, model: nn.Module, args, step: int, mean, std) -> Path:
    """Write ``encoder.safetensors`` (encoder keys, no prefix) and ``encoder.json`` (how to rebuild it)."""
    from safetensors.torch import save_file

    from training.models.mtp import encoder_state_dict

    sd = {k: v.detach().cpu().contiguous() for k, v in encoder_state_dict(unwrap(model)).items()}
    path = out_dir / "encoder.safetensors"
    tmp = out_dir / "encoder.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"backbone": args.backbone, "step": str(step)})
    os.replace(tmp, path)
    meta = {"backbone": args.backbone, "backbone_kwargs": args.backbone_kwargs, "init": args.init,
            "mtp_steps": step, "mean": list(mean), "std": list(std), "crop_size": args.crop_size,
            "sources": args.sources.split(","), "held_out": dict(parse_hold_outs(args.hold_out))}
    (out_dir / "encoder.json").write_text(json.dumps(meta, indent=2))
    return path


def _resume_path(args) -> Path | None:
    if args.resume is None:
        return None
    path = args.out / "checkpoint_last.pt" if args.resume == "auto" else Path(args.resume)
    if not path.is_file():
        raise SystemExit(f"--resume: {path} does not exist; start without --resume or give the checkpoint path")
    return path


# ---------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Train; returns 0 on success."""
    from torch.utils.data import DataLoader

    from training.data.multitask import (
        MultiTaskDataset,
        StepBatchSampler,
        build_sources,
        collate_multitask,
    )
    from training.models.mtp import DatasetSpec, MultiTaskModel, total_loss

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ctx = init_distributed(args.device)
    try:
        torch.manual_seed(args.seed)  # identical init on every rank (DDP also broadcasts rank 0's weights)
        names = [s.strip() for s in args.sources.split(",") if s.strip()]
        sources = build_sources(args.data_root, names)
        apply_hold_outs(sources, args.hold_out)
        datasets = [DatasetSpec(s.name, {t: s.classes(t) for t in s.tasks}) for s in sources]
        encoder = _build_encoder(args)
        model = MultiTaskModel(encoder, datasets, semseg_channels=args.semseg_channels, semseg_dropout=args.dropout,
                               det_channels=args.det_channels, roi_fc_channels=args.roi_fc_channels,
                               roi_samples=args.roi_samples)
        if args.norm in ("batch", "sync") and args.batch_per_source < 2 and "dubai_seg" in names:
            raise SystemExit(f"--norm {args.norm} with --batch-per-source 1: the semseg decoder's 1x1 pyramid "
                             "bin has no batch statistics for one image; use --norm frozen or --batch-per-source 2")
        if args.norm == "sync":
            if not ctx.distributed or ctx.device.type != "cuda":
                raise SystemExit("--norm sync needs a multi-process GPU run (torchrun on CUDA); use frozen or batch")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(ctx.device)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        mean, std = backbone_normalisation(encoder)

        optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.999))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, args.steps), eta_min=0.0)
        autocast, amp_dtype = _autocast(ctx, args.amp)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

        start = 0
        resume = _resume_path(args)
        if resume is not None:
            ckpt = load_checkpoint_file(resume)  # weights_only unpickling: tensors, numbers, str, lists, dicts
            if ckpt.get("backbone") != args.backbone or [d["name"] for d in ckpt["datasets"]] != names:
                raise SystemExit(f"{resume} was trained with backbone {ckpt.get('backbone')!r} on "
                                 f"{[d['name'] for d in ckpt['datasets']]}; pass the same --backbone/--sources")
            model.load_state_dict(ckpt["model"], strict=True)
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            start = int(ckpt["step"])
            print0(ctx, f"[mtp] resumed from {resume} at step {start}")
        ddp = wrap_ddp(model, ctx, find_unused_parameters=True)

        aug = {"scale_range": tuple(args.scale_range)}
        if args.no_augment:
            aug.update(flip=False, photometric=False)
        data = MultiTaskDataset(sources, args.crop_size, mean, std, seed=args.seed, **aug)
        remaining = max(0, args.steps - start)
        sampler = StepBatchSampler(data.lengths, args.batch_per_source, ctx.rank, ctx.world_size, start, remaining,
                                   seed=args.seed)
        loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate_multitask, num_workers=args.workers,
                            persistent_workers=False)

        if ctx.is_main:
            args.out.mkdir(parents=True, exist_ok=True)
            n_params = sum(p.numel() for p in model.parameters())
            print0(ctx, f"[mtp] {args.backbone} ({args.init}) + {len(datasets)} sources {names}; "
                        f"{n_params / 1e6:.1f} M params; world {ctx.world_size} on {ctx.device}; "
                        f"steps {start}->{args.steps}")
        barrier(ctx)
        # a resumed run continues its log; a fresh run starts a new one
        log_file = open(args.out / "log.jsonl", "a" if resume else "w") if ctx.is_main else None  # noqa: SIM115
        images_per_step = len(sources) * args.batch_per_source * ctx.world_size
        t_start = time.perf_counter()
        t_log, n_log = time.perf_counter(), 0
        step = start
        stopped_early = False
        fork_devices = [ctx.device] if ctx.device.type == "cuda" else []
        for batches in loader:
            ddp.train()
            set_norm_mode(ddp, args.norm)
            batches = _move(batches, ctx.device, args.channels_last)
            # Per image, seed its RoI sampling by the sample's global stream position (world-size independent).
            seeds = [[args.seed * 1_000_003 + b["source"] * 7_919 + (step * ctx.world_size + ctx.rank) *
                      args.batch_per_source + i for i in range(b["images"].shape[0])] for b in batches]
            # Dropout & co. draw from a stream seeded by (seed, step, rank): a resumed run repeats it exactly.
            with torch.random.fork_rng(devices=fork_devices):
                torch.manual_seed((args.seed * 1_000_003 + step * 4_099 + ctx.rank) % (2**63 - 1))
                with autocast:
                    losses = ddp(batches, seeds=seeds)
                    loss = total_loss(losses)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"step {step}: loss is {loss.item()} ({ {k: float(v) for k, v in losses.items()} }); "
                                         "lower --lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
                         if args.clip_grad > 0 else torch.tensor(0.0))
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            step += 1
            n_log += 1

            if step % args.log_every == 0 or step == args.steps:
                vals = torch.stack([loss.detach().float()] + [v.detach().float() for v in losses.values()])
                vals = all_reduce_mean(vals, ctx).tolist()
                dt = time.perf_counter() - t_log
                rec = {"step": step, "lr": scheduler.get_last_lr()[0], "loss": vals[0],
                       "grad_norm": float(grad_norm), "images_per_s": n_log * images_per_step / max(dt, 1e-9),
                       "losses": dict(zip(losses.keys(), vals[1:], strict=True))}
                per_task: dict[str, float] = {}
                for k, v in rec["losses"].items():
                    per_task[k.split(".", 1)[0]] = per_task.get(k.split(".", 1)[0], 0.0) + v
                rec["task_losses"] = per_task
                if log_file is not None:
                    log_file.write(json.dumps(rec) + "\n")
                    log_file.flush()
                print0(ctx, f"[mtp] step {step}/{args.steps} loss {vals[0]:.4f} "
                            + " ".join(f"{k} {v:.3f}" for k, v in per_task.items())
                            + f" lr {rec['lr']:.2e} {rec['images_per_s']:.2f} img/s")
                t_log, n_log = time.perf_counter(), 0
            if ctx.is_main and (step % args.save_every == 0):
                save_checkpoint(args.out / f"checkpoint_{step}.pt", ddp, optimizer, scheduler, scaler, step, args,
                                datasets)
            if args.max_minutes > 0:
                # every rank must agree, or one would wait forever in the next all-reduce
                over = torch.tensor(float(time.perf_counter() - t_start > args.max_minutes * 60))
                if float(all_reduce_mean(over, ctx)) > 0:
                    stopped_early = step < args.steps
                    break
        if ctx.is_main:
            save_checkpoint(args.out / "checkpoint_last.pt", ddp, optimizer, scheduler, scaler, step, args, datasets)
            path = export_encoder(args.out, ddp, args, step, mean, std)
            note = " (stopped by --max-minutes)" if stopped_early else ""
            print0(ctx, f"[mtp] done at step {step}{note}: {args.out / 'checkpoint_last.pt'}, encoder {path}")
        if log_file is not None:
            log_file.close()
        barrier(ctx)
    finally:
        cleanup_distributed(ctx)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m training.mtp`` (same options as ``rsfm-train mtp``)."""
    parser = argparse.ArgumentParser(prog="rsfm-train mtp", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

