#!/usr/bin/env python
"""Aggregate the reproduction grid (``runs/repro/<cell>/{cell.json,test.json}``) into a Markdown report.

Per (init, label fraction): the mean of each test metric over seeds with a two-sided 95 % Student-t
confidence interval (``mean +- t_{0.975, n-1} * sd / sqrt(n)``, ``sd`` with ``n - 1``); per fraction: the
paired difference IMP+MTP minus IMP, paired by seed (only seeds that have both cells), with the same interval
on the per-seed differences. With ``n = 1`` no interval exists and ``n/a`` is written.

Usage::

    .venv/bin/python scripts/reproduction/aggregate.py --root runs/repro --out docs/results/reproduction.md
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
from collections import defaultdict
from pathlib import Path

from scipy import stats

#: test metrics reported per task (keys of ``rsfm-train evaluate``'s JSON), first = primary.
TASK_METRICS = {"scene_classification": ("OA", "mAcc"), "semantic_segmentation": ("mIoU", "mF1", "OA"),
                "change_detection": ("F1", "IoU"), "object_detection": ("mAP", "AP50"),
                "rotated_detection": ("mAP", "AP50"), "instance_segmentation": ("mAP", "AP50")}
BASELINE, TREATMENT = "imp", "imp+mtp"


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, int]:
    """``(mean, half-width, n)`` of a two-sided Student-t interval; half-width is NaN when ``n < 2``."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan, n
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean, half, n


def load_cells(root: Path) -> list[dict]:
    """Every finished cell under ``root``: its ``cell.json`` record with ``metrics`` (the ``test.json``)."""
    cells = []
    for test in sorted(root.glob("*/test.json")):
        meta_path = test.parent / "cell.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} is missing next to {test}; rerun that cell (delete its folder)")
        rec = json.loads(meta_path.read_text())
        rec["metrics"] = json.loads(test.read_text())
        rec["cell"] = test.parent.name
        cells.append(rec)
    return cells


def summarise(cells: list[dict], metric: str) -> dict[tuple[str, str, float], tuple[float, float, int]]:
    """``{(task, init, fraction): (mean, half-width, n)}`` of ``metric`` over seeds."""
    groups: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    for c in cells:
        if metric in c["metrics"]:
            groups[(c["task"], c["init"], float(c["fraction"]))].append(float(c["metrics"][metric]))
    return {k: t_interval(v) for k, v in sorted(groups.items())}


def paired_differences(cells: list[dict], metric: str, treatment: str = TREATMENT,
                       baseline: str = BASELINE) -> dict[tuple[str, float], tuple[float, float, int, list[int]]]:
    """``{(task, fraction): (mean diff, half-width, n, seeds)}`` of treatment minus baseline, paired by seed."""
    by_key: dict[tuple[str, float], dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for c in cells:
        if metric in c["metrics"]:
            seed = int(c["seed"])
            slot = by_key[(c["task"], float(c["fraction"]))][c["init"]]
            if seed in slot:
                raise ValueError(f"two cells for {c['task']} {c['init']} fraction {c['fraction']} seed {seed}")
            slot[seed] = float(c["metrics"][metric])
    out = {}
    for key, inits in sorted(by_key.items()):
        seeds = sorted(set(inits.get(treatment, {})) & set(inits.get(baseline, {})))
        if seeds:
            diffs = [inits[treatment][s] - inits[baseline][s] for s in seeds]
            mean, half, n = t_interval(diffs)
            out[key] = (mean, half, n, seeds)
    return out


def _pct(mean: float, half: float) -> str:
    ci = "n/a" if math.isnan(half) else f"{100 * (mean - half):.1f} to {100 * (mean + half):.1f}"
    return f"{100 * mean:.1f} ({ci})"


def _signed(mean: float, half: float) -> str:
    ci = "n/a" if math.isnan(half) else f"{100 * (mean - half):+.1f} to {100 * (mean + half):+.1f}"
    return f"{100 * mean:+.1f} ({ci})"


def render(cells: list[dict], notes: str = "", grid_argvs: list[list[str]] | None = None,
           title: str = "Reproduction experiment: IMP vs IMP+MTP at 1 / 10 / 100 % labels") -> str:
    """The Markdown report (tables + commands); ``notes`` is inserted verbatim after the tables,
    ``grid_argvs`` (from the ``grid*.json`` launch records) are shown as the commands that ran the grid."""
    if not cells:
        raise ValueError("no finished cells (no */test.json); run scripts/reproduction/run_grid.py first")
    lines = [f"# {title}", ""]
    for task in sorted({c["task"] for c in cells}):
        tc = [c for c in cells if c["task"] == task]
        metrics = [m for m in TASK_METRICS.get(task, ()) if any(m in c["metrics"] for c in tc)]
        seeds = sorted({int(c["seed"]) for c in tc})
        lines += [f"## {task}", "",
                  f"Test-split metrics of the last checkpoint, in %: mean over seeds with the 95 % Student-t "
                  f"interval in brackets (n = seeds; seeds present: {', '.join(map(str, seeds))}).", ""]
        summaries = {m: summarise(tc, m) for m in metrics}
        header = "| init | label fraction | n | " + " | ".join(f"{m} (95 % CI)" for m in metrics) + " |"
        lines += [header, "|" + "---|" * (3 + len(metrics))]
        for key in sorted(summaries[metrics[0]], key=lambda k: (k[2], k[1])):
            _, init, frac = key
            n = summaries[metrics[0]][key][2]
            vals = " | ".join(_pct(*summaries[m][key][:2]) if key in summaries[m] else "-" for m in metrics)
            lines.append(f"| {init} | {frac:g} | {n} | {vals} |")
        for treatment, baseline in mtp_pairs({c["init"] for c in tc}):
            lines += ["", f"Paired difference {treatment} minus {baseline} (same seed = same label subset and data "
                          "order), percentage points, 95 % t-interval over the per-seed differences:", "",
                      "| label fraction | n pairs | " + " | ".join(f"Δ {m} (95 % CI)" for m in metrics) + " |",
                      "|" + "---|" * (2 + len(metrics))]
            diffs = {m: paired_differences(tc, m, treatment, baseline) for m in metrics}
            for key in sorted(diffs[metrics[0]], key=lambda k: k[1]):
                n = diffs[metrics[0]][key][2]
                vals = " | ".join(_signed(*diffs[m][key][:2]) if key in diffs[m] else "-" for m in metrics)
                lines.append(f"| {key[1]:g} | {n} | {vals} |")
        lines.append("")
    if notes:
        lines += [notes.rstrip(), ""]
    lines += _commands_section(cells, grid_argvs)
    return "\n".join(lines) + "\n"


def launch_command(record: dict) -> list[str]:
    """A ``grid*.json`` launch record as the command line that ran it, with its ``OMP_NUM_THREADS`` (records
    written before the variable was recorded were all launched with 1)."""
    return [f"OMP_NUM_THREADS={record.get('omp_num_threads') or 1}", *record["argv"]]


def mtp_pairs(inits: set[str]) -> list[tuple[str, str]]:
    """``(treatment, baseline)`` pairs present in ``inits``: every ``X+mtp`` with its ``X`` (imp, random)."""
    return [(i, i.removesuffix("+mtp")) for i in sorted(inits) if i.endswith("+mtp") and i.removesuffix("+mtp") in inits]


def _commands_section(cells: list[dict], grid_argvs: list[list[str]] | None = None) -> list[str]:
    train_cpu = sum(c.get("train_cpu_s", 0.0) for c in cells)
    eval_cpu = sum(c.get("eval_cpu_s", 0.0) for c in cells)
    wall = sum(c.get("train_wall_s", 0.0) + c.get("eval_wall_s", 0.0) for c in cells)
    lines = ["## Cost and exact commands", "",
             f"{len(cells)} cells; CPU time {train_cpu / 60:.1f} min training + {eval_cpu / 60:.1f} min test "
             f"evaluation (user + system of the child processes; {train_cpu / len(cells):.0f} s + "
             f"{eval_cpu / len(cells):.0f} s per cell), {wall / 60:.1f} min wall in all.", ""]
    if grid_argvs:
        lines += [f"The grid, as launched (from the repository root, in the background"
                  f"{', the launches side by side' if len(grid_argvs) > 1 else ''}):", "", "```",
                  *(shlex.join(a) for a in grid_argvs), "```", ""]
    for task in sorted({c["task"] for c in cells}):
        tc = [c for c in cells if c["task"] == task]
        pairs = mtp_pairs({c["init"] for c in tc}) or [(TREATMENT, BASELINE)]
        ex = next((c for c in tc if c["init"] == pairs[0][1]), tc[0])
        lines += [f"One cell ({ex['cell']}), as run by the grid:", "", "```",
                  shlex.join(ex["finetune_argv"]), shlex.join(ex["evaluate_argv"]), "```", ""]
        mtp = next((c for c in tc if c["init"] == pairs[0][0]), None)
        if mtp is not None and mtp is not ex:
            lines += [f"An {pairs[0][0]} cell ({mtp['cell']}) differs only in `--backbone-weights` (and `--out`):",
                      "", "```", shlex.join(mtp["finetune_argv"]), "```", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", action="append", default=None,
                   help="grid output folder (one sub-folder per cell); repeat to put several grids on one page "
                        "(default: runs/repro)")
    p.add_argument("--out", default=None, help="write the Markdown here (default: print)")
    p.add_argument("--notes", default=None, help="Markdown file whose text goes after the tables")
    p.add_argument("--title", default=None, help="the page's title (default: the first instance's)")
    args = p.parse_args(argv)
    notes = Path(args.notes).read_text() if args.notes else ""
    roots = [Path(r) for r in args.root or ["runs/repro"]]
    # grid.json: a root written before launches were recorded one file each
    grid_argvs = [launch_command(json.loads(f.read_text())) for r in roots for f in sorted(r.glob("grid*.json"))]
    cells = [c for r in roots for c in load_cells(r)]
    text = render(cells, notes, grid_argvs, **({"title": args.title} if args.title else {}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
