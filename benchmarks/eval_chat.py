"""Evaluate the grounded chat head on labelled NWPU VHR-10 images (CHAT_DESIGN §6.5 C and D).

Facts come from the ground-truth boxes (``--facts gt``): this isolates the chat head (routing, wording,
verification) from detector errors; with a detector package, ``--facts model`` is the end-to-end number
(not run yet: no detection package exists in this repository at the time of writing).

Per image, deterministic questions (seed 0):

* count: "How many <class> are there?" for every present class and two absent ones → GT count;
* presence: "Is there a <class> in this image?" for one present and one absent class → yes / no;
* unanswerable: "How many <X> are there?" for X outside the detector's 10 classes (helicopter, swimming
  pool, wind turbine, ...) → the system should refuse ("cannot tell");
* describe: "Describe this image." → numeric consistency and hallucinated classes (CHAIR-style).

Systems (§6.5 D): ``majority`` (per-type constant), ``lm_prior`` (SmolLM2 with no facts), ``template``
(facts + templates, no LM), ``lm_phrase`` (templates reworded by SmolLM2, verified), ``lm_free``
(SmolLM2 with the fact sheet; reported raw and after the verifier).

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/eval_chat.py --first 461 --last 520 --lm-images 20 \
        --out docs/results/chat_eval.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data/nwpu_vhr10")
OUT_OF_VOCAB = ["helicopter", "swimming pool", "wind turbine", "roundabout", "train", "dam"]
REFUSAL = re.compile(r"cannot tell|can't tell|not able to|unable to|don't know|do not know|no information|"
                     r"not (?:in|among) the (?:facts|classes)|cannot (?:count|say|determine)", re.I)
WORDS = {"no": 0, "zero": 0, "one": 1, "a single": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
         "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}


def plural(name: str) -> str:
    n = name.replace("_", " ")
    return n + ("es" if n.endswith(("s", "ch", "sh", "x")) else "s")


def parse_count(text: str, cls: str) -> int | None:
    """The count an answer states for ``cls`` (None when it states none)."""
    t = re.sub(r"\[?\b[FO]\d+\]?", " ", text.lower().replace("_", " "))
    head = cls.replace("_", " ").split(" ")[0][:4]
    for m in re.finditer(r"\b(\d+|" + "|".join(WORDS) + r")\s+(?:[a-z]+\s+){0,2}?([a-z]+)", t):
        if m.group(2).startswith(head) or head in m.group(2):
            v = m.group(1)
            return int(v) if v.isdigit() else WORDS[v]
    m = re.search(r"\b(\d+)\b", t)
    return int(m.group(1)) if m else None


def parse_yes_no(text: str) -> bool | None:
    t = text.strip().lower()
    if REFUSAL.search(t):
        return None
    if re.match(r"^(yes|yeah|there (?:is|are))\b", t):
        return True
    if re.match(r"^(no|there (?:is|are) no|none)\b", t) or re.search(r"\bno \w+ (?:was|were) detected", t):
        return False
    if re.search(r"\b(\d+)\b", t):
        return int(re.search(r"\b(\d+)\b", t).group(1)) > 0
    return None


def bootstrap_ci(xs: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    if not xs:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(xs, k=len(xs))) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


def build_items(ann: dict, image_ids: list[int], seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    cats = {c["id"]: c["name"] for c in ann["categories"]}
    items = []
    for iid in image_ids:
        gt: dict[str, int] = {}
        for a in ann["annotations"]:
            if a["image_id"] == iid:
                gt[cats[a["category_id"]]] = gt.get(cats[a["category_id"]], 0) + 1
        absent = [c for c in cats.values() if c not in gt]
        present = sorted(gt)
        for c in present + rng.sample(absent, min(2, len(absent))):
            items.append({"image_id": iid, "type": "count", "class": c, "gt": gt.get(c, 0),
                          "q": f"How many {plural(c)} are there?"})
        if present:
            c = rng.choice(present)
            items.append({"image_id": iid, "type": "presence", "class": c, "gt": True,
                          "q": f"Is there a {c.replace('_', ' ')} in this image?"})
        if absent:
            c = rng.choice(absent)
            items.append({"image_id": iid, "type": "presence", "class": c, "gt": False,
                          "q": f"Is there a {c.replace('_', ' ')} in this image?"})
        x = rng.choice(OUT_OF_VOCAB)
        items.append({"image_id": iid, "type": "unanswerable", "class": x, "gt": None,
                      "q": f"How many {plural(x)} are there?"})
        items.append({"image_id": iid, "type": "describe", "class": None, "gt": dict(gt),
                      "q": "Describe this image."})
    return items


def score(items: list[dict], answers: dict[int, str], sheets: dict, name: str) -> dict:
    """Metrics of one system; ``answers`` maps item index -> answer text."""
    from backend.chat.verifier import class_vocabulary, mentioned_classes, verify

    cnt_ok, cnt_err, cnt_unparsed, pres_ok, refused_unans, false_ref = [], [], 0, [], [], []
    nums_checked = nums_ok = 0
    halluc, n_desc = [], 0
    for i, it in enumerate(items):
        if i not in answers:
            continue
        text = answers[i]
        sheet = sheets[it["image_id"]]
        refused = bool(REFUSAL.search(text))
        if it["type"] == "count":
            false_ref.append(float(refused))
            v = parse_count(text, it["class"])
            if v is None:
                cnt_unparsed += 1
                v = -1
            cnt_ok.append(float(v == it["gt"]))
            cnt_err.append(abs(max(v, 0) - it["gt"]))
        elif it["type"] == "presence":
            false_ref.append(float(refused))
            pres_ok.append(float(parse_yes_no(text) == it["gt"]))
        elif it["type"] == "unanswerable":
            refused_unans.append(float(refused))
        if it["type"] in ("count", "describe"):
            v = verify(text, sheet)
            nums_checked += v.numbers_checked
            nums_ok += v.numbers_supported
        if it["type"] == "describe":
            n_desc += 1
            vocab = class_vocabulary(sheet)
            gt_keys = {k.replace("_", " ") for k in it["gt"]}
            neg = re.compile(r"\b(no|not|none|zero|without)\b", re.I)
            bad = {c for s in re.split(r"(?<=[.!?])\s+", text) if not neg.search(s)
                   for _, c in mentioned_classes(s, vocab) if c not in gt_keys}
            halluc.append(float(bool(bad)))
    out = {"system": name, "n_count": len(cnt_ok), "n_presence": len(pres_ok), "n_unanswerable": len(refused_unans),
           "n_describe": n_desc}
    if cnt_ok:
        out["count_acc"] = statistics.fmean(cnt_ok)
        out["count_acc_ci95"] = bootstrap_ci(cnt_ok)
        out["count_mae"] = statistics.fmean(cnt_err)
        out["count_unparsed"] = cnt_unparsed
    if pres_ok:
        out["presence_acc"] = statistics.fmean(pres_ok)
        out["presence_acc_ci95"] = bootstrap_ci(pres_ok)
    if refused_unans:
        out["refusal_recall"] = statistics.fmean(refused_unans)
    if false_ref:
        out["false_refusal_rate"] = statistics.fmean(false_ref)
    if nums_checked:
        out["numeric_consistency"] = nums_ok / nums_checked
        out["numbers_checked"] = nums_checked
    if halluc:
        out["describe_hallucination_rate"] = statistics.fmean(halluc)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", type=int, default=461, help="first image number (file NNN.jpg)")
    ap.add_argument("--last", type=int, default=520)
    ap.add_argument("--lm-images", type=int, default=20, help="images (from the start) also run with the LM")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--no-lm", action="store_true")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "chat_eval.json"))
    args = ap.parse_args()

    from backend.chat.facts import build_fact_sheet, read_coco_objects
    from backend.chat.router import answer_question

    ann = json.loads((DATA / "annotations.json").read_text())
    classes = [c["name"] for c in ann["categories"]]
    by_name = {im["file_name"]: im["id"] for im in ann["images"]}
    ids = [by_name[f"{n:03d}.jpg"] for n in range(args.first, args.last + 1) if f"{n:03d}.jpg" in by_name]
    sheets = {}
    for iid in ids:
        im = next(x for x in ann["images"] if x["id"] == iid)
        sheets[iid] = build_fact_sheet(str(DATA / "images" / im["file_name"]),
                                       objects=read_coco_objects(ann, iid), object_classes=classes,
                                       score_threshold=0.0)
    items = build_items(ann, ids)
    results: dict = {"images": len(ids), "image_range": [args.first, args.last], "items": len(items),
                     "facts": "ground truth", "systems": []}
    # 1. majority constant per question type (computed on the same items: an optimistic baseline)
    counts = [it["gt"] for it in items if it["type"] == "count"]
    maj_count = max(set(counts), key=counts.count)
    pres = [it["gt"] for it in items if it["type"] == "presence"]
    maj_pres = max(set(pres), key=pres.count)
    maj = {i: (f"{maj_count} {it['class']}" if it["type"] == "count" else
               ("Yes." if maj_pres else "No.") if it["type"] == "presence" else
               f"{maj_count} {it['class']}" if it["type"] == "unanswerable" else "")
           for i, it in enumerate(items)}
    results["systems"].append(score(items, maj, sheets, f"majority (count={maj_count}, presence={maj_pres})"))
    # 3. templates
    t0 = time.perf_counter()
    tmpl = {i: answer_question(it["q"], sheets[it["image_id"]]).text for i, it in enumerate(items)}
    results["template_s_per_item"] = (time.perf_counter() - t0) / len(items)
    results["systems"].append(score(items, tmpl, sheets, "facts + templates (no LM)"))
    results["examples"] = {"template": [(items[i]["q"], tmpl[i]) for i in range(min(8, len(items)))]}
    if not args.no_lm:
        from backend.chat.lm import BuiltinBackend

        lm = BuiltinBackend()
        lm_ids = set(ids[: args.lm_images])
        sub = [i for i, it in enumerate(items) if it["image_id"] in lm_ids]
        prior, phrase, free_raw, free_ver, fallback = {}, {}, {}, {}, 0
        t0 = time.perf_counter()
        for k, i in enumerate(sub):
            it, sheet = items[i], sheets[items[i]["image_id"]]
            prior[i] = lm.generate([{"role": "user", "content": it["q"] + " Answer in one short sentence."}],
                                   max_tokens=args.max_tokens)
            if it["type"] != "describe":
                a = answer_question(it["q"], sheet, backend=lm, mode="phrase", max_tokens=args.max_tokens)
                phrase[i] = a.text
                fallback += a.mode == "fallback"
            a = answer_question(it["q"], sheet, backend=lm, mode="free", max_tokens=args.max_tokens)
            free_raw[i], free_ver[i] = a.raw_lm_text or "", a.text
            if it["type"] == "describe":
                phrase[i] = tmpl[i]  # describe has no template rewording; keep the template
            print(f"{k + 1}/{len(sub)} {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        results["lm_items"] = len(sub)
        results["lm_images"] = len(lm_ids)
        results["lm_s_per_item_all_modes"] = (time.perf_counter() - t0) / max(1, len(sub))
        results["phrase_fallbacks"] = fallback
        results["systems"].append(score(items, {i: tmpl[i] for i in sub}, sheets,
                                        "facts + templates (no LM), LM subset"))
        results["systems"].append(score(items, prior, sheets, "LM prior (no facts, no image)"))
        results["systems"].append(score(items, phrase, sheets, "LM-phrased templates (verified)"))
        results["systems"].append(score(items, free_raw, sheets, "LM free-form with facts, raw"))
        results["systems"].append(score(items, free_ver, sheets, "LM free-form with facts, verified"))
        results["examples"]["lm"] = [{"q": items[i]["q"], "gt": items[i]["gt"], "prior": prior[i],
                                      "phrase": phrase.get(i), "free_raw": free_raw[i], "free_verified": free_ver[i]}
                                     for i in sub[:12]]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    for s in results["systems"]:
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
