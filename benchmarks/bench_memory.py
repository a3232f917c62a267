"""Peak memory of a segmentation run on rasters of 1x, 4x and 16x the area (each run in its own process).

The tiled engine keeps one output block (plus halo) in memory, so peak RSS should stay flat while the
raster grows. Each size runs in a fresh subprocess; the child reports ``ru_maxrss`` (peak resident set
size) after loading the model and after the run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_memory.py --base 1024 --block-size 1024 \
        [--write-doc docs/bench/engine.md]

Uses the seeded fixture segmentation package (real ``upernet_segmenter`` on ``efficientnet_lite0``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))


def _maxrss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def write_big_raster(path: Path, side: int) -> None:
    """Write a ``side x side`` RGB uint8 GeoTIFF block by block (the writer never holds the whole image)."""
    import rasterio
    from make_fixtures import FIXTURE_CRS, FIXTURE_ORIGIN, fixture_pixels
    from rasterio.windows import Window

    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8",
                       crs=FIXTURE_CRS, transform=rasterio.transform.from_origin(*FIXTURE_ORIGIN, 1.0, 1.0),
                       tiled=True, blockxsize=256, blockysize=256, compress="deflate") as dst:
        blk = 512
        tile = fixture_pixels(blk, blk, 3, "uint8", 7)
        for r in range(0, side, blk):
            for c in range(0, side, blk):
                h, w = min(blk, side - r), min(blk, side - c)
                dst.write(np.roll(tile, (r // 7) % blk, axis=1)[:, :h, :w], window=Window(c, r, w, h))


def child(args: argparse.Namespace) -> int:
    """Run one segmentation job in this process and print a JSON line with the measurements."""
    from backend.jobs import Job, JobContext
    from backend.models import ModelRegistry
    from backend.runtimes import RuntimeCache
    from backend.settings import Settings, configure_gdal
    from backend.tasks import build_spec, run_spec

    settings = Settings.resolve({"block_size_px": args.block_size, "threads": args.threads}, env={})
    configure_gdal(settings.gdal_cache_mb)  # as the server does at start
    app = SimpleNamespace(models=ModelRegistry([args.models], include_bundled=False), settings=settings,
                          device="cpu", runtimes=RuntimeCache())
    body = {"task": "semantic_segmentation", "model": args.model, "inputs": {"raster": args.raster},
            "output_dir": args.out, "options": {"vectorize": args.vectorize}}
    spec = build_spec(app, body)
    model = app.runtimes.get(spec.entry, "torch", "cpu", args.threads)
    model(np.zeros((1, 3, spec.params.tile_size_px, spec.params.tile_size_px), np.float32))  # warm up
    rss_loaded = _maxrss_mib()
    t0 = time.perf_counter()
    job = Job(task=spec.task, model=spec.entry.id, runner=lambda c: {})
    result = run_spec(app, spec, JobContext(job), model=model)
    wall = time.perf_counter() - t0
    print(json.dumps({"width": int(spec.plan.window.width), "height": int(spec.plan.window.height),
                      "rss_after_model_mib": round(rss_loaded, 1), "peak_rss_mib": round(_maxrss_mib(), 1),
                      "wall_s": round(wall, 2), "outputs": len(result["outputs"])}))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=int, default=1024, help="side of the 1x raster in pixels")
    p.add_argument("--scales", type=int, nargs="*", default=[1, 4, 16], help="area multiples")
    p.add_argument("--block-size", type=int, default=1024)
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vectorize", action="store_true", help="also vectorise (not part of the bounded engine)")
    p.add_argument("--write-doc", type=Path, help="append a results section to this markdown file")
    # child mode
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--models", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--raster", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    from make_fixtures import build_fixture_package

    rows = []
    with tempfile.TemporaryDirectory(prefix="rsfm-bench-") as tmp:
        tmp = Path(tmp)
        build_fixture_package("semantic_segmentation", tmp / "models" / "seg", name="bench-seg",
                              tile_size_px=args.tile_size, tile_overlap_px=args.overlap, batch_size=4)
        for scale in args.scales:
            side = int(round(args.base * scale ** 0.5))
            raster = tmp / f"r{scale}.tif"
            write_big_raster(raster, side)
            out = tmp / f"out{scale}"
            cmd = [sys.executable, __file__, "--child", "--models", str(tmp / "models"), "--model", "bench-seg",
                   "--raster", str(raster), "--out", str(out), "--block-size", str(args.block_size),
                   "--threads", str(args.threads)] + (["--vectorize"] if args.vectorize else [])
            res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if res.returncode != 0:
                print(res.stderr, file=sys.stderr)
                return res.returncode
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row["scale"] = scale
            rows.append(row)
            print(json.dumps(row), flush=True)
            raster.unlink()
    table = ["| area | raster (px) | RSS after model load (MiB) | peak RSS (MiB) | growth over load (MiB) | wall (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['scale']}x | {r['width']} x {r['height']} | {r['rss_after_model_mib']} | "
                     f"{r['peak_rss_mib']} | {r['peak_rss_mib'] - r['rss_after_model_mib']:.1f} | {r['wall_s']} |")
    text = "\n".join(table)
    print(text)
    if args.write_doc:
        cmd = ("OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_memory.py " + " ".join(sys.argv[1:])).replace(
            f" --write-doc {args.write_doc}", "")
        section = (f"\n### Peak memory, {time.strftime('%Y-%m-%d')} ({platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} CPUs, torch threads {args.threads})\n\n"
                   f"Command: `{cmd}`\n\nTile {args.tile_size} px, overlap {args.overlap} px, block "
                   f"{args.block_size} px, batch 4, vectorise {args.vectorize}.\n\n{text}\n")
        args.write_doc.parent.mkdir(parents=True, exist_ok=True)
        with open(args.write_doc, "a", encoding="utf-8") as f:
            f.write(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
