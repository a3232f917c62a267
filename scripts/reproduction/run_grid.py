#!/usr/bin/env python
"""Run the label-efficiency reproduction grid: init (IMP / IMP+MTP, or random / random+MTP) x label fraction x
seed, one task.

Each *cell* is one ``rsfm-train finetune`` run with a fixed step budget followed by one
``rsfm-train evaluate`` of its **last** checkpoint on the held-back test split. Nothing is chosen on the
test split and nothing is tuned per cell (``best.pt``, picked on validation, is deleted so that it cannot be
used by mistake). Results land in ``OUT_ROOT/<cell>/``:

* ``cell.json``  - init, fraction, seed, task, the exact finetune/evaluate argv, wall and CPU seconds;
* ``test.json``  - the metrics written by ``rsfm-train evaluate`` (the presence of this file = cell done);
* ``train.log`` / ``eval.log`` - the stdout/stderr of the two commands.

A cell whose ``test.json`` exists is skipped, so the grid can be stopped and started again. Cells are run
one after the other in a fixed order (seed-major, so that an interrupted grid still has complete seeds).

Example (the CPU instance run for docs/results/reproduction.md)::

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python scripts/reproduction/run_grid.py \
        --task scene_classification --data /work/shared/data/aid --dataset aid \
        --seeds 0,1,2 --fractions 0.01,0.1,1.0 --steps 40

Other tasks use the same grid; pass their split options through ``--finetune-arg`` / ``--evaluate-arg``
(e.g. ``--finetune-arg=--val-groups=Tile 7``), and their input size through ``--crop-size``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: init name -> (starts from the backbone's ImageNet weights, loads the MTP encoder on top).
INITS = {"imp": (True, False), "imp+mtp": (True, True), "random": (False, False), "random+mtp": (False, True)}
DEFAULT_MTP_ENCODER = "runs/mtp/effl0_imp/encoder.safetensors"


@dataclass(frozen=True)
class Cell:
    """One grid point. ``fraction`` is the label fraction in (0, 1]."""

    task: str
    init: str
    fraction: float
    seed: int

    @property
    def name(self) -> str:
        """Folder name, e.g. ``scene_classification__imp+mtp__f0.01__s2`` (unique per grid point)."""
        return f"{self.task}__{self.init}__f{self.fraction:g}__s{self.seed}"


def grid_cells(task: str, inits: list[str], fractions: list[float], seeds: list[int]) -> list[Cell]:
    """All cells in run order: seed-major, then fraction, then init (pairs of inits run back to back)."""
    for init in inits:
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; use one of {', '.join(INITS)}")
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"label fraction {f} is not in (0, 1]; pass e.g. --fractions 0.01,0.1,1.0")
    return [Cell(task, i, f, s) for s in seeds for f in fractions for i in inits]


def cell_done(cell_dir: Path) -> bool:
    """True when ``cell_dir/test.json`` holds a complete metrics dict (written only after evaluate succeeded)."""
    path = cell_dir / "test.json"
    if not path.is_file():
        return False
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(metrics, dict) and bool(metrics)


def finetune_argv(cell: Cell, args: argparse.Namespace, cell_dir: Path) -> list[str]:
    """The ``rsfm-train finetune`` command of one cell (fixed step budget: one 'epoch' of ``--steps`` steps,
    so validation runs once, at the end, and never steers anything)."""
    imagenet, mtp = INITS[cell.init]
    argv = [args.rsfm_train, "finetune", "--task", cell.task, "--backbone", args.backbone,
            "--pretrained" if imagenet else "--no-pretrained", "--data", args.data, "--dataset", args.dataset,
            "--out", str(cell_dir), "--seed", str(cell.seed),
            "--label-fraction", f"{cell.fraction:g}", "--max-steps", str(args.steps),
            "--steps-per-epoch", str(args.steps), "--batch-size", str(args.batch_size),
            "--crop-size", str(args.crop_size), "--lr", f"{args.lr:g}", "--weight-decay", f"{args.weight_decay:g}",
            "--warmup-steps", str(args.warmup_steps), "--threads", str(args.threads), "--log-every", "10"]
    if cell.task == "scene_classification":
        argv += ["--val-fraction", f"{args.val_fraction:g}", "--test-fraction", f"{args.test_fraction:g}",
                 "--scale-min", "0.86", "--scale-max", "1.2"]
    if mtp:
        argv += ["--backbone-weights", args.mtp_encoder]
    return argv + list(args.finetune_arg)


def evaluate_argv(cell: Cell, args: argparse.Namespace, cell_dir: Path) -> list[str]:
    """The ``rsfm-train evaluate`` command: the LAST checkpoint on the test split, written to a partial file."""
    argv = [args.rsfm_train, "evaluate", str(cell_dir / "last.pt"), "--data", args.data, "--dataset", args.dataset,
            "--split", "test", "--threads", str(args.threads), "--out", str(cell_dir / "test.partial.json")]
    if cell.task == "scene_classification":
        argv += ["--val-fraction", f"{args.val_fraction:g}", "--test-fraction", f"{args.test_fraction:g}"]
    return argv + list(args.evaluate_arg)


def _run_logged(argv: list[str], log: Path) -> tuple[int, float, float]:
    """Run ``argv`` with output to ``log`` -> ``(returncode, wall seconds, CPU seconds of the child)``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    with log.open("w") as f:
        f.write("$ " + shlex.join(argv) + "\n")
        f.flush()
        rc = subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return rc, time.time() - t0, cpu


def run_cell(cell: Cell, args: argparse.Namespace) -> dict:
    """Train + evaluate one cell (skipped when done); returns its ``cell.json`` record."""
    cell_dir = Path(args.out_root) / cell.name
    if cell_done(cell_dir):
        print(f"skip {cell.name} (test.json exists)", flush=True)
        return json.loads((cell_dir / "cell.json").read_text()) if (cell_dir / "cell.json").is_file() else {}
    cell_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("last.pt", "best.pt", "log.jsonl", "test.partial.json"):  # a half-run cell restarts cleanly
        (cell_dir / stale).unlink(missing_ok=True)
    ft, ev = finetune_argv(cell, args, cell_dir), evaluate_argv(cell, args, cell_dir)
    record = {"task": cell.task, "init": cell.init, "fraction": cell.fraction, "seed": cell.seed,
              "steps": args.steps, "batch_size": args.batch_size, "crop_size": args.crop_size,
              "finetune_argv": ft, "evaluate_argv": ev, "checkpoint": "last.pt",
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"run  {cell.name}: finetune", flush=True)
    rc, record["train_wall_s"], record["train_cpu_s"] = _run_logged(ft, cell_dir / "train.log")
    if rc != 0:
        raise RuntimeError(f"finetune of {cell.name} failed (exit {rc}); see {cell_dir / 'train.log'}")
    (cell_dir / "best.pt").unlink(missing_ok=True)  # picked on validation; the grid reports last.pt only
    print(f"run  {cell.name}: evaluate", flush=True)
    rc, record["eval_wall_s"], record["eval_cpu_s"] = _run_logged(ev, cell_dir / "eval.log")
    if rc != 0:
        raise RuntimeError(f"evaluate of {cell.name} failed (exit {rc}); see {cell_dir / 'eval.log'}")
    (cell_dir / "cell.json").write_text(json.dumps(record, indent=2) + "\n")
    os.replace(cell_dir / "test.partial.json", cell_dir / "test.json")  # last: marks the cell done
    metrics = json.loads((cell_dir / "test.json").read_text())
    shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    print(f"done {cell.name}: {shown} train {record['train_wall_s']:.0f}s eval {record['eval_wall_s']:.0f}s",
          flush=True)
    return record


def encoder_meta(encoder: str) -> dict:
    """The ``encoder.json`` written next to an MTP encoder (``{}`` when there is none)."""
    path = Path(encoder).with_name("encoder.json")
    return json.loads(path.read_text()) if path.is_file() else {}


def pretraining_overlap(meta: dict, data: str) -> str | None:
    """Why the MTP encoder may have seen this task's test labels, or None.

    The data folder's name is the pretraining source's name (``/work/shared/data/nwpu_vhr10``); a source that
    was pretrained on without a ``--hold-out`` saw every image of it, the test split included.
    """
    name = Path(data).name
    if name in meta.get("sources", []) and name not in meta.get("held_out", {}):
        return (f"the MTP encoder was pretrained on every image of {name!r}, its test split included; pretrain "
                f"with 'rsfm-train mtp --hold-out {name}=<the test split>' or pass --allow-pretraining-overlap")
    return None


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="scene_classification",
                   help="rsfm-train finetune --task (scene_classification, semantic_segmentation, ...)")
    p.add_argument("--data", required=True, help="dataset root folder")
    p.add_argument("--dataset", default="auto", help="rsfm-train finetune --dataset")
    p.add_argument("--inits", default="imp,imp+mtp", help=f"comma list from {', '.join(INITS)}")
    p.add_argument("--mtp-encoder", default=DEFAULT_MTP_ENCODER, help="MTP encoder weights for the +mtp inits")
    p.add_argument("--fractions", type=_floats, default=[0.01, 0.1, 1.0], help="label fractions, comma list")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="comma list")
    p.add_argument("--steps", type=int, default=40, help="fixed optimiser steps per cell (last checkpoint is used)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--crop-size", type=int, default=128, help="training input size, px")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=4)
    p.add_argument("--val-fraction", type=float, default=0.1, help="scene folders: per-class validation fraction")
    p.add_argument("--test-fraction", type=float, default=0.2, help="scene folders: per-class held-back fraction")
    p.add_argument("--threads", type=int, default=1, help="torch threads per job")
    p.add_argument("--out-root", default="runs/repro")
    p.add_argument("--finetune-arg", action="append", default=[], help="extra finetune option (repeatable)")
    p.add_argument("--evaluate-arg", action="append", default=[], help="extra evaluate option (repeatable)")
    p.add_argument("--rsfm-train", default=str(Path(sys.executable).with_name("rsfm-train")),
                   help="the rsfm-train executable")
    p.add_argument("--allow-pretraining-overlap", action="store_true",
                   help="run although the MTP encoder saw this dataset's test split (the results are then biased)")
    p.add_argument("--dry-run", action="store_true", help="print the cells and their state, run nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    inits = [i.strip() for i in args.inits.split(",") if i.strip()]
    cells = grid_cells(args.task, inits, args.fractions, args.seeds)
    if any(INITS[c.init][1] for c in cells) and not (REPO / args.mtp_encoder).is_file() \
            and not Path(args.mtp_encoder).is_file():
        raise FileNotFoundError(f"MTP encoder {args.mtp_encoder} not found; run rsfm-train mtp first or pass "
                                "--mtp-encoder PATH (or --inits imp)")
    meta = encoder_meta(args.mtp_encoder) if any(INITS[c.init][1] for c in cells) else {}
    overlap = pretraining_overlap(meta, args.data)
    if overlap and not args.allow_pretraining_overlap:
        raise SystemExit(overlap)
    root = Path(args.out_root)
    if args.dry_run:
        for c in cells:
            print(f"{'done' if cell_done(root / c.name) else 'todo'} {c.name}")
        return 0
    root.mkdir(parents=True, exist_ok=True)
    # one record per launch: grids for different inits or seeds may run at the same time into one root (one per
    # core), or be added later (more seeds)
    seeds = "_".join(str(s) for s in args.seeds)
    (root / f"grid.{args.inits.replace(',', '_').replace('+', '-')}.s{seeds}.json").write_text(
        json.dumps({"argv": [sys.executable, str(Path(__file__).resolve().relative_to(REPO)),
                             *(sys.argv[1:] if argv is None else argv)],
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                    "mtp_encoder": {k: meta[k] for k in ("mtp_steps", "sources", "held_out") if k in meta},
                    "pretraining_overlap": overlap,
                    "cells": [c.name for c in cells]}, indent=2) + "\n")
    for c in cells:
        run_cell(c, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
