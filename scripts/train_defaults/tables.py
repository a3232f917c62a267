"""Markdown tables for docs/results from the runs' metric files (so the docs quote the files, not memory).

Usage: ``.venv/bin/python scripts/train_defaults/tables.py scene|change|rotated|instances RUN_DIR``
(reads ``RUN_DIR/test_metrics.json`` and ``RUN_DIR/log.jsonl``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def epochs_table(run: Path, key: str) -> list[str]:
    """Per-validation rows of ``log.jsonl`` (those with a ``val_<key>`` field)."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if f"val_{key}" in r]
    cols = [c for c in dict.fromkeys(("epoch", "step", "train_loss", f"val_{key}", "val_OA", "val_AP50", "epoch_img_per_s",
                                      "elapsed_min")) if any(c in r for r in rows)]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return out


def scene(m: dict) -> list[str]:
    out = [f"OA {pct(m['OA'])} %, mean per-class accuracy {pct(m['mAcc'])} % ({m['images']} images)", "",
           "| class | accuracy | test images | most confused with |", "|---|---|---|---|"]
    names = list(m["per_class"])
    cm = m["confusion_matrix"]
    for i, (n, v) in enumerate(m["per_class"].items()):
        off = [(c, j) for j, c in enumerate(cm[i]) if j != i and c > 0]
        off.sort(reverse=True)
        conf = ", ".join(f"{names[j]} ({c})" for c, j in off[:2]) or "-"
        out.append(f"| {n} | {pct(v['accuracy'])} | {v['support']} | {conf} |")
    return out


def detection(m: dict, kinds: list[str]) -> list[str]:
    out = ["| geometry | mAP@[.5:.95] | AP50 | AP75 |", "|---|---|---|---|"]
    for k in kinds:
        out.append(f"| {k} | {pct(m[f'{k}_mAP'])} | {pct(m[f'{k}_AP50'])} | {pct(m[f'{k}_AP75'])} |")
    if "dota_mAP50" in m:
        out += ["", f"DOTA-style VOC07 (11-point) mAP@0.5 (rotated IoU): **{pct(m['dota_mAP50'])}**"]
    head = " | ".join(f"{k} COCO AP | {k} AP50" for k in kinds)
    out += ["", f"| class | {head} | test instances |", "|---|" + "---|---|" * len(kinds) + "---|"]
    for n, cnt in m["class_counts"].items():
        cells = " | ".join(f"{pct(m[f'{k}_per_class_AP'][n])} | {pct(m[f'{k}_per_class_AP50'][n])}" for k in kinds)
        out.append(f"| {n} | {cells} | {cnt} |")
    return out


def main(argv: list[str]) -> int:
    kind, run = argv[0], Path(argv[1])
    m = json.loads((run / "test_metrics.json").read_text())
    if kind == "scene":
        lines = scene(m) + ["", *epochs_table(run, "OA")]
    elif kind == "change":
        lines = ["| F1 | IoU | precision | recall | OA |", "|---|---|---|---|---|",
                 f"| {pct(m['F1'])} | {pct(m['IoU'])} | {pct(m['precision'])} | {pct(m['recall'])} | {pct(m['OA'])} |",
                 "", *epochs_table(run, "F1")]
    elif kind == "rotated":
        lines = detection(m, ["rbox"])
    else:
        lines = detection(m, ["segm", "bbox"] if kind == "instances" else ["bbox"])
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
