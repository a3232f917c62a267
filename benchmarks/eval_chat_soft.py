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
  present classes and of 2 absent ones, presence; no fact sheet) and grounding-group questions ("Where are the
  ships?", boxes in the text, matched to the labelled boxes at IoU 0.5) on the 20 LM images, answered with the
  true image's tokens, with the next image's tokens and with no tokens (same LM), against the constant answer;
* ``scene``: the same three conditions on AID scene questions (the scene group's: "What kind of scene is
  this?", yes/no for the true class and another), on AID test-split images, which no run trains on;
* ``paired``: paired tests read from the LM cache alone (no LM run). These are refusals of the unanswerable
  items, D4 vs D5, raw and verified; D5's answer modes (``free`` / ``fallback``); and D5's verified answers to
  the unanswerable and describe items.

``control``, ``vision``, ``scene`` and ``latency`` need the torch engine (``RSFM_CHAT_ENGINE=torch``) and a trained projector folder.
The NWPU VHR-10 folder defaults to ``$RSFM_DATA/nwpu_vhr10`` (``RSFM_DATA`` as in ``benchmarks/common.py``).

Usage (the commands of docs/results/chat_soft_tokens.md; ``--out`` overwrites the committed copies)::

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 RSFM_CHAT_ENGINE=torch nice -n 10 .venv/bin/python \\
        benchmarks/eval_chat_soft.py control --projector /tmp/chat_soft/projector \\
        --lm-cache /tmp/chat_eval/lm_cache.jsonl --out docs/results/chat_soft/d5_shuffled_control.json
    OMP_WAIT_POLICY=PASSIVE RSFM_CHAT_ENGINE=torch nice -n 10 .venv/bin/python benchmarks/eval_chat_soft.py \\
        latency --projector /tmp/chat_soft/projector --out docs/results/chat_soft/d5_latency.json
    .venv/bin/python benchmarks/eval_chat_soft.py probe \\
        --features /tmp/chat_soft/features_rsfm-detection-nwpu-efflite0_g4_m1024.safetensors
    RSFM_CHAT_ENGINE=torch .venv/bin/python benchmarks/eval_chat_soft.py vision --projector /tmp/chat_all/projector \
        --out docs/results/chat_soft/all_groups/vision.json
    RSFM_CHAT_ENGINE=torch .venv/bin/python benchmarks/eval_chat_soft.py scene --projector /tmp/chat_all/projector \
        --out docs/results/chat_soft/all_groups/scene.json
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


BOX = r"\[(\d+), (\d+), (\d+), (\d+)\]"


def parse_boxes(text: str) -> list[tuple[int, ...]]:
    """Every ``[x0, y0, x1, y1]`` of an answer (the grounding instructions' format)."""
    import re

    return [tuple(int(v) for v in m) for m in re.findall(BOX, text)]


def box_iou(a: tuple, b: tuple) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def grounding_score(pred: list[tuple], truth: list[tuple], iou: float = 0.5) -> dict[str, Any]:
    """One grounding answer against the labelled boxes (both in percent): greedy one-to-one matches at ``iou``
    (``tp``), and predicted boxes whose centre lies in a labelled box (``centre_hits``, the lenient measure).
    ``right``: the item is answered right (a class without boxes gets none; otherwise a box matches)."""
    free = list(truth)
    tp = 0
    for b in sorted(pred, key=lambda b: -max((box_iou(b, t) for t in truth), default=0.0)):
        best = max(free, key=lambda t: box_iou(b, t), default=None)
        if best is not None and box_iou(b, best) >= iou:
            tp += 1
            free.remove(best)
    hits = sum(any(t[0] <= (b[0] + b[2]) / 2 <= t[2] and t[1] <= (b[1] + b[3]) / 2 <= t[3] for t in truth)
               for b in pred)
    return {"pred": len(pred), "truth": len(truth), "tp": tp, "centre_hits": hits,
            "right": (not pred) if not truth else tp > 0}


def three_conditions(items: list[tuple[Any, str]], image_file: dict[Any, Path], order: list[Any], factory: Any,
                     max_tokens: int) -> dict[str, list[str]]:
    """Greedy answers to ``items`` (image key, question; no fact sheet) with the true image's soft tokens, with
    the next image's tokens (cyclic in ``order``) and with no tokens (the same, possibly adapted, LM)."""
    nxt = {a: order[(k + 1) % len(order)] for k, a in enumerate(order)}
    conditions = {"true image": lambda key: factory.for_image(image_file[key]),
                  "another image": lambda key: factory.for_image(image_file[nxt[key]]),
                  "no image": lambda key: factory.lm}
    answers: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    for name, backend_of in conditions.items():
        answers[name] = [backend_of(key).generate([{"role": "user", "content": q}], max_tokens=max_tokens).strip()
                         for key, q in items]
        print(name, f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return answers


def yes_no(text: str) -> bool | None:
    low = text.lower()
    return True if low.startswith("yes") else False if low.startswith("no") else None


def run_vision(args: argparse.Namespace) -> None:
    """Image-only questions (the training's caption and grounding groups, no fact sheet) on held-out evaluation
    images: the true image's soft tokens against another image's tokens and against no tokens (the same LM)."""
    import random

    from backend.chat.facts import coco_class_counts, read_coco_objects
    from backend.chat.visual import load_soft_backend
    from training.chat_projector import box_percent, render_grounding, render_instructions

    ev = eval_set(Path(args.data), args.first, args.last, args.lm_images)
    counts = coco_class_counts(ev.ann)
    meta = {im["id"]: im for im in ev.ann["images"]}
    rng = random.Random(args.seed)  # noqa: S311  # nosec B311 (question sampling)
    # the grounding questions draw from their own generator, so the count and presence items stay those of the
    # runs made before the grounding group existed
    grng = random.Random(args.seed + 1)  # noqa: S311  # nosec B311
    items = []  # (image id, question, answer kind, truth)
    for iid in ev.lm_ids:
        for smp in render_instructions(str(iid), counts.get(iid, {}), ev.classes, None, rng):
            q, t = smp.messages[0]["content"], smp.target
            kind = "presence" if t in ("Yes.", "No.") else "describe" if t.startswith("The image shows") else "count"
            if kind != "describe":  # counts and presence have one right answer; describe is free text
                items.append((iid, q, kind, t == "Yes." if kind == "presence" else parse_count(t)))
        size = (meta[iid]["width"], meta[iid]["height"])
        objects = [(o.cls, tuple(o.geometry.bounds)) for o in read_coco_objects(ev.ann, iid)]
        for smp in render_grounding(str(iid), objects, size, ev.classes, grng):
            truth = [box_percent(b, size) for c, b in objects if c == smp.about]  # every box, in percent
            items.append((iid, smp.messages[0]["content"], "grounding", truth))
    factory = load_soft_backend(args.projector)
    answers = three_conditions([(it[0], it[1]) for it in items], ev.files, ev.lm_ids, factory, args.max_tokens)
    right: dict[str, dict[int, bool]] = {}
    rows = []
    for name, got in answers.items():
        right[name] = {}
        errs, boxes = [], []
        for k, ((_, _, kind, truth), a) in enumerate(zip(items, got, strict=True)):
            if kind == "presence":
                right[name][k] = yes_no(a) == truth
            elif kind == "count":
                n = parse_count(a)
                right[name][k] = n == truth
                errs.append(abs(n - truth) if n is not None else None)
            else:
                g = grounding_score(parse_boxes(a), truth)
                right[name][k] = g["right"]
                boxes.append(g)
        for kind in ("count", "presence", "grounding"):
            idx = [k for k, it in enumerate(items) if it[2] == kind]
            rows.append({"condition": name, "type": kind, "items": len(idx),
                         "accuracy": sum(right[name][k] for k in idx) / len(idx)})
        parsed = [e for e in errs if e is not None]
        rows[-3]["mae_parsed"] = sum(parsed) / len(parsed) if parsed else None
        rows[-3]["unparsed"] = len(errs) - len(parsed)
        present = [g for g in boxes if g["truth"]]
        n_pred, n_truth = sum(g["pred"] for g in present), sum(g["truth"] for g in present)
        rows[-1].update({"present_items": len(present),
                         "recall_iou50": sum(g["tp"] for g in present) / max(1, n_truth),
                         "precision_iou50": sum(g["tp"] for g in present) / max(1, n_pred),
                         "centre_in_box": sum(g["centre_hits"] for g in present) / max(1, n_pred),
                         "boxes_predicted": n_pred, "boxes_labelled": n_truth,
                         "absent_right": sum(g["right"] for g in boxes if not g["truth"]),
                         "absent_items": sum(1 for g in boxes if not g["truth"])})
    majority = {}
    for kind in ("count", "presence"):  # the constant answer that is most often right on these items
        truths = [it[3] for it in items if it[2] == kind]
        best = max(set(truths), key=truths.count)
        majority[kind] = {"answer": best, "accuracy": truths.count(best) / len(truths)}
    emit({"protocol": f"images {args.first}-{args.last}, first {args.lm_images}; caption- and grounding-group "
                      f"questions (render_instructions, render_grounding, seed {args.seed}), no fact sheet, greedy, "
                      f"max_tokens {args.max_tokens}; grounding right = a box at IoU >= 0.5 (none for an absent class)",
          "projector": args.projector, "describe": factory.describe(), "rows": rows, "majority_constant": majority,
          "mcnemar_true_vs_another": mcnemar_exact(right["true image"], right["another image"]),
          "mcnemar_true_vs_none": mcnemar_exact(right["true image"], right["no image"]),
          "examples": [{"q": it[1], "truth": it[3], **{c: answers[c][k] for c in answers}}
                       for k, it in enumerate(items) if k % 4 == 0][:16],
          "grounding_answers_with_boxes": [{"image": it[0], "q": it[1], "truth": it[3],
                                            **{c: answers[c][k] for c in answers}}
                                           for k, it in enumerate(items) if it[2] == "grounding"
                                           and any(parse_boxes(answers[c][k]) for c in answers)]}, args.out)


def scene_answer(text: str, classes: list[str]) -> str | None:
    """The AID class an answer names (the longest matching class name wins: ``dense residential`` over
    ``residential``), None when it names none."""
    from training.chat_projector import scene_name

    low = text.lower()
    named = [c for c in classes if scene_name(c) in low]
    return max(named, key=lambda c: len(scene_name(c))) if named else None


def round_robin(keyed: list[tuple[str, str]]) -> list[str]:
    """Image keys of ``(key, class)`` pairs, taking one image of each class in turn, so that the next image
    (the scene check's "another image", cyclic) is of another class whenever the classes hold equally many."""
    by_class: dict[str, list[str]] = {}
    for k, c in keyed:
        by_class.setdefault(c, []).append(k)
    rounds = max(len(v) for v in by_class.values())
    return [ks[r] for r in range(rounds) for ks in by_class.values() if r < len(ks)]


def run_scene(args: argparse.Namespace) -> None:
    """Scene classification by the chat head, image only: AID test-split images (never trained on), the
    training's scene-group questions, with the true image's tokens, another image's and none."""
    import random

    from backend.chat.visual import load_soft_backend
    from training.chat_projector import SCENE_Q, render_scene, scene_images

    images = scene_images(args.scene_data, "test", args.per_class)
    classes = sorted({c for _, _, c in images})
    rng = random.Random(args.seed)  # noqa: S311  # nosec B311 (question sampling)
    items = []  # (key, question, kind, truth)
    for key, _, c in images:
        for smp in render_scene(key, c, classes, rng):
            q = smp.messages[0]["content"]
            items.append((key, q, "class", c) if q in SCENE_Q else (key, q, "yes/no", smp.target == "Yes."))
    order = round_robin([(k, c) for k, _, c in images])
    factory = load_soft_backend(args.projector)
    answers = three_conditions([(it[0], it[1]) for it in items], {k: p for k, p, _ in images}, order, factory,
                               args.max_tokens)
    right: dict[str, dict[int, bool]] = {}
    rows = []
    for name, got in answers.items():
        right[name] = {k: (scene_answer(a, classes) == it[3] if it[2] == "class" else yes_no(a) == it[3])
                       for k, (it, a) in enumerate(zip(items, got, strict=True))}
        for kind in ("class", "yes/no"):
            idx = [k for k, it in enumerate(items) if it[2] == kind]
            named = [scene_answer(got[k], classes) for k in idx] if kind == "class" else []
            rows.append({"condition": name, "type": kind, "items": len(idx),
                         "accuracy": sum(right[name][k] for k in idx) / len(idx),
                         **({"distinct_classes_named": len({n for n in named if n}),
                             "unparsed": sum(n is None for n in named)} if kind == "class" else {})})
    emit({"protocol": f"AID {args.scene_data} test split (per-class last 20 %), {args.per_class} images per class, "
                      f"scene-group questions (render_scene, seed {args.seed}), no fact sheet, greedy, "
                      f"max_tokens {args.max_tokens}",
          "projector": args.projector, "describe": factory.describe(), "rows": rows,
          "chance": {"class": 1 / len(classes), "yes/no": 0.5},
          "mcnemar_true_vs_another": mcnemar_exact(right["true image"], right["another image"]),
          "mcnemar_true_vs_none": mcnemar_exact(right["true image"], right["no image"]),
          "examples": [{"q": it[1], "truth": it[3], **{c: answers[c][k] for c in answers}}
                       for k, it in enumerate(items) if k % 9 == 0][:12]}, args.out)


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
    p.add_argument("--max-tokens", type=int, default=64, help="answer length (one sentence; up to 5 boxes)")
    p.add_argument("--seed", type=int, default=0, help="question sampling")
    p.set_defaults(func=run_vision)

    p = command("scene", "AID scene classification by the chat head (no facts): true image vs another vs none",
                "/tmp/chat_eval/d5_scene.json")
    p.add_argument("--projector", default=str(DEFAULT_PROJECTOR), help="trained projector folder")
    p.add_argument("--scene-data", default=str(DATA / "aid"), help="AID class folders; $RSFM_DATA/aid")
    p.add_argument("--per-class", type=int, default=3, help="test-split images per class")
    p.add_argument("--max-tokens", type=int, default=16, help="answer length (the answers are one sentence)")
    p.add_argument("--seed", type=int, default=0, help="question sampling")
    p.set_defaults(func=run_scene)

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
