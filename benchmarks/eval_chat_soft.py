"""Checks around ablation D5, visual soft tokens for the chat head (docs/results/chat_soft_tokens.md).

``benchmarks/eval_chat.py --lm builtin-torch soft:<dir>`` gives the D4 / D5 rows. This script adds the checks
that tell whether the soft tokens carry the image:

* ``control``: the shuffled-image control. It uses the same items and GT fact sheets as ``eval_chat.py``
  (images 461-520, the first 20 with the LM) and the same projector. Every image gets the soft tokens of the
  next of the 20 LM images (cyclic). The answers are scored with ``eval_chat.score``, and the raw answers are
  compared with D5's true-image answers from the shared LM cache (exact McNemar, identical answers);
* ``latency``: the extra prefill time of the soft tokens. It uses images 461-468, the free-form "Describe this
  image." prompt with the GT fact sheet, and plain and soft prompts alternated, ``max_tokens=1``;
* ``probe``: do the pooled encoder features carry the labels? A logistic probe on the global token predicts
  per-class presence (5-fold cross-validation over images 1-440, which holds no evaluation image; mean
  per-class ROC AUC). It reads the feature cache that ``rsfm-train chat-projector`` writes;
* ``vision``: image-only questions, the direct test. The training's caption-group questions (counts of the
  present classes and of 2 absent ones, presence; no fact sheet) on the 20 LM images, answered with the true
  image's tokens, with the next image's tokens and with no tokens (same LM), against the constant answer;
* ``paired``: paired tests read from the LM cache alone (no LM run). These are refusals of the unanswerable
  items, D4 vs D5, raw and verified; D5's answer modes (``free`` / ``fallback``); and D5's verified answers to
  the unanswerable and describe items.

``control``, ``vision`` and ``latency`` need the torch engine (``RSFM_CHAT_ENGINE=torch``) and a trained projector folder.
The NWPU VHR-10 folder defaults to ``$RSFM_DATA/nwpu_vhr10`` (``RSFM_DATA`` as in ``benchmarks/common.py``).

Usage (the commands of docs/results/chat_soft_tokens.md; ``--out`` overwrites the committed copies)::

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 RSFM_CHAT_ENGINE=torch nice -n 10 .venv/bin/python \\
        benchmarks/eval_chat_soft.py control --projector /tmp/chat_soft/projector \\
        --lm-cache /tmp/chat_eval/lm_cache.jsonl --out docs/results/chat_soft/d5_shuffled_control.json
    OMP_WAIT_POLICY=PASSIVE RSFM_CHAT_ENGINE=torch nice -n 10 .venv/bin/python benchmarks/eval_chat_soft.py \\
        latency --projector /tmp/chat_soft/projector --out docs/results/chat_soft/d5_latency.json
    .venv/bin/python benchmarks/eval_chat_soft.py probe \\
        --features /tmp/chat_soft/features_rsfm-detection-nwpu-efflite0_g4_m1024.safetensors
    RSFM_CHAT_ENGINE=torch .venv/bin/python benchmarks/eval_chat_soft.py vision --projector /tmp/chat_lora/projector \
        --out docs/results/chat_soft/lora/vision.json
    .venv/bin/python benchmarks/eval_chat_soft.py paired --lm-cache /tmp/chat_eval/lm_cache.jsonl

Without ``--out``, control and latency write under /tmp/chat_eval/; probe and paired only print.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # eval_chat and common are sibling scripts, not a package

from common import DATA  # noqa: E402
from eval_chat import (  # noqa: E402
    REFUSAL,
    build_items,
    correct_by_item,
    load_cache,
    mcnemar_exact,
    reverify,
    score,
)

DEFAULT_DATA = DATA / "nwpu_vhr10"
DEFAULT_PROJECTOR = Path("/tmp/chat_soft/projector")
DEFAULT_FEATURES = Path("/tmp/chat_soft/features_rsfm-detection-nwpu-efflite0_g4_m1024.safetensors")
DEFAULT_LM_CACHE = Path("/tmp/chat_eval/lm_cache.jsonl")
# LM labels of the D4 / D5 answers in the cache: eval_chat.py's default labels of the specs builtin-torch and
# soft:<dir> for a folder named "projector"
REF_LABEL = "builtin-torch"
SOFT_LABEL = "soft-projector"
# Probe protocol: training images of the projector only (461-520 are the chat evaluation's)
PROBE_IMAGES = range(1, 441)
PROBE_FOLDS = 5
PROBE_STEPS = 200


# ------------------------------------------------------------------------------------------- items

@dataclass
class EvalSet:
    """The chat evaluation's items (same construction as ``eval_chat.py``) and its LM subset."""

    ann: dict
    classes: list[str]
    files: dict[int, Path]
    items: list[dict]
    lm_ids: list[int]  # the images also run with the LM, in order
    sub: list[int]  # indices of the items on those images


def eval_set(data: Path, first: int, last: int, lm_images: int) -> EvalSet:
    ann = json.loads((data / "annotations.json").read_text())
    classes = [c["name"] for c in ann["categories"]]
    by_name = {im["file_name"]: im["id"] for im in ann["images"]}
    ids = [by_name[f"{n:03d}.jpg"] for n in range(first, last + 1) if f"{n:03d}.jpg" in by_name]
    files = {im["id"]: data / "images" / im["file_name"] for im in ann["images"]}
    items = build_items(ann, ids)
    lm_ids = ids[:lm_images]
    lm_set = set(lm_ids)
    sub = [i for i, it in enumerate(items) if it["image_id"] in lm_set]
    return EvalSet(ann, classes, files, items, lm_ids, sub)


def gt_sheet(ann: dict, classes: list[str], image: Path, image_id: int) -> Any:
    """The GT fact sheet of one image, built as ``eval_chat.py --facts gt`` does."""
    from backend.chat.facts import build_fact_sheet, read_coco_objects

    return build_fact_sheet(str(image), objects=read_coco_objects(ann, image_id), object_classes=classes,
                            score_threshold=0.0)


def cached(cache: dict, label: str, i: int) -> dict[str, Any]:
    """One free-form GT-facts answer of LM ``label`` from the cache (what ``eval_chat._ans`` stored)."""
    key = ("gt", f"free@{label}", i)
    if key not in cache:
        raise KeyError(f"no cached answer {key}; run benchmarks/eval_chat.py with --lm-systems free and this "
                       f"LM label on the same items and --lm-cache first")
    return json.loads(cache[key])


def emit(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)


# ------------------------------------------------------------------------------------- subcommands

def run_control(args: argparse.Namespace) -> None:
    from backend.chat.router import answer_question
    from backend.chat.visual import load_soft_backend

    ev = eval_set(Path(args.data), args.first, args.last, args.lm_images)
    items, lm_ids = ev.items, ev.lm_ids
    nxt = {a: lm_ids[(k + 1) % len(lm_ids)] for k, a in enumerate(lm_ids)}  # the wrong image, cyclic
    sheets = {iid: gt_sheet(ev.ann, ev.classes, ev.files[iid], iid) for iid in lm_ids}
    factory = load_soft_backend(args.projector)
    raw: dict[int, str] = {}
    verified: dict[int, str] = {}
    t0 = time.perf_counter()
    for k, i in enumerate(ev.sub):
        it = items[i]
        # the true image's fact sheet, but the next image's soft tokens
        wrong = factory.for_image(ev.files[nxt[it["image_id"]]])
        a = answer_question(it["q"], sheets[it["image_id"]], backend=wrong, mode="free",
                            max_tokens=args.max_tokens)
        raw[i], verified[i] = a.raw_lm_text or "", a.text
        if k % 25 == 0:
            print(k, f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    cache = load_cache(Path(args.lm_cache))
    true_raw = {i: cached(cache, args.soft_label, i)["raw"] or "" for i in ev.sub}
    emit({"rows": [score(items, raw, sheets, "D5 shuffled image, raw"),
                   score(items, verified, sheets, "D5 shuffled image, verified"),
                   score(items, true_raw, sheets, "D5 true image, raw")],
          "mcnemar_raw_true_vs_shuffled": mcnemar_exact(correct_by_item(items, true_raw),
                                                        correct_by_item(items, raw)),
          "identical_raw_answers": sum(raw[i] == true_raw[i] for i in ev.sub), "items": len(ev.sub)},
         args.out)


def run_latency(args: argparse.Namespace) -> None:
    from backend.chat.router import SYSTEM_FREE
    from backend.chat.visual import load_soft_backend

    data = Path(args.data)
    ann = json.loads((data / "annotations.json").read_text())
    classes = [c["name"] for c in ann["categories"]]
    by_name = {im["file_name"]: im["id"] for im in ann["images"]}
    factory = load_soft_backend(args.projector)
    lm = factory.lm
    plain: list[float] = []
    soft: list[float] = []
    enc: list[float] = []
    ntok: list[float] = []
    for n in range(args.first, args.first + args.images):
        img = data / "images" / f"{n:03d}.jpg"
        sheet = gt_sheet(ann, classes, img, by_name[img.name])
        msgs = [{"role": "system", "content": SYSTEM_FREE.format(facts=sheet.to_prompt_text())},
                {"role": "user", "content": "Describe this image."}]
        t = time.perf_counter()
        be = factory.for_image(img)  # encoder + projector (a cache miss: first time this image is seen)
        enc.append(time.perf_counter() - t)
        for rep in range(args.reps):
            # alternate which prompt goes first so load drift hits both alike
            order = ((lm, plain), (be, soft)) if rep % 2 == 0 else ((be, soft), (lm, plain))
            for backend, out in order:
                backend.generate(msgs, max_tokens=1)
                out.append(lm.last_stats["prefill_s"])  # the soft backend runs on the same LM
        ntok.append(lm.last_stats["prompt_tokens"])
    emit({"images": args.images, "reps": args.reps, "prompt_tokens_median": statistics.median(ntok),
          "soft_tokens": int(be.tokens.shape[0]),
          "prefill_plain_median_s": statistics.median(plain),
          "prefill_soft_median_s": statistics.median(soft),
          "extra_prefill_median_s": statistics.median(s - p for s, p in zip(soft, plain, strict=True)),
          "encoder_plus_projector_median_s": statistics.median(enc), "encoder_per_image_s": factory.encode_s,
          "describe": factory.describe()}, args.out)


def roc_auc(s: Any, y: Any) -> float | None:
    """ROC AUC of scores ``s`` for binary labels ``y`` (ties count half); None without both classes."""
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    wins = (pos[:, None] > neg[None]).float().mean()
    ties = (pos[:, None] == neg[None]).float().mean()
    return (wins + 0.5 * ties).item()


def run_probe(args: argparse.Namespace) -> None:
    import torch
    from safetensors.torch import load_file

    feats = load_file(args.features)  # "NNN" -> pooled tokens of image NNN.jpg, the global token first
    ann = json.loads((Path(args.data) / "annotations.json").read_text())
    by_key = {im["file_name"][:3]: im["id"] for im in ann["images"]}
    cats = sorted(c["id"] for c in ann["categories"])
    present: dict[int, set[int]] = {}
    for a in ann["annotations"]:
        present.setdefault(a["image_id"], set()).add(a["category_id"])
    keys = [f"{n:03d}" for n in PROBE_IMAGES]
    x = torch.stack([feats[k][0] for k in keys])
    y = torch.tensor([[float(c in present.get(by_key[k], ())) for c in cats] for k in keys])
    perm = torch.randperm(len(keys), generator=torch.Generator().manual_seed(0))
    folds = perm.chunk(PROBE_FOLDS)
    scores = torch.zeros_like(y)
    for k in range(PROBE_FOLDS):
        te = folds[k]
        tr = torch.cat([folds[j] for j in range(PROBE_FOLDS) if j != k])
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6  # standardise on the training folds only
        x_tr, x_te = (x[tr] - mu) / sd, (x[te] - mu) / sd
        w = torch.zeros(x.shape[1], len(cats), requires_grad=True)
        b = torch.zeros(len(cats), requires_grad=True)
        opt = torch.optim.AdamW([w, b], lr=1e-3, weight_decay=0.1)
        for _ in range(PROBE_STEPS):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x_tr @ w + b, y[tr])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            scores[te] = x_te @ w + b
    aucs = [roc_auc(scores[:, c], y[:, c]) for c in range(len(cats))]
    valid = [a for a in aucs if a is not None]
    emit({"probe": f"global token, logistic, {PROBE_FOLDS}-fold CV on images "
                   f"{PROBE_IMAGES.start}-{PROBE_IMAGES.stop - 1}",
          "mean_auc": sum(valid) / len(valid),
          "per_class_auc": [round(a, 3) if a is not None else None for a in aucs],
          "presence_acc": ((scores > 0) == y.bool()).float().mean().item(),
          "always_absent_acc": (y == 0).float().mean().item()}, args.out)


def parse_count(text: str) -> int | None:
    """``There are 3 ships.`` → 3, ``There are no ships.`` / ``No.`` → 0, a number word → its value; None
    when the answer states no count."""
    import re

    from backend.chat.facts import WORD_NUMBERS

    m = re.search(r"\b(\d+|no|none|zero|" + "|".join(WORD_NUMBERS) + r")\b", text.lower())
    if m is None:
        return None
    w = m.group(1)
    return int(w) if w.isdigit() else 0 if w in ("no", "none", "zero") else WORD_NUMBERS[w]


def run_vision(args: argparse.Namespace) -> None:
    """Image-only questions (the training's caption group, no fact sheet) on held-out evaluation images: the
    true image's soft tokens against another image's tokens and against no tokens at all (the same LM)."""
    import random

    from backend.chat.facts import coco_class_counts
    from backend.chat.visual import load_soft_backend
    from training.chat_projector import render_instructions

    ev = eval_set(Path(args.data), args.first, args.last, args.lm_images)
    counts = coco_class_counts(ev.ann)
    rng = random.Random(args.seed)  # noqa: S311  # nosec B311 (question sampling)
    items = []  # (image id, question, answer kind, truth)
    for iid in ev.lm_ids:
        for smp in render_instructions(str(iid), counts.get(iid, {}), ev.classes, None, rng):
            q, t = smp.messages[0]["content"], smp.target
            kind = "presence" if t in ("Yes.", "No.") else "describe" if t.startswith("The image shows") else "count"
            if kind != "describe":  # counts and presence have one right answer; describe is free text
                items.append((iid, q, kind, t == "Yes." if kind == "presence" else parse_count(t)))
    factory = load_soft_backend(args.projector)
    nxt = {a: ev.lm_ids[(k + 1) % len(ev.lm_ids)] for k, a in enumerate(ev.lm_ids)}
    conditions = {"true image": lambda iid: factory.for_image(ev.files[iid]),
                  "another image": lambda iid: factory.for_image(ev.files[nxt[iid]]),
                  "no image": lambda iid: factory.lm}
    answers: dict[str, list[str]] = {}
    right: dict[str, dict[int, bool]] = {}
    rows = []
    t0 = time.perf_counter()
    for name, backend_of in conditions.items():
        answers[name], right[name] = [], {}
        errs = []
        for k, (iid, q, kind, truth) in enumerate(items):
            a = backend_of(iid).generate([{"role": "user", "content": q}], max_tokens=args.max_tokens).strip()
            answers[name].append(a)
            if kind == "presence":
                low = a.lower()
                got = True if low.startswith("yes") else False if low.startswith("no") else None
                right[name][k] = got is not None and got == truth
            else:
                n = parse_count(a)
                right[name][k] = n == truth
                errs.append(abs(n - truth) if n is not None else None)
        for kind in ("count", "presence"):
            idx = [k for k, it in enumerate(items) if it[2] == kind]
            rows.append({"condition": name, "type": kind, "items": len(idx),
                         "accuracy": sum(right[name][k] for k in idx) / len(idx)})
        parsed = [e for e in errs if e is not None]
        rows[-2]["mae_parsed"] = sum(parsed) / len(parsed) if parsed else None
        rows[-2]["unparsed"] = len(errs) - len(parsed)
        print(name, f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    majority = {}
    for kind in ("count", "presence"):  # the constant answer that is most often right on these items
        truths = [it[3] for it in items if it[2] == kind]
        best = max(set(truths), key=truths.count)
        majority[kind] = {"answer": best, "accuracy": truths.count(best) / len(truths)}
    emit({"protocol": f"images {args.first}-{args.last}, first {args.lm_images}; caption-group questions "
                      f"(render_instructions, seed {args.seed}), no fact sheet, greedy, max_tokens {args.max_tokens}",
          "projector": args.projector, "describe": factory.describe(), "rows": rows, "majority_constant": majority,
          "mcnemar_true_vs_another": mcnemar_exact(right["true image"], right["another image"]),
          "mcnemar_true_vs_none": mcnemar_exact(right["true image"], right["no image"]),
          "examples": [{"q": it[1], "truth": it[3], **{c: answers[c][k] for c in conditions}}
                       for k, it in enumerate(items[:12])]}, args.out)


def run_paired(args: argparse.Namespace) -> None:
    ev = eval_set(Path(args.data), args.first, args.last, args.lm_images)
    items, sub = ev.items, ev.sub
    cache = load_cache(Path(args.lm_cache))
    # verified text re-derived from the cached raw text by today's router and verifier, as eval_chat scores it
    sheets = {iid: gt_sheet(ev.ann, ev.classes, ev.files[iid], iid) for iid in ev.lm_ids}

    def replayed(label: str, i: int) -> dict[str, Any]:
        return reverify(json.dumps(cached(cache, label, i)), items[i]["q"], sheets[items[i]["image_id"]], "free")

    ref = {i: replayed(args.ref_label, i) for i in sub}
    soft = {i: replayed(args.soft_label, i) for i in sub}
    unans = [i for i in sub if items[i]["type"] == "unanswerable"]
    out: dict[str, Any] = {}
    for kind in ("raw", "text"):  # raw LM output, and the verified answer the user gets
        out[f"refusal_{kind}"] = mcnemar_exact({i: bool(REFUSAL.search(ref[i][kind] or "")) for i in unans},
                                               {i: bool(REFUSAL.search(soft[i][kind] or "")) for i in unans})
    modes = [soft[i]["mode"] for i in sub]
    out["soft_modes"] = {m: modes.count(m) for m in sorted(set(modes))}
    out["soft_unanswerable_verified"] = [(items[i]["q"], soft[i]["text"]) for i in unans]
    out["soft_describe_verified"] = [(items[i]["gt"], soft[i]["text"]) for i in sub
                                     if items[i]["type"] == "describe"][:8]
    emit(out, args.out)


# -------------------------------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str, out_default: str | None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=summary,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--data", default=str(DEFAULT_DATA),
                       help="NWPU VHR-10 folder (annotations.json, images/); $RSFM_DATA/nwpu_vhr10")
        p.add_argument("--out", default=out_default,
                       help="JSON result file; the result is printed in any case (None: print only)")
        return p

    def items_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--first", type=int, default=461, help="first evaluation image (as eval_chat.py)")
        p.add_argument("--last", type=int, default=520, help="last evaluation image")
        p.add_argument("--lm-images", type=int, default=20, help="images (from the start) run with the LM")
        p.add_argument("--lm-cache", default=str(DEFAULT_LM_CACHE), help="eval_chat.py's JSON-lines LM cache")
        p.add_argument("--soft-label", default=SOFT_LABEL, help="LM label of the D5 (soft tokens) answers")

    p = command("control", "shuffled-image control: each image gets the next image's soft tokens",
                "/tmp/chat_eval/d5_shuffled_control.json")
    items_args(p)
    p.add_argument("--projector", default=str(DEFAULT_PROJECTOR), help="trained projector folder")
    p.add_argument("--max-tokens", type=int, default=48, help="LM answer length (as the D5 run)")
    p.set_defaults(func=run_control)

    p = command("latency", "extra prefill time of the soft tokens (plain vs soft prompt, max_tokens=1)",
                "/tmp/chat_eval/d5_latency.json")
    p.add_argument("--projector", default=str(DEFAULT_PROJECTOR), help="trained projector folder")
    p.add_argument("--first", type=int, default=461, help="first image number")
    p.add_argument("--images", type=int, default=8, help="consecutive images from --first")
    p.add_argument("--reps", type=int, default=3, help="prefills per prompt kind and image, alternated")
    p.set_defaults(func=run_latency)

    p = command("probe", "logistic presence probe on the cached global-token features", None)
    p.add_argument("--features", default=str(DEFAULT_FEATURES),
                   help="feature cache written by rsfm-train chat-projector (--cache-dir)")
    p.set_defaults(func=run_probe)

    p = command("vision", "image-only questions (no facts): true image vs another image's tokens vs none",
                "/tmp/chat_eval/d5_vision.json")
    items_args(p)
    p.add_argument("--projector", default=str(DEFAULT_PROJECTOR), help="trained projector folder")
    p.add_argument("--max-tokens", type=int, default=16, help="answer length (the answers are one sentence)")
    p.add_argument("--seed", type=int, default=0, help="question sampling")
    p.set_defaults(func=run_vision)

    p = command("paired", "D4 vs D5 refusal tests, D5 answer modes and examples, from the LM cache", None)
    items_args(p)
    p.add_argument("--ref-label", default=REF_LABEL, help="LM label of the D4 (facts only) answers")
    p.set_defaults(func=run_paired)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
