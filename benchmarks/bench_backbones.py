"""CPU timing of the MTP backbones: forward and forward+backward at one image size, batch 1.

Usage (the command used for docs/bench/backbones.md)::

    nice -n 10 .venv/bin/python benchmarks/bench_backbones.py --size 512 --threads 2 \
        --out docs/bench/backbones.md

Each model is built with random weights in float32, warmed up once, then timed ``--iters`` times (big
models: 1 iteration, see ``BIG``); the median is reported. Timings on a shared machine are noisy: the
file records the load average before and after each model.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from training.models import create_model

# (registry name, kwargs, big?) - big models get a single timed iteration and no warm-up backward.
MODELS: list[tuple[str, dict, bool]] = [
    ("vit_t_rvsa", {}, False),
    ("vit_s_rvsa", {}, False),
    ("internimage_t", {}, False),
    ("vit_b_rvsa", {}, False),
    ("vit_l_rvsa", {}, True),
    ("internimage_xl", {}, True),
]


def _time(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(name: str, kwargs: dict, big: bool, size: int, iters: int) -> dict:
    """Time one backbone. Returns a row for the table (seconds, millions of parameters)."""
    torch.manual_seed(0)
    model = create_model(name, img_size=size, **kwargs) if "vit" in name else create_model(name, **kwargs)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    x = torch.randn(1, 3, size, size)
    n = 1 if big else iters
    load0 = os.getloadavg()[0]

    model.eval()

    def fwd() -> None:
        with torch.no_grad():
            model(x)

    fwd()  # warm-up (allocator, oneDNN kernels)
    t_fwd = _time(fwd, n)

    model.train()

    def fwd_bwd() -> None:
        model.zero_grad(set_to_none=True)
        outs = model(x)
        sum(o.float().mean() for o in outs).backward()

    if not big and n > 1:
        fwd_bwd()  # warm-up only when several iterations are timed (on this CPU one pass costs minutes)
    t_fb = _time(fwd_bwd, n)
    load1 = os.getloadavg()[0]
    return {
        "name": name,
        "params_m": params_m,
        "fwd_s": t_fwd,
        "fwd_bwd_s": t_fb,
        "iters": n,
        "load": (load0, load1),
    }


def write_report(out: Path, rows: list[dict], args: argparse.Namespace) -> None:
    """Markdown table of ``rows`` with the exact command; rewritten after every model (partial runs survive)."""
    lines = [
        "# Backbone CPU timings",
        "",
        f"Input {args.size}x{args.size}, batch 1, float32, random weights; torch {torch.__version__}, "
        f"{args.threads} threads, {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs "
        "(shared with other jobs: see the load average column).",
        "",
        "Command:",
        "",
        "```",
        f"nice -n 10 .venv/bin/python benchmarks/bench_backbones.py --size {args.size} --threads {args.threads} "
        f"--iters {args.iters} --out {out}",
        "```",
        "",
        "| backbone | params (M) | forward (s) | forward+backward (s) | timed iterations | load avg before -> after |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['params_m']:.1f} | {r['fwd_s']:.2f} | {r['fwd_bwd_s']:.2f} | {r['iters']} "
            f"| {r['load'][0]:.1f} -> {r['load'][1]:.1f} |"
        )
    lines += [
        "",
        "Median of the timed iterations after one warm-up forward (a warm-up forward+backward only when more "
        "than one iteration is timed, and never for ViT-L / InternImage-XL). InternImage runs DCNv3 through "
        "`F.grid_sample` (no CUDA kernel); forward+backward keeps all activations (no gradient checkpointing). "
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{len(rows)} of {len(MODELS) if not args.only else len(args.only)} models done.",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="square input size in pixels (multiple of 32)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations for the small models")
    ap.add_argument("--only", nargs="*", help="subset of model names")
    ap.add_argument("--out", type=Path, help="write a markdown report here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for name, kw, big in MODELS:
        if args.only and name not in args.only:
            continue
        row = bench(name, kw, big, args.size, args.iters)
        print(
            f"{row['name']:16s} {row['params_m']:8.1f} M  fwd {row['fwd_s']:8.2f} s  "
            f"fwd+bwd {row['fwd_bwd_s']:8.2f} s  (n={row['iters']}, load {row['load'][0]:.1f}->{row['load'][1]:.1f})",
            flush=True,
        )
        rows.append(row)
        gc.collect()  # free the previous model before building the next one
        if args.out:
            write_report(args.out, rows, args)


if __name__ == "__main__":
    main()
