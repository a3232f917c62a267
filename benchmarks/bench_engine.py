"""Throughput of the tiled engine: engine overhead alone, block-size trade-off, torch vs onnxruntime.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_engine.py --side 2048 [--write-doc docs/bench/engine.md]

Rows:
* ``pointwise`` — a numpy 1x1 "model": what reading, normalising, blending and writing cost by themselves;
* ``torch`` / ``onnx`` — the seeded fixture segmentation package (``upernet_segmenter`` on
  ``efficientnet_lite0``, 16-channel head) through the real runtimes;
* ``tiles run / grid`` — tiles the block-with-halo scheme runs divided by the tiles of one global grid.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def pointwise(x: np.ndarray) -> np.ndarray:
    w = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    return np.einsum("kc,bchw->bkhw", w, x)


def run_once(models: Path, raster: Path, out: Path, block: int, runtime: str, threads: int, model_fn=None):
    from backend.engine import halo_overhead
    from backend.jobs import Job, JobContext
    from backend.models import ModelRegistry
    from backend.runtimes import RuntimeCache
    from backend.settings import Settings
    from backend.tasks import build_spec, run_spec

    settings = Settings.resolve({"block_size_px": block, "threads": threads}, env={})
    app = SimpleNamespace(models=ModelRegistry([models], include_bundled=False), settings=settings, device="cpu",
                          runtimes=RuntimeCache())
    spec = build_spec(app, {"task": "semantic_segmentation", "model": "bench-seg",
                            "inputs": {"raster": str(raster)}, "output_dir": str(out),
                            "options": {"vectorize": False, "runtime": runtime}})
    model = model_fn or app.runtimes.get(spec.entry, runtime, "cpu", threads)
    t = spec.params.tile_size_px
    model(np.zeros((spec.params.batch_size, 3, t, t), np.float32))  # warm up
    t0 = time.perf_counter()
    run_spec(app, spec, JobContext(Job(task=spec.task, model="bench-seg", runner=lambda c: {})), model=model)
    wall = time.perf_counter() - t0
    h, w = int(spec.plan.window.height), int(spec.plan.window.width)
    return wall, h * w / wall / 1e6, halo_overhead(h, w, spec.params)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--blocks", type=int, nargs="*", default=[512, 1024, 2048])
    p.add_argument("--write-doc", type=Path)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from bench_memory import write_big_raster
    from make_fixtures import build_fixture_package

    rows = []
    with tempfile.TemporaryDirectory(prefix="rsfm-bench-") as tmp:
        tmp = Path(tmp)
        build_fixture_package("semantic_segmentation", tmp / "models" / "seg", name="bench-seg",
                              tile_size_px=args.tile_size, tile_overlap_px=args.overlap, batch_size=4, onnx=True)
        raster = tmp / "r.tif"
        write_big_raster(raster, args.side)
        for block in args.blocks:
            wall, mpx, ovh = run_once(tmp / "models", raster, tmp / f"p{block}", block, "torch", args.threads,
                                      model_fn=pointwise)
            rows.append(("pointwise (engine only)", block, wall, mpx, ovh))
            print(rows[-1], flush=True)
        for runtime in ("torch", "onnx"):
            for block in args.blocks:
                wall, mpx, ovh = run_once(tmp / "models", raster, tmp / f"{runtime}{block}", block, runtime,
                                          args.threads)
                rows.append((runtime, block, wall, mpx, ovh))
                print(rows[-1], flush=True)
    table = ["| model | block (px) | wall (s) | Mpx/s | tiles run / grid |", "|---|---|---|---|---|"]
    table += [f"| {m} | {b} | {w:.2f} | {mp:.2f} | {o:.2f} |" for m, b, w, mp, o in rows]
    text = "\n".join(table)
    print(text)
    if args.write_doc:
        cmd = ("OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_engine.py " + " ".join(sys.argv[1:])).replace(
            f" --write-doc {args.write_doc}", "")
        with open(args.write_doc, "a", encoding="utf-8") as f:
            f.write(f"\n### Throughput, {time.strftime('%Y-%m-%d')} ({platform.machine()}, {os.cpu_count()} CPUs "
                    f"shared with other work, {args.threads} thread(s))\n\nCommand: `{cmd}`\n\n"
                    f"Raster {args.side} x {args.side} px RGB uint8, tile {args.tile_size} px, overlap "
                    f"{args.overlap} px, batch 4, no vectorising.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
