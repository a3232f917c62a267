"""Run the performance benchmarks and assemble docs/BENCHMARKS.md (what ``make bench`` runs).

    .venv/bin/python benchmarks/run_all.py            # full: ~15 min on the 2-core VM
    .venv/bin/python benchmarks/run_all.py --quick    # smaller rasters, fewer rounds: ~3 min
    .venv/bin/python benchmarks/run_all.py --others run   # also re-run the other engineers' benchmarks

Each benchmark runs as its own process with the exact command printed in the report (so every figure can
be reproduced by copying that line) and writes its section to ``docs/bench/<name>.md`` (+ ``.json``).
The other engineers' sections (``docs/bench/backbones.md``, ``engine.md``, ``training.md``, ``chat.md``)
are embedded as they are; with ``--others run`` their scripts are first re-run with their documented
commands (slow: the backbone and training benchmarks alone take well over 20 minutes here).
Generated rasters go to ``$RSFM_BENCH_TMP`` (default /tmp/rsfm-bench), never into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine_line  # noqa: E402

BENCH = ROOT / "docs" / "bench"
PY = ".venv/bin/python"

# (name, script, env, args full, args quick): ours; each writes docs/bench/<name>.md via --out.
# runtimes_passive: the same comparison with OpenMP's idle threads sleeping instead of spinning.
OURS: list[tuple[str, str, dict[str, str], list[str], list[str]]] = [
    ("runtimes", "bench_runtimes.py", {"OMP_NUM_THREADS": "2"}, ["--rounds", "8", "--threads", "1", "2"],
     ["--rounds", "3", "--threads", "1", "2"]),
    ("runtimes_passive", "bench_runtimes.py", {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
     ["--rounds", "8", "--threads", "1", "2"], ["--rounds", "3", "--threads", "1", "2"]),
    ("throughput", "bench_throughput.py", {"OMP_NUM_THREADS": "1"}, ["--side", "4096", "--threads", "1"],
     ["--side", "1024", "--threads", "1"]),
    ("naive", "bench_naive.py", {"OMP_NUM_THREADS": "1"},
     # 1x = 4096² = 16 blocks of 1024 px, so the reader/model/writer pipeline is full from 1x on
     ["--base", "4096", "--block-size", "1024", "--scales", "1", "4", "16", "--threads", "1", "--precision", "bf16"],
     ["--base", "1024", "--block-size", "512", "--scales", "1", "4", "16", "--threads", "1"]),
]

# The other engineers' benchmarks with the commands their docstrings document (run only with --others run).
OTHERS: list[tuple[str, dict[str, str], list[str]]] = [
    ("bench_memory.py", {"OMP_NUM_THREADS": "1"}, ["--base", "1024", "--block-size", "1024",
                                                   "--write-doc", "docs/bench/engine.md"]),
    ("bench_engine.py", {"OMP_NUM_THREADS": "1"}, ["--side", "2048", "--write-doc", "docs/bench/engine.md"]),
    ("bench_backbones.py", {}, ["--size", "512", "--threads", "2", "--out", "docs/bench/backbones.md"]),
    ("bench_task_models.py", {}, ["--size", "512", "--threads", "2", "--iters", "1", "--out", "docs/bench/task_models.md"]),
    ("bench_training.py", {"OMP_NUM_THREADS": "1"}, ["--out", "docs/bench/training.json"]),
    ("bench_chat.py", {"OMP_WAIT_POLICY": "PASSIVE"}, ["--repeats", "3", "--out", "docs/bench/chat.json"]),
]
EMBED = ["backbones.md", "task_models.md", "engine.md", "training.md", "chat.md"]


def shell_line(env: dict[str, str], script: str, args: list[str]) -> str:
    return " ".join([*(f"{k}={v}" for k, v in env.items()), "nice -n 10", PY, f"benchmarks/{script}", *args])


def run(env: dict[str, str], script: str, args: list[str]) -> tuple[int, float]:
    """Run one benchmark from the repository root; stream its output; return (exit code, seconds)."""
    line = shell_line(env, script, args)
    print(f"\n$ {line}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(["nice", "-n", "10", str(ROOT / PY), f"benchmarks/{script}", *args], cwd=ROOT,
                         env={**os.environ, **env})
    return rc, time.perf_counter() - t0


def summary() -> list[str]:
    """One line per issue target, read from the benchmarks' JSON results."""
    def load(name: str) -> dict | None:
        p = BENCH / f"{name}.json"
        return json.loads(p.read_text()) if p.is_file() else None

    out = []
    thr, rt, nv = load("throughput"), load("runtimes"), load("naive")
    rtp = load("runtimes_passive")

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**NOT met**"

    if thr and "best_utilisation_pct" in thr:
        u = ", ".join(f"{x['runtime']} {x['job_pct']:.1f} % (model alone {x['model_only_pct']:.1f} %)"
                      for x in thr["utilisation"])
        out.append(f"| segmentation FLOP/s / measured matmul FLOP/s >= 50 % | {u} | {verdict(thr['met'])} | "
                   f"{thr['machine'].get('cpu', '')}, load {thr['machine']['load1']} |")
    # the same benchmark, segmentation only, with no other job running (1 model thread; 2 = the whole machine)
    for name in ("throughput_quiet", "throughput_quiet_2t"):
        quiet = load(name)
        if not (quiet and "utilisation" in quiet):
            continue
        u = ", ".join(f"{x['runtime']} {x['job_pct']:.1f} % of the fp32 limit, {x['job_pct_bf16_limit']:.1f} % of the "
                      f"bf16 limit (model alone {x['model_only_pct']:.1f} / {x['model_only_pct_bf16_limit']:.1f} %)"
                      for x in quiet["utilisation"])
        v = (f"{verdict(quiet['met_fp32_in_fp32'])} computing in fp32 (the default, onnx) vs the fp32 limit; "
             f"{verdict(quiet['met_bf16_vs_bf16_limit'])} in bf16 vs the bf16 limit")
        threads = quiet["command"].split("--threads")[-1].split()[0] if "--threads" in quiet["command"] else "?"
        out.append(f"| same, quiet machine, {threads} thread(s) (`docs/bench/{name}.json`) | {u} | {v} | "
                   f"{quiet['machine'].get('cpu', '')}, load {quiet['machine']['load1']} |")
    if rt:
        r = ", ".join(f"{x['threads']} thr: {x['ratio']:.2f}x" for x in rt["results"])
        out.append(f"| onnxruntime / torch eager (same model, same tiles) >= 1.5x | {r} | {verdict(rt['met'])} | "
                   f"load {rt['machine']['load1']}, default OpenMP wait policy |")
    if rtp:
        r = ", ".join(f"{x['threads']} thr: {x['ratio']:.2f}x" for x in rtp["results"])
        out.append(f"| same, with `OMP_WAIT_POLICY=PASSIVE` (torch threads sleep when idle) | {r} | "
                   f"{verdict(rtp['met'])} | load {rtp['machine']['load1']} |")
    # chat answer (fact sheet + 60 tokens) < 3 s: the quiet-machine run, then `make bench`'s own run when it
    # measured the default engine (an older chat.json holds torch-only runs on another machine)
    for name in ("chat_quiet", "chat"):
        ch = load(name)
        cfgs = (ch or {}).get("builtin", {}).get("configs", [])
        if name != "chat_quiet" and not any(c["dtype"].startswith("llama.cpp") for c in cfgs):
            continue
        if cfgs:
            # the backend's default configuration (llama.cpp, 2 threads) when it was measured, else the best
            default = [c for c in cfgs if c["dtype"].startswith("llama.cpp") and c["threads"] == 2]
            best = default[0] if default else min(cfgs, key=lambda c: c["median"]["fixed_e2e_s"])
            e2e = best["median"]["fixed_e2e_s"]
            cpu = ch["machine"].get("cpu", "")
            out.append(f"| chat answer (fact sheet + 60 tokens) < 3 s (`docs/bench/{name}.json`) | {e2e:.2f} s "
                       f"({'default: ' if default else ''}{best['dtype']}, {best['threads']} thread(s); first token "
                       f"{best['median']['fixed_ttft_s']:.2f} s, {best['median']['fixed_decode_tok_s']:.1f} tok/s) | "
                       f"{verdict(e2e < 3.0)} | {cpu + ', ' if cpu else ''}load at start "
                       f"{ch['machine']['load_avg_at_start'][0]:.2f} |")
    if nv and "engine_peak_ratio" in nv:
        a, b = nv["scales"]
        out.append(f"| engine peak RSS at {b}x area within 10 % of {a}x | {nv['engine_peak_ratio']:.3f} | "
                   f"{verdict(nv['met'])} | load {nv['machine']['load1']} |")
    if nv:
        eng = {r["scale"]: r for r in nv["results"] if r.get("approach") == "engine" and "error" not in r}
        for r in nv["results"]:
            if r.get("approach") == "naive-whole" and r["scale"] in eng:
                e = eng[r["scale"]]
                if "error" in r:
                    out.append(f"| naive whole-image forward at {r['scale']}x ({r['side']}²) | failed: "
                               f"{r['error'][:60]} | engine ran in {e['child_peak_rss_mib']:.0f} MiB | |")
                else:
                    out.append(f"| naive whole-image forward at {r['scale']}x ({r['side']}²) | peak "
                               f"{r['child_peak_rss_mib']:.0f} MiB vs engine {e['child_peak_rss_mib']:.0f} MiB; "
                               f"time x{r['wall_s'] / e['wall_s']:.2f} of engine | (comparison) | |")
    return out


def findings() -> list[str]:
    """What the figures of this run say about where the time goes (read from the benchmarks' JSON)."""
    def load(name: str) -> dict | None:
        p = BENCH / f"{name}.json"
        return json.loads(p.read_text()) if p.is_file() else None

    thr, nv = load("throughput"), load("naive")
    out = ["## Findings: where the time goes\n"]
    if thr and thr.get("utilisation"):
        best = max(thr["utilisation"], key=lambda x: x["job_mpx_s"])
        seg = [t for t in thr["tasks"] if t["task"] == "semantic_segmentation"]
        if seg:
            t = seg[0]
            f = t["tiles"] * t["tile"] ** 2 / t["pixels"]
            out.append(f"1. **Overlap.** The default segmentation package's tiling (tile {t['tile']} px, overlap "
                       f"{t.get('overlap', '?')} px, plus engine block halos) runs each output pixel through the "
                       f"model **{f:.2f} times**. That factor is already in the `kFLOP / output px` column, so the "
                       "utilisation figures count the recomputed pixels as useful work; halving the overlap "
                       "(`tile_overlap_px` in the package's config.json) would cut the work per output pixel "
                       "roughly in proportion, at some cost in seam quality.")
        if "engine_only_mpx_s" in thr:
            out.append(f"2. **Engine overhead.** With a zero-cost model the engine (read, normalise, blend, argmax, "
                       f"write GeoTIFF) runs at {thr['engine_only_mpx_s']:.1f} Mpx/s, against "
                       f"{best['job_mpx_s']:.2f} Mpx/s for the fastest real job ({best['runtime']}): about "
                       f"{100 * best['job_mpx_s'] / thr['engine_only_mpx_s']:.0f} % of a job's time is the engine; "
                       "the rest is the model.")
        out.append("3. **The model itself.** Even alone (`model-only` column) EfficientNet-Lite0 + UperNet stays "
                   "well below the matmul limit: its depthwise convolutions and upsampling are memory-bound, not "
                   "FLOP-bound. bf16 (AMX) speeds the dense convolutions of the head up, which is why torch bf16 "
                   "catches up with onnxruntime fp32 but does not approach the bf16 matmul limit.")
    if nv:
        res = {(r.get("approach"), r.get("scale")): r for r in nv["results"] if "error" not in r}
        cmp = [f"{sc}x: time x{res[('engine', sc)]['wall_s'] / res[('naive-tiles', sc)]['wall_s']:.2f}, peak RSS "
               f"x{res[('engine', sc)]['child_peak_rss_mib'] / res[('naive-tiles', sc)]['child_peak_rss_mib']:.2f}"
               for sc in sorted({k[1] for k in res}) if ("engine", sc) in res and ("naive-tiles", sc) in res]
        if cmp:
            out.append("4. **Engine vs naive tiling, same tiles and model** (engine / naive-tiles): "
                       + "; ".join(cmp) + ". Where the engine is slower, it pays for tiles recomputed in block "
                       "halos, the GeoTIFF overviews, colour table and QML it writes, and its reader/writer threads "
                       "competing for 2 busy cores. In exchange its memory stays bounded while naive tiling holds "
                       "the whole raster and a K x H x W float32 accumulator (and fails outright at 16x).")
    out.append("5. **Post-processing** has no per-pixel Python loops: blending is one numpy slice-add per tile, the "
               "class map one `argmax` per block, polygon NMS one vectorised shapely call per kept object (mask "
               "overlaps counted on pixels), rotated NMS vectorised over overlapping pairs.")
    return out + [""]


def json_section(path: Path) -> list[str]:
    """A table of a JSON result file written by another engineer's benchmark (``{meta, results: [{...}]}``)."""
    from common import md_table

    try:
        data = json.loads(path.read_text())
    except ValueError:
        return [f"- `docs/bench/{path.name}`: not valid JSON.\n"]
    lines = [f"### From docs/bench/{path.name}\n"]
    meta = data.get("meta") if isinstance(data, dict) else None
    if isinstance(meta, dict):
        lines.append("Conditions: " + ", ".join(f"{k} {v}" for k, v in meta.items()) + ".\n")
    results = data.get("results") if isinstance(data, dict) else None
    if isinstance(results, list) and results and all(isinstance(r, dict) for r in results):
        keys = list(dict.fromkeys(k for r in results for k in r if not isinstance(r[k], (dict, list))))
        lines.append(md_table(keys, [[r.get(k, "") for k in keys] for r in results]) + "\n")
    lines.append(f"Raw numbers: [`docs/bench/{path.name}`](bench/{path.name}).\n")
    return lines


def assemble(quick: bool, timings: list[str]) -> Path:
    parts = ["# RSFM benchmarks\n",
             "Generated by `make bench` (`.venv/bin/python benchmarks/run_all.py"
             + (" --quick" if quick else "") + "`); "
             f"assembled {machine_line()}. Every section gives the exact command that produced its figures; "
             "the machine is a small VM shared with other work (see the load average next to each figure), so "
             "compare ratios measured in the same run rather than absolute times across sections. The VM's CPU "
             "can change between sessions (an Intel Xeon with AMX until 2026-11-23, an AMD EPYC without AMX on "
             "2026-12-06): each section names the CPU it ran on, and ratios are only compared within one run.\n",
             "## Targets (issue \"Performance\")\n",
             "| target | measured | verdict | conditions |", "|---|---|---|---|", *summary(), ""]
    for name in ("throughput", "runtimes", "runtimes_passive", "naive"):
        p = BENCH / f"{name}.md"
        if p.is_file():
            text = p.read_text(encoding="utf-8")
            if name == "runtimes_passive":
                text = text.replace("## onnxruntime vs torch eager (CPU)",
                                    "## onnxruntime vs torch eager (CPU), OMP_WAIT_POLICY=PASSIVE", 1)
            parts.append(text)
    parts += findings()
    parts.append("## Sections by the other engineers\n")
    for name in EMBED:
        p = BENCH / name
        if p.is_file():
            body = p.read_text(encoding="utf-8")
            # demote their headings by one level so they nest under this section
            body = "\n".join("#" + ln if ln.startswith("#") else ln for ln in body.splitlines())
            parts.append(f"<!-- embedded from docs/bench/{name} -->\n{body}\n")
        else:
            parts.append(f"- `docs/bench/{name}`: not written yet.\n")
    for name in ("training.json", "chat.json"):
        if (BENCH / name).is_file() and not (BENCH / name.replace(".json", ".md")).is_file():
            parts += json_section(BENCH / name)
    if timings:
        parts += ["\n## This run\n", *timings]
    out = ROOT / "docs" / "BENCHMARKS.md"
    out.write_text("\n".join(parts).rstrip() + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small rasters and few rounds (~3 min)")
    p.add_argument("--only", nargs="*", choices=[n[0] for n in OURS], help="run only these of our benchmarks")
    p.add_argument("--others", choices=["embed", "run"], default="embed",
                   help="embed the other engineers' existing sections (default) or re-run their scripts first")
    p.add_argument("--assemble-only", action="store_true", help="only rebuild docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    timings, failed = [], []
    if not args.assemble_only:
        for name, script, env, full, quick in OURS:
            if args.only and name not in args.only:
                continue
            a = (quick if args.quick else full) + ["--out", f"docs/bench/{name}.md"]
            rc, secs = run(env, script, a)
            timings.append(f"- `{shell_line(env, script, a)}`: exit {rc}, {secs:.0f} s")
            if rc:
                failed.append(name)
        if args.others == "run":
            for script, env, a in OTHERS:
                rc, secs = run(env, script, a)
                timings.append(f"- `{shell_line(env, script, a)}`: exit {rc}, {secs:.0f} s")
                if rc:
                    failed.append(script)
    out = assemble(args.quick, timings)
    print(f"\nwrote {out.relative_to(ROOT)}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
