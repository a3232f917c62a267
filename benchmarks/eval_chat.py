"""Evaluate the grounded chat head on labelled NWPU VHR-10 images (CHAT_DESIGN §6.5 C and D; issue #7).

Facts come from

* ``--facts gt``: the ground-truth boxes. This isolates the chat head (routing, wording, verification) from
  detector errors;
* ``--facts model``: a detector package run through the backend's own job machinery (``backend.tasks.create_job``
  on the app's ``JobManager``, exactly what ``POST /api/v1/chat`` with ``models`` does). NWPU JPEGs have no
  georeference and the backend refuses rasters without a CRS, so each image is first written as a GeoTIFF
  (EPSG:32633, 1 m pixels, arbitrary placement); the detections are mapped back to pixel space and the sheet is
  built on the JPEG like the GT sheet, so both sheets have the same form and only the objects differ.

``--facts gt model`` evaluates both on the same items.

Per image, deterministic questions (seed 0):

* count: "How many <class> are there?" for every present class and two absent ones → GT count;
* presence: "Is there a <class> in this image?" for one present and one absent class → yes / no;
* unanswerable: "How many <X> are there?" for X outside the detector's 10 classes (helicopter, swimming
  pool, wind turbine, ...) → the system should refuse ("cannot tell");
* describe: "Describe this image." → numeric consistency and hallucinated classes (CHAIR-style).

Systems (§6.5 D): ``majority`` (per-type constant), ``lm_prior`` (SmolLM2 with no facts), ``template``
(facts + templates, no LM), ``lm_phrase`` (templates reworded by SmolLM2, verified), ``lm_free``
(SmolLM2 with the fact sheet; reported raw and after the verifier). LM systems run on the GT facts; with
``--lm-model-facts`` also on the detector facts. Accuracies carry 95 % bootstrap CIs; paired differences
between systems on the same items get exact McNemar tests.

LM system sets (``--lm SPEC [SPEC ...]``, default ``builtin``; CHAT_DESIGN §6.5 D4-D6):

* ``builtin``: the built-in SmolLM2 with the default engine (``backend.chat.lm``); ``builtin-torch`` forces the
  transformers engine (``RSFM_CHAT_ENGINE=torch``). Both get the compact fact sheet;
* ``openai:<base_url>[,model=<name>]``: an OpenAI-compatible endpoint (``OpenAIBackend``; full fact sheet),
  e.g. a bigger LM served by llama.cpp (benchmarks/llm_endpoint.md);
* ``soft:<dir>``: SmolLM2 with visual soft tokens of the item's image (``backend.chat.visual``).

Each spec has a label (``--lm-label``, default ``builtin-<engine>``, ``openai-<model>``, ``soft-<folder>``).
The first spec keeps the historical row names; the others' rows end in ``[label]``, and each is compared with
the first by exact McNemar tests on the same items. ``--lm-systems`` picks which of prior / phrase / free run.

LM answers are cached in ``--lm-cache`` (JSON lines, one per item, system and LM label, with the seconds the call
took) as they are produced, so a run that is stopped can be resumed and several LMs share one cache. Scoring
replays each cached raw LM text through the current router and verifier (:func:`reverify`), so a rule change
re-scores old answers without calling any LM again.

Usage::

    OMP_WAIT_POLICY=PASSIVE nice -n 5 .venv/bin/python benchmarks/eval_chat.py --facts gt model \
        --first 461 --last 520 --lm-images 30 --max-tokens 48 --out docs/results/chat_eval.json
    # D6: the built-in LM against a bigger LM behind an endpoint, free-form only, same items
    .venv/bin/python benchmarks/eval_chat.py --lm builtin openai:http://127.0.0.1:8080/v1,model=gemma3-270m \
        --lm-systems free --lm-images 20 --max-tokens 48 --out /tmp/chat_eval/d6.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from backend.chat.facts import ID_PATTERN, coco_class_counts, plural_class

REPO = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data/nwpu_vhr10")
OUT_OF_VOCAB = ["helicopter", "swimming pool", "wind turbine", "roundabout", "train", "dam"]
REFUSAL = re.compile(r"cannot tell|can't tell|not able to|unable to|don't know|do not know|no information|"
                     r"not (?:in|among) the (?:facts|classes)|cannot (?:count|say|determine)", re.I)
WORDS = {"no": 0, "zero": 0, "one": 1, "a single": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
         "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
# Placement of the GeoTIFF copies the backend needs (NWPU has no georeference; the detector ignores it)
GEO_CRS, GEO_ORIGIN, GEO_RES_M = "EPSG:32633", (500000.0, 5000000.0), 1.0


def parse_count(text: str, cls: str) -> int | None:
    """The count an answer states for ``cls`` (None when it states none)."""
    t = re.sub(ID_PATTERN, " ", text).lower().replace("_", " ")
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
    counts = coco_class_counts(ann)
    items = []
    for iid in image_ids:
        gt = counts.get(iid, {})
        absent = [c for c in cats.values() if c not in gt]
        present = sorted(gt)
        for c in present + rng.sample(absent, min(2, len(absent))):
            items.append({"image_id": iid, "type": "count", "class": c, "gt": gt.get(c, 0),
                          "q": f"How many {plural_class(c)} are there?"})
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
                      "q": f"How many {plural_class(x)} are there?"})
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


def correct_by_item(items: list[dict], answers: dict[int, str]) -> dict[int, bool]:
    """Per count / presence item answered: is the answer right (same rules as :func:`score`)?"""
    out = {}
    for i, text in answers.items():
        it = items[i]
        if it["type"] == "count":
            out[i] = parse_count(text, it["class"]) == it["gt"]
        elif it["type"] == "presence":
            out[i] = parse_yes_no(text) == it["gt"]
    return out


def mcnemar_exact(a: dict[int, bool], b: dict[int, bool]) -> dict:
    """Exact two-sided McNemar test of paired correctness ``a`` vs ``b`` on their common items.

    Returns ``{n, a_only, b_only, p}``: ``a_only`` items right in ``a`` and wrong in ``b``; ``p`` is the
    two-sided binomial p-value of the discordant pairs (1.0 when there are none).
    """
    common = sorted(set(a) & set(b))
    a_only = sum(1 for i in common if a[i] and not b[i])
    b_only = sum(1 for i in common if b[i] and not a[i])
    n = a_only + b_only
    if n == 0:
        p = 1.0
    else:
        k = min(a_only, b_only)
        p = min(1.0, 2 * sum(math.comb(n, j) for j in range(k + 1)) / 2**n)
    return {"n": len(common), "a_only": a_only, "b_only": b_only, "p": p}


# ------------------------------------------------------------------------------------- detector facts


def georeferenced_copy(image: Path, out: Path, res_m: float = GEO_RES_M) -> Path:
    """``image`` (any format rasterio reads) as a GeoTIFF with :data:`GEO_CRS`, ``res_m`` pixels (1 m by
    default): the backend refuses rasters without a CRS. Reuses ``out`` when it exists."""
    import rasterio
    from rasterio.transform import from_origin

    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(image) as src:
        data = src.read()
    with rasterio.open(out, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=GEO_CRS, transform=from_origin(*GEO_ORIGIN, res_m, res_m)) as dst:
        dst.write(data)
    return out


class DetectorRunner:
    """Runs one detection package on rasters through the backend's job queue (in-process app, no HTTP).

    Args:
        models_dir: folder holding model packages (e.g. ``resources/models``).
        model_id: the package id.
        work_dir: GeoTIFF copies and job outputs go here.
    """

    def __init__(self, models_dir: Path, model_id: str, work_dir: Path) -> None:
        import secrets

        from backend.server import App
        from backend.settings import Settings

        self.app = App(Settings.resolve({"models_dir": [str(models_dir)]}, env={}), secrets.token_hex(16))
        self.model_id = model_id
        self.work_dir = Path(work_dir)
        cfg = self.app.models.get(model_id).config
        if cfg.task not in ("object_detection", "rotated_detection", "instance_segmentation"):
            raise SystemExit(f"model {model_id} is a {cfg.task} model; --facts model needs an object detector")
        self.classes = [c.name for c in cfg.classes]
        self.score_threshold = float(cfg.score_threshold)
        self.run_s: list[float] = []  # seconds per detector run (cached images not included)

    def objects(self, image: Path, timeout_s: float = 600.0) -> list:
        """Detections of ``image`` as :class:`backend.chat.facts.DetectedObject` in pixel coordinates.

        Cached as ``work_dir/objects/<stem>.json`` (class, score, WKT): a re-run of the evaluation with the
        same ``--work-dir`` does not run the detector again."""
        import shapely
        from affine import Affine

        from backend.chat.facts import DetectedObject, read_objects
        from backend.chat.routes import _outputs_from_job
        from backend.tasks import create_job

        cached = self.work_dir / "objects" / f"{self.model_id}-{image.stem}.json"
        if cached.exists():
            return [DetectedObject(c, s, shapely.from_wkt(w), t) for c, s, w, t in json.loads(cached.read_text())]
        t0 = time.perf_counter()
        tif = georeferenced_copy(image, self.work_dir / "tif" / (image.stem + ".tif"))
        job = create_job(self.app, {"task": "object_detection", "model": self.model_id, "inputs": {"raster": str(tif)},
                                    "output_dir": str(self.work_dir / "out" / image.stem), "options": {}})
        self.app.jobs.submit(job)
        if not job.done_event.wait(timeout_s) or job.state != "succeeded":
            raise RuntimeError(f"detection on {tif} ended as {job.state}: {job.error}")
        inv = ~Affine(GEO_RES_M, 0, GEO_ORIGIN[0], 0, -GEO_RES_M, GEO_ORIGIN[1])
        objs = []
        for out in _outputs_from_job(job, self.app):
            for o in read_objects(out):
                geom = shapely.affinity.affine_transform(o.geometry, [inv.a, inv.b, inv.d, inv.e, inv.c, inv.f])
                objs.append(DetectedObject(o.cls, o.score, geom, o.task))
        self.run_s.append(time.perf_counter() - t0)
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps([[o.cls, o.score, o.geometry.wkt, o.task] for o in objs]))
        return objs

    def close(self) -> None:
        self.app.jobs.shutdown()


def model_sheets(images: dict[int, Path], runner: DetectorRunner) -> tuple[dict, dict[int, list], float | None]:
    """Fact sheets of ``images`` (image id → path) from the runner's detections, at the package threshold.

    Returns (sheets, objects per image, median seconds per detector run; None when every image was cached).
    """
    from backend.chat.facts import build_fact_sheet

    sheets, objs = {}, {}
    t0 = time.perf_counter()
    for k, (iid, path) in enumerate(images.items()):
        objs[iid] = runner.objects(path)
        sheets[iid] = build_fact_sheet(str(path), objects=objs[iid], object_classes=runner.classes,
                                       score_threshold=runner.score_threshold)
        print(f"detector {k + 1}/{len(images)} {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return sheets, objs, statistics.median(runner.run_s) if runner.run_s else None


def detector_fact_quality(ann: dict, objs: dict[int, list], threshold: float) -> dict:
    """How well the detector's per-class counts (what the fact sheet states) match the GT counts.

    Over every (image, class) pair of the 10 classes: exact-count rate, count MAE, and image-level presence
    precision / recall (a class "present" when at least one object is counted).
    """
    from backend.chat.facts import norm_class

    cats = {c["id"]: c["name"] for c in ann["categories"]}
    exact, err, tp, fp, fn = [], [], 0, 0, 0
    for iid, found in objs.items():
        gt: dict[str, int] = {}
        for a in ann["annotations"]:
            if a["image_id"] == iid:
                k = norm_class(cats[a["category_id"]])
                gt[k] = gt.get(k, 0) + 1
        det: dict[str, int] = {}
        for o in found:
            if o.score >= threshold:
                det[norm_class(o.cls)] = det.get(norm_class(o.cls), 0) + 1
        for c in {norm_class(n) for n in cats.values()}:
            g, d = gt.get(c, 0), det.get(c, 0)
            exact.append(float(g == d))
            err.append(abs(g - d))
            tp += g > 0 and d > 0
            fp += g == 0 and d > 0
            fn += g > 0 and d == 0
    return {"pairs": len(exact), "count_exact_rate": statistics.fmean(exact) if exact else None,
            "count_mae": statistics.fmean(err) if err else None,
            "presence_precision": tp / (tp + fp) if tp + fp else None,
            "presence_recall": tp / (tp + fn) if tp + fn else None,
            "objects_detected": sum(len(v) for v in objs.values())}


# ------------------------------------------------------------------------------------------------ main

# Rows of a cache written before answers were keyed by LM (system "prior" / "phrase" / "free") came from the
# transformers engine of the built-in model, the only one then.
LEGACY_LABEL = "builtin-torch"


def load_cache(path: Path, times: dict | None = None) -> dict[tuple[str, str, int], str]:
    """Cached LM answers: ``(facts, "<system>@<lm label>", item) -> text``. ``times`` (when given) receives
    the seconds each answer took, for the rows that recorded them."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                system = r["system"] if "@" in r["system"] else f"{r['system']}@{LEGACY_LABEL}"
                key = (r["facts"], system, r["item"])
                out[key] = r["text"]
                if times is not None and r.get("s") is not None:
                    times[key] = float(r["s"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", type=int, default=461, help="first image number (file NNN.jpg)")
    ap.add_argument("--last", type=int, default=520)
    ap.add_argument("--facts", nargs="+", default=["gt"], choices=["gt", "model"])
    ap.add_argument("--data", default=str(DATA), help="NWPU VHR-10 folder (annotations.json, images/)")
    ap.add_argument("--models-dir", default=str(REPO / "resources" / "models"))
    ap.add_argument("--model-id", default="rsfm-detection-nwpu-efflite0")
    ap.add_argument("--detector-test-from", type=int, default=471,
                    help="first image number of the detector's own test split (docs/results/detection.md); lower "
                         "numbers were its validation images")
    ap.add_argument("--work-dir", default=None, help="GeoTIFF copies and detector outputs (default: a temp dir)")
    ap.add_argument("--lm-images", type=int, default=20, help="images (from the start) also run with the LM")
    ap.add_argument("--lm-model-facts", action="store_true", help="also run the LM systems on detector facts")
    ap.add_argument("--lm-cache", default=None, help="JSON-lines cache of LM answers (resume)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--no-lm", action="store_true")
    ap.add_argument("--lm", nargs="+", default=["builtin"], metavar="SPEC",
                    help="LM system sets, each one of: builtin (the default engine), builtin-torch, "
                         "openai:<base_url>[,model=<name>], soft:<projector dir>. The first is the reference of "
                         "the paired tests and keeps the historical row names")
    ap.add_argument("--lm-label", nargs="+", default=None, metavar="LABEL",
                    help="one label per --lm spec (cache keys and row names); default: builtin-<engine>, "
                         "openai-<model or host:port>, soft-<folder name>")
    ap.add_argument("--lm-systems", nargs="+", default=list(LM_SYSTEMS), choices=LM_SYSTEMS,
                    help="which LM systems to run: prior (no facts), phrase (templates reworded), free")
    ap.add_argument("--lm-cached-only", action="store_true",
                    help="load no LM: score the answers in --lm-cache (each --lm spec needs its --lm-label); a "
                         "missing answer is an error")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "chat_eval.json"))
    args = ap.parse_args()
    if not args.no_lm:
        for spec in args.lm:  # fail before the detector runs, not after
            parse_lm_spec(spec)

    from backend.chat.facts import build_fact_sheet, read_coco_objects
    from backend.chat.router import answer_question

    data = Path(args.data)
    ann = json.loads((data / "annotations.json").read_text())
    classes = [c["name"] for c in ann["categories"]]
    by_name = {im["file_name"]: im["id"] for im in ann["images"]}
    ids = [by_name[f"{n:03d}.jpg"] for n in range(args.first, args.last + 1) if f"{n:03d}.jpg" in by_name]
    files = {im["id"]: data / "images" / im["file_name"] for im in ann["images"]}
    sheets: dict[str, dict] = {}
    if "gt" in args.facts:
        sheets["gt"] = {iid: build_fact_sheet(str(files[iid]), objects=read_coco_objects(ann, iid),
                                              object_classes=classes, score_threshold=0.0) for iid in ids}
    results: dict = {"images": len(ids), "image_range": [args.first, args.last], "seed": 0, "facts": args.facts,
                     "max_tokens": args.max_tokens, "systems": [], "mcnemar": []}
    if "model" in args.facts:
        work = Path(args.work_dir or tempfile.mkdtemp(prefix="rsfm-chat-eval-"))
        runner = DetectorRunner(Path(args.models_dir), args.model_id, work)
        try:
            sheets["model"], objs, s_per_img = model_sheets({iid: files[iid] for iid in ids}, runner)
        finally:
            runner.close()
        results["detector"] = {"model": args.model_id, "score_threshold": runner.score_threshold,
                               "s_per_image_median": s_per_img,  # None: outputs cached by an earlier run
                               **detector_fact_quality(ann, objs, runner.score_threshold)}
    items = build_items(ann, ids)
    results["items"] = len(items)
    first = args.facts[0]
    # 1. majority constant per question type (computed on the same items: an optimistic baseline)
    counts = [it["gt"] for it in items if it["type"] == "count"]
    maj_count = max(set(counts), key=counts.count)
    pres = [it["gt"] for it in items if it["type"] == "presence"]
    maj_pres = max(set(pres), key=pres.count)
    maj = {i: (f"{maj_count} {it['class']}" if it["type"] == "count" else
               ("Yes." if maj_pres else "No.") if it["type"] == "presence" else
               f"{maj_count} {it['class']}" if it["type"] == "unanswerable" else "")
           for i, it in enumerate(items)}
    results["systems"].append({**score(items, maj, sheets[first], f"majority (count={maj_count}, presence={maj_pres})"),
                               "facts": None})
    # 2. templates on every fact source
    tmpl: dict[str, dict[int, str]] = {}
    for src in args.facts:
        t0 = time.perf_counter()
        tmpl[src] = {i: answer_question(it["q"], sheets[src][it["image_id"]]).text for i, it in enumerate(items)}
        results[f"template_s_per_item_{src}"] = (time.perf_counter() - t0) / len(items)
        results["systems"].append({**score(items, tmpl[src], sheets[src], "facts + templates (no LM)"), "facts": src})
    if len(args.facts) == 2:
        results["mcnemar"].append({"a": "templates, GT facts", "b": "templates, detector facts",
                                   **mcnemar_exact(correct_by_item(items, tmpl["gt"]),
                                                   correct_by_item(items, tmpl["model"]))})
    if "model" in args.facts:
        results["mcnemar"].append({"a": "templates, detector facts", "b": "majority constant",
                                   **mcnemar_exact(correct_by_item(items, tmpl["model"]), correct_by_item(items, maj))})
        # the detector chose its checkpoint and threshold on images below --detector-test-from (its validation
        # split): report those images apart from the detector's held-back test images
        num = {by_name[k]: int(Path(k).stem) for k in by_name if Path(k).stem.isdigit()}
        for name, keep in ((f"detector validation images (< {args.detector_test_from})",
                            lambda n: n < args.detector_test_from),
                           (f"detector test images (>= {args.detector_test_from})",
                            lambda n: n >= args.detector_test_from)):
            sub = {i: t for i, t in tmpl["model"].items() if keep(num[items[i]["image_id"]])}
            if sub:
                results["systems"].append({**score(items, sub, sheets["model"], f"facts + templates (no LM), {name}"),
                                           "facts": "model"})
    results["examples"] = {f"template_{src}": [(items[i]["q"], tmpl[src][i]) for i in range(min(8, len(items)))]
                           for src in args.facts}
    if not args.no_lm:
        run_lm(args, items, ids, files, sheets, tmpl, results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    for s in results["systems"]:
        print(json.dumps(s))
    for m in results["mcnemar"]:
        print(json.dumps(m))
    return 0


# ------------------------------------------------------------------------------------------- LM systems

LM_SYSTEMS = ("prior", "phrase", "free")
ROW_TEMPLATE = "facts + templates (no LM), LM subset"
ROW_PHRASE = "LM-phrased templates (verified)"
ROW_RAW = "LM free-form with facts, raw"
ROW_VERIFIED = "LM free-form with facts, verified"
ROW_PRIOR = "LM prior (no facts, no image)"
ROW_PRIOR_SOFT = "LM prior (no facts, image soft tokens)"


@dataclass
class LMSpec:
    """One ``--lm`` system set (see :func:`parse_lm_spec`).

    Attributes:
        spec: the text given on the command line.
        kind: ``builtin`` (the default engine), ``builtin-torch``, ``openai`` or ``soft``.
        target: base URL (``openai``) or projector folder (``soft``).
        model: model name sent to an ``openai`` endpoint (None: the backend's default).
        label: names the answers in the cache and the rows; None until :class:`LMSystem` derives it.
    """

    spec: str
    kind: str
    target: str | None = None
    model: str | None = None
    label: str | None = None


def parse_lm_spec(spec: str) -> LMSpec:
    """``builtin`` | ``builtin-torch`` | ``openai:<base_url>[,model=<name>]`` | ``soft:<dir>``.

    Raises:
        SystemExit: anything else (the message lists the forms).
    """
    if spec in ("builtin", "builtin-torch"):
        return LMSpec(spec, spec)
    kind, _, rest = spec.partition(":")
    if kind == "openai" and rest:
        url, *opts = rest.split(",")
        model = None
        for o in opts:
            key, eq, value = o.partition("=")
            if key.strip() != "model" or not eq or not value.strip():
                raise SystemExit(f"--lm {spec!r}: the only option of an openai spec is ',model=<name>'")
            model = value.strip()
        if not url.startswith(("http://", "https://")):
            raise SystemExit(f"--lm {spec!r}: the base URL must start with http:// or https://")
        return LMSpec(spec, "openai", url, model)
    if kind == "soft" and rest:
        return LMSpec(spec, "soft", rest)
    raise SystemExit(f"--lm {spec!r} is not understood; use builtin, builtin-torch, "
                     "openai:<base_url>[,model=<name>] or soft:<projector dir>")


def builtin_engine(desc: dict) -> str | None:
    """Engine (``llamacpp`` / ``torch``) of a built-in backend from its ``describe()`` (None: unknown)."""
    if desc.get("engine"):  # "llama.cpp" / "llamacpp" / "torch" / "transformers", as RSFM_CHAT_ENGINE names them
        engine = re.sub(r"[^a-z0-9]", "", str(desc["engine"]).lower())
        return "torch" if engine == "transformers" else engine
    model = str(desc.get("model", "")).lower()
    if "llama" in model:
        return "llamacpp"
    if "transformers" in model:
        return "torch"
    return None


def default_label(spec: LMSpec, desc: dict) -> str:
    """``builtin-<engine>`` (the engine actually loaded, so answers of two engines never share a cache key),
    ``openai-<model or host:port>``, ``soft-<folder name>``."""
    if spec.kind in ("builtin", "builtin-torch"):
        engine = builtin_engine(desc)
        return f"builtin-{engine}" if engine else spec.kind
    if spec.kind == "openai":
        return "openai-" + (spec.model or urllib.parse.urlsplit(spec.target or "").netloc)
    return "soft-" + Path(spec.target or "").name


def _load_builtin(torch_engine: bool):
    """The built-in backend; ``torch_engine`` forces the transformers engine (``RSFM_CHAT_ENGINE=torch``).

    ``backend.chat.lm`` loads the built-in model once per process, so a second engine in the same process may
    silently be the first one: that is detected from ``describe()`` and refused.
    """
    from backend.chat import lm as lm_mod

    prev = os.environ.get("RSFM_CHAT_ENGINE")
    if torch_engine:
        os.environ["RSFM_CHAT_ENGINE"] = "torch"
    try:
        want = lm_mod.chat_engine() if hasattr(lm_mod, "chat_engine") else None
        backend = lm_mod.BuiltinBackend()
    finally:
        if prev is None:
            os.environ.pop("RSFM_CHAT_ENGINE", None)
        else:
            os.environ["RSFM_CHAT_ENGINE"] = prev
    got = builtin_engine(backend.describe())
    if want and got and want != got:
        raise SystemExit(f"the built-in LM was asked for engine {want} but this process already holds it with "
                         f"engine {got} (backend.chat.lm loads it once per process); run the other --lm spec in a "
                         "separate invocation with the same --lm-cache")
    return backend


class LMSystem:
    """A loaded ``--lm`` spec. :meth:`backend_for` gives the ChatBackend that answers about one image (the same
    backend for every image except ``soft``, whose visual tokens depend on the image)."""

    def __init__(self, spec: LMSpec, load: bool = True) -> None:
        self.spec = spec
        self._backend = None
        self._soft = None
        self._soft_image: tuple[str, object] | None = None
        if not load:  # --lm-cached-only: score cached answers; the label must be given
            if not spec.label:
                raise SystemExit(f"--lm-cached-only needs an --lm-label for {spec.spec!r} (the label its answers "
                                 "were cached under)")
            self.label = spec.label
            return
        if spec.kind in ("builtin", "builtin-torch"):
            self._backend = _load_builtin(spec.kind == "builtin-torch")
        elif spec.kind == "openai":
            from backend.chat.lm import OpenAIBackend

            self._backend = OpenAIBackend(spec.target, **({"model": spec.model} if spec.model else {}))
        elif spec.kind == "soft":
            from backend.chat.visual import load_soft_backend

            self._soft = load_soft_backend(spec.target)
        else:  # parse_lm_spec only makes the kinds above
            raise SystemExit(f"unknown LM kind {spec.kind!r}")
        self.label = spec.label or default_label(spec, self.describe())

    def backend_for(self, image: Path):
        if self._backend is None and self._soft is None:
            return None  # --lm-cached-only
        if self._soft is None:
            return self._backend
        if self._soft_image is None or self._soft_image[0] != str(image):
            self._soft_image = (str(image), self._soft.for_image(image))
        return self._soft_image[1]

    def describe(self) -> dict:
        if self._backend is not None:
            return self._backend.describe()
        if self._soft is None:
            return {"name": self.spec.kind, "spec": self.spec.spec, "cached_only": True}
        desc = getattr(self._soft, "describe", None)
        return {"name": "soft", "dir": self.spec.target, **(desc() if callable(desc) else {})}


def load_lm_systems(specs: list[str], labels: list[str] | None, load: bool = True) -> list[LMSystem]:
    """Parse and load ``--lm`` specs (labels from ``--lm-label``, else derived); labels must be unique.
    ``load=False`` loads no model (scoring of cached answers only; labels required)."""
    parsed = [parse_lm_spec(s) for s in specs]
    if labels:
        if len(labels) != len(parsed):
            raise SystemExit(f"--lm-label needs one label per --lm spec ({len(parsed)}), got {len(labels)}")
        for p, lab in zip(parsed, labels, strict=True):
            if not re.fullmatch(r"[\w.:+-]+", lab):
                raise SystemExit(f"--lm-label {lab!r}: use letters, digits and . : + - _ only")
            p.label = lab
    systems = [LMSystem(p, load) for p in parsed]
    seen: dict[str, str] = {}
    for s in systems:
        if s.label in seen:
            raise SystemExit(f"--lm {seen[s.label]!r} and {s.spec.spec!r} both get the label {s.label!r} (the same "
                             "model twice?); give distinct --lm-label values")
        seen[s.label] = s.spec.spec
    return systems


def _prior(lm, question: str, max_tokens: int) -> str:
    return lm.generate([{"role": "user", "content": question + " Answer in one short sentence."}],
                       max_tokens=max_tokens)


def _routed(lm, question: str, sheet, mode: str, max_tokens: int) -> str:
    from backend.chat.router import answer_question

    return json.dumps(_ans(answer_question(question, sheet, backend=lm, mode=mode, max_tokens=max_tokens)))


def _latency(times: list[float]) -> dict:
    if not times:
        return {"n": 0}
    qs = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return {"n": len(times), "mean_s": statistics.fmean(times), "median_s": statistics.median(times),
            "p90_s": qs[8]}


def run_lm(args, items: list[dict], ids: list[int], files: dict, sheets: dict, tmpl: dict, results: dict) -> None:
    """LM systems of every ``--lm`` spec on the first ``--lm-images`` images; answers cached per item, system
    and LM label in ``--lm-cache``. The first spec keeps the historical row names; the others get ``[label]``
    appended, and McNemar pairs compare each of them with the first on the same items."""
    systems = load_lm_systems(args.lm, args.lm_label, load=not args.lm_cached_only)
    results["lm"] = systems[0].describe()
    results["lms"] = [{"label": s.label, "spec": s.spec.spec, "describe": s.describe()} for s in systems]
    results["lm_systems"] = list(args.lm_systems)
    cache_path = Path(args.lm_cache) if args.lm_cache else Path(args.out).with_suffix(".lm_cache.jsonl")
    times: dict[tuple[str, str, int], float] = {}
    cache = load_cache(cache_path, times)
    lm_srcs = [s for s in args.facts if s == "gt" or args.lm_model_facts]
    lm_ids = ids[: args.lm_images]
    keep = set(lm_ids)
    sub = [i for i, it in enumerate(items) if it["image_id"] in keep]
    t0 = time.perf_counter()
    n_new = dict.fromkeys((s.label for s in systems), 0)
    with cache_path.open("a") as fh:
        def get(src: str, system: str, label: str, i: int, make, *a) -> str:
            key = (src, f"{system}@{label}", i)
            if key not in cache:
                if a[0] is None:
                    raise SystemExit(f"--lm-cached-only: the answer {key} is not in {cache_path}")
                t = time.perf_counter()
                cache[key] = make(*a)
                times[key] = time.perf_counter() - t
                fh.write(json.dumps({"facts": src, "system": key[1], "item": i, "text": cache[key], "lm": label,
                                     "s": round(times[key], 3)}) + "\n")
                fh.flush()
                n_new[label] += 1
            return cache[key]

        for k, i in enumerate(sub):
            it = items[i]
            for s in systems:
                lm = s.backend_for(files[it["image_id"]])
                if "prior" in args.lm_systems:
                    get("none", "prior", s.label, i, _prior, lm, it["q"], args.max_tokens)
                for src in lm_srcs:
                    sheet = sheets[src][it["image_id"]]
                    if "phrase" in args.lm_systems and it["type"] != "describe":
                        get(src, "phrase", s.label, i, _routed, lm, it["q"], sheet, "phrase", args.max_tokens)
                    if "free" in args.lm_systems:
                        get(src, "free", s.label, i, _routed, lm, it["q"], sheet, "free", args.max_tokens)
            print(f"LM item {k + 1}/{len(sub)} (image {lm_ids.index(it['image_id']) + 1}/{len(lm_ids)}) "
                  f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    results["lm_items"] = len(sub)
    results["lm_images"] = len(lm_ids)
    results["lm_new_answers"] = sum(n_new.values())
    results["lm_s_per_new_answer"] = ((time.perf_counter() - t0) / results["lm_new_answers"]
                                      if results["lm_new_answers"] else None)
    results["lm_cache"] = str(cache_path)
    results["per_lm"] = {}
    ok_by: dict[tuple[str, str | None], dict[str, dict[int, bool]]] = {}
    first = systems[0].label
    for n, s in enumerate(systems):
        lab = s.label
        sfx = "" if n == 0 else f" [{lab}]"
        # seconds per answer (wall time of the call, as cached: answers made by earlier runs included)
        per = {"spec": s.spec.spec, "new_answers": n_new[lab],
               "latency": {system: _latency([times[(src, f"{system}@{lab}", i)] for i in sub
                                             for src in (("none",) if system == "prior" else lm_srcs)
                                             if (src, f"{system}@{lab}", i) in times])
                           for system in args.lm_systems}}
        results["per_lm"][lab] = per
        if "prior" in args.lm_systems:
            prior = {i: cache[("none", f"prior@{lab}", i)] for i in sub}
            name = ROW_PRIOR_SOFT if s.spec.kind == "soft" else ROW_PRIOR
            results["systems"].append({**score(items, prior, sheets[args.facts[0]], name + sfx), "facts": None,
                                       "subset": True, "lm": lab})
            ok_by[(lab, None)] = {"LM prior": correct_by_item(items, prior)}
        for src in lm_srcs:
            rows: list[tuple[str, dict[int, str], str | None]] = []
            if n == 0:  # the template row does not depend on the LM
                rows.append((ROW_TEMPLATE, {i: tmpl[src][i] for i in sub}, None))
            phrase = free_raw = free_ver = None
            if "phrase" in args.lm_systems:
                ph = {i: reverify(cache[(src, f"phrase@{lab}", i)], items[i]["q"], sheets[src][items[i]["image_id"]],
                                  "phrase") for i in sub if items[i]["type"] != "describe"}
                phrase = {i: ph[i]["text"] if i in ph else tmpl[src][i] for i in sub}  # describe: no rewording
                per[f"phrase_fallbacks_{src}"] = sum(v["mode"] == "fallback" for v in ph.values())
                rows.append((ROW_PHRASE, phrase, lab))
            if "free" in args.lm_systems:
                fr = {i: reverify(cache[(src, f"free@{lab}", i)], items[i]["q"], sheets[src][items[i]["image_id"]],
                                  "free") for i in sub}
                free_raw = {i: fr[i]["raw"] or "" for i in sub}
                free_ver = {i: fr[i]["text"] for i in sub}
                per[f"free_fallbacks_{src}"] = sum(v["mode"] == "fallback" for v in fr.values())
                # answers whose verified text today's rules changed (the cache holds what the run produced)
                per[f"free_reverified_changed_{src}"] = sum(v.get("cached_text", v["text"]) != v["text"]
                                                            for v in fr.values())
                rows += [(ROW_RAW, free_raw, lab), (ROW_VERIFIED, free_ver, lab)]
            for name, ans, row_lm in rows:
                results["systems"].append({**score(items, ans, sheets[src], name + ("" if row_lm is None else sfx)),
                                           "facts": src, "subset": True, "lm": row_lm})
            ok = {name: correct_by_item(items, ans) for name, ans, _ in rows}
            ok.update(ok_by.get((lab, None), {}))
            ok_by[(lab, src)] = ok
            tmpl_ok = ok_by[(first, src)].get(ROW_TEMPLATE, {}) if n else ok[ROW_TEMPLATE]
            pairs = ((ROW_TEMPLATE, ROW_VERIFIED), (ROW_TEMPLATE, ROW_PHRASE), (ROW_VERIFIED, ROW_RAW),
                     (ROW_RAW, "LM prior"))
            for a, b in pairs:
                oka = tmpl_ok if a == ROW_TEMPLATE else ok.get(a)
                if oka and ok.get(b):
                    results["mcnemar"].append({"facts": src, "a": a + ("" if a == ROW_TEMPLATE else sfx),
                                               "b": b + sfx, "lm": lab, **mcnemar_exact(oka, ok[b])})
            key = f"lm_{src}" if n == 0 else f"lm_{src}_{lab}"
            results["examples"][key] = [
                {"q": items[i]["q"], "gt": items[i]["gt"],
                 "prior": cache.get(("none", f"prior@{lab}", i)), "phrase": (phrase or {}).get(i),
                 "free_raw": (free_raw or {}).get(i), "free_verified": (free_ver or {}).get(i)} for i in sub[:12]]
        if n == 0:  # historical keys of the first LM
            for src in lm_srcs:
                for k in (f"phrase_fallbacks_{src}", f"free_fallbacks_{src}"):
                    if k in per:
                        results[k] = per[k]
    # the first LM against each other one, on the same items
    for s in systems[1:]:
        for src in [None, *lm_srcs]:
            a_ok, b_ok = ok_by.get((first, src), {}), ok_by.get((s.label, src), {})
            for name in (("LM prior",) if src is None else (ROW_VERIFIED, ROW_RAW, ROW_PHRASE)):
                if a_ok.get(name) and b_ok.get(name):
                    results["mcnemar"].append({"facts": src, "a": f"{name} [{first}]", "b": f"{name} [{s.label}]",
                                               "lm": [first, s.label], **mcnemar_exact(a_ok[name], b_ok[name])})


class _Replay:
    """A ChatBackend that returns a cached LM text: scoring re-runs the current router and verifier on the raw
    answers an earlier run recorded, so every row of a results file obeys the same, current rules."""

    name = "replay"
    compact_prompt = True

    def __init__(self, text: str) -> None:
        self.text = text

    def generate(self, messages, max_tokens=256, stop=None, on_token=None) -> str:
        return self.text

    def describe(self) -> dict:
        return {"name": self.name}


def reverify(cached: str, question: str, sheet, mode: str) -> dict:
    """A cached routed answer (``_ans`` JSON) with ``text`` and ``mode`` recomputed from its ``raw`` LM text by
    today's router and verifier (unchanged when no LM ran for it)."""
    from backend.chat.router import answer_question

    rec = json.loads(cached)
    if rec.get("raw") is None:
        return rec
    a = answer_question(question, sheet, backend=_Replay(rec["raw"]), mode=mode)
    return {**rec, "text": a.text, "mode": a.mode, "cached_text": rec["text"], "cached_mode": rec["mode"]}


def _ans(a) -> dict:
    """What the evaluation keeps of a ChatAnswer (``gen_s``: the LM call alone, ``first_token_s``)."""
    return {"text": a.text, "raw": a.raw_lm_text, "mode": a.mode, "gen_s": a.timings_s.get("generate"),
            "first_token_s": a.timings_s.get("first_token")}


if __name__ == "__main__":
    raise SystemExit(main())
