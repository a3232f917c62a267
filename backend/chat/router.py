"""Router: structured questions are answered from facts by templates, free ones by the LM + verifier.

Intents (keyword rules, CHAT_DESIGN §6.2 item 6):

==========  =========================================  ==========================================
intent      triggers                                    answer
==========  =========================================  ==========================================
change      "change", "changed", "new", "difference",   change facts against the second image
            "appeared", "demolished", "since"           (share, area, regions C1.. and where)
count       "how many", "number of", "count"            count facts of the class (or all classes)
area        "area", "percent", "%", "share", "cover"    land-cover shares / km², object footprints
presence    "is there", "are there", "any", "see"       yes (count) / no (0 at threshold) / can't tell
class_list  "what objects", "which classes", "list"     present classes with counts and shares
where       "where", "locate", "location"               object facts with boxes and coordinates
describe    anything else                               LM with the fact sheet (template summary without)
==========  =========================================  ==========================================

A class the question names but no model can output gets an honest "cannot tell" instead of a guess.
Every answer passes :func:`backend.chat.verifier.verify`; the LM's wording is dropped in favour of the
template when it loses a number or a citation.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from backend.chat.facts import Fact, FactSheet, area_text, display_class, fmt_num, norm_class
from backend.chat.lm import ChatBackend
from backend.chat.verifier import Verification, class_vocabulary, mentioned_classes, verify

MODES = ("auto", "template", "phrase", "free")

_INTENTS: list[tuple[str, re.Pattern]] = [
    # first: "how much changed?" / "how many new buildings?" are about the change map, not counts or land cover
    ("change", re.compile(r"\b(chang(?:e|es|ed|ing)|differen(?:t|ce|ces)|new|appeared|disappeared|demolished|"
                          r"removed|since|compared?)\b", re.I)),
    ("count", re.compile(r"\b(how many|number of|count|counts|how much .* objects)\b", re.I)),
    ("area", re.compile(r"\b(area|areas|percent|percentage|share|proportion|fraction|cover|covers|covered|"
                        r"coverage|km2|km²|hectares?|how much)\b|%", re.I)),
    ("where", re.compile(r"\b(where|locate|location|located|position|find)\b", re.I)),
    ("presence", re.compile(r"^\s*(is|are|does|do|can you see|any)\b|\b(is there|are there|any|present|"
                            r"visible|contain|contains)\b", re.I)),
    ("class_list", re.compile(r"\b(what|which) (objects|classes|things|kinds?|types?|land[- ]cover)\b|"
                              r"\blist\b|\bwhat is (in|on) (this|the)\b|\bwhat do you see\b", re.I)),
]


@dataclass
class ChatAnswer:
    """What the endpoint returns for one question.

    Attributes:
        text: verified answer (plain text with ``[F3]`` citations).
        intent: router intent.
        mode: how it was produced: ``template``, ``phrase`` (LM-worded template), ``free`` (LM) or
            ``fallback`` (LM output failed verification, template used).
        cited: fact IDs cited by ``text``.
        objects: cited objects the plugin can draw: ``{id, fact, class, score, pixel_box_xyxy, centre,
            geometry}`` with geometry as GeoJSON in ``crs``.
        crs: CRS of the geometries (None: pixel coordinates of an ungeoreferenced image).
        verification: ``{ok, problems: [{sentence, reason}], numbers_checked, numbers_supported,
            hallucinated_classes}``.
        raw_lm_text: the LM's unverified output (None when no LM ran).
        timings_s: ``{facts, first_token, generate, total}`` where known.
    """

    text: str
    intent: str
    mode: str
    cited: list[str]
    objects: list[dict]
    crs: str | None
    verification: dict
    raw_lm_text: str | None = None
    template_text: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def classify(question: str) -> str:
    """The intent of ``question`` (see module table); ``describe`` when no rule fires."""
    for name, pat in _INTENTS:
        if pat.search(question):
            return name
    return "describe"


@dataclass
class ClassRef:
    word: str  # as written in the question
    key: str | None  # normalised class in the sheet's vocabulary, None when no model knows it


def question_classes(question: str, sheet: FactSheet) -> list[ClassRef]:
    """Class words in the question, resolved to the sheet's classes (synonyms included)."""
    vocab = class_vocabulary(sheet)
    out = []
    for word, cls in mentioned_classes(question, vocab):
        if cls in sheet.known_classes:
            out.append(ClassRef(word, cls))
        elif norm_class(word) in sheet.known_classes:
            out.append(ClassRef(word, norm_class(word)))
        else:
            # "land" / "water" may be part of a known multi-word class ("water body")
            hit = [k for k in sheet.known_classes if cls in k.split(" ")]
            out.append(ClassRef(word, hit[0] if len(hit) == 1 else None))
    return out


GENERIC_NOUNS = {"object", "objects", "thing", "things", "item", "items", "detection", "detections", "class",
                 "classes", "feature", "features", "target", "targets", "instance", "instances", "it", "they",
                 "them", "there", "this", "that", "image", "picture", "scene", "area", "the", "of", "in", "is",
                 "are", "much", "many", "any", "anything", "something", "cover", "covered", "land"}


def _asked_noun(question: str) -> str | None:
    """The thing a count / presence / where question asks about when it is not a known class word."""
    m = re.search(r"\b(?:how many|number of|count(?: the)?|is there an?|are there(?: any)?|any|where (?:is|are) "
                  r"(?:the|an?)?)\b\s*([a-z][a-z ]{1,40}?)(?:\s+(?:are|is|were|was|in|on|there|visible|can|do|near|"
                  r"at|here)\b|[?.!,]|$)", question.lower())
    if not m:
        return None
    words = [w for w in m.group(1).split() if w not in ("the", "a", "an", "any", "some")]
    if not words or all(w in GENERIC_NOUNS for w in words):
        return None
    return " ".join(words)


def _cite(f: Fact | None) -> str:
    return f" [{f.id}]" if f else ""


def _known_list(sheet: FactSheet) -> str:
    names = sorted(sheet.known_classes.values())
    return ", ".join(names) if names else "nothing (no perception output was given)"


def _count_fact(sheet: FactSheet, key: str) -> Fact | None:
    return next((f for f in sheet.by_kind("count") if f.classes == [key]), None)


def _absent_fact(sheet: FactSheet, key: str) -> Fact | None:
    return next((f for f in sheet.by_kind("absent") if key in f.classes), None)


def _landcover_fact(sheet: FactSheet, key: str) -> Fact | None:
    return next((f for f in sheet.by_kind("landcover") if f.classes == [key]), None)


def _is_object_class(sheet: FactSheet, key: str) -> bool:
    return _count_fact(sheet, key) is not None or any(
        key in f.classes and "count" in f.data for f in sheet.by_kind("absent"))


def _cannot_tell(ref: ClassRef, sheet: FactSheet) -> str:
    if not sheet.known_classes:
        return (f"I cannot tell about {ref.word}: no segmentation or detection output was given for this image; "
                "run a segmentation or detection model first.")
    return (f"I cannot tell about {ref.word}: none of the models run on this image recognises that class "
            f"(they know: {_known_list(sheet)}).")


def _count_sentence(sheet: FactSheet, key: str) -> str:
    name = sheet.known_classes.get(key, key)
    t = fmt_num(sheet.score_threshold)
    if f := _count_fact(sheet, key):
        n = f.data["count"]
        q = f.data.get("quadrants") or {}
        where = ", ".join(f"{v} in the {k}" for k, v in q.items())
        head = f"There is 1 {name} detection" if n == 1 else f"There are {n} {name} detections"
        return f"{head} (score >= {t}){', ' + where if where else ''}{_cite(f)}."
    if (f := _absent_fact(sheet, key)) and "count" in f.data:
        return f"No {name} was detected (score >= {t}){_cite(f)}."
    if f := _landcover_fact(sheet, key):
        return (f"{name} is a land-cover class, not countable objects; it covers "
                f"{fmt_num(f.data['share_pct'])}% of the area{_cite(f)}.")
    if f := _absent_fact(sheet, key):
        return f"No {name} was found in the land-cover map{_cite(f)}."
    return f"I have no count for {name}."


def template_answer(question: str, sheet: FactSheet, intent: str,
                    history: list[dict] | None = None) -> str:
    """Deterministic answer built only from facts (numbers copied from them, IDs cited)."""
    if intent == "change":
        return _change_answer(question, sheet)
    refs = question_classes(question, sheet)
    if not refs and history:  # follow-up ("and where are they?"): reuse the last question's classes
        for msg in reversed(history):
            if msg.get("role") == "user" and (refs := question_classes(msg.get("content", ""), sheet)):
                break
    if not refs and intent in ("count", "presence", "where", "area") and (word := _asked_noun(question)):
        refs = [ClassRef(word, None)]  # "How many trains?": a class no model knows
    total = next((f for f in sheet.by_kind("count") if f.data.get("class") is None), None)
    unknown = [r for r in refs if r.key is None]
    refs = [r for r in refs if r.key is not None]
    lines = [_cannot_tell(r, sheet) for r in unknown]
    if unknown and not refs:
        return " ".join(lines)

    if intent == "count":
        if refs:
            lines += [_count_sentence(sheet, r.key) for r in refs]
        elif total:
            parts = [f"{f.data['count']} {f.data['class']}{_cite(f)}" for f in sheet.by_kind("count")
                     if f.data.get("class")]
            lines.append(f"{total.data['count']} objects were detected (score >= "
                         f"{fmt_num(sheet.score_threshold)}){_cite(total)}" + (": " + ", ".join(parts) if parts
                                                                               else "") + ".")
        else:
            lines.append("No object detector was run on this image, so I cannot count objects.")
    elif intent == "area":
        lc = sheet.by_kind("landcover")
        if refs:
            for r in refs:
                name = sheet.known_classes.get(r.key, r.key)
                if f := _landcover_fact(sheet, r.key):
                    area = f", {fmt_num(f.data['area_km2'])} km²" if f.data.get("area_km2") else ""
                    lines.append(f"{name} covers {fmt_num(f.data['share_pct'])}% of the area{area}{_cite(f)}.")
                elif (f := _count_fact(sheet, r.key)) and "footprint" in f.text:
                    lines.append(f"The {f.data['count']} {name} detections have the footprint given in "
                                 f"{f.id}{_cite(f)}.")
                elif f := _absent_fact(sheet, r.key):
                    lines.append(f"{name} was not found, so its area is 0{_cite(f)}.")
                else:
                    lines.append(f"I have no area for {name}: run a segmentation model that maps it.")
        elif lc:
            lines.append("Land cover: " + "; ".join(
                f"{f.data['class']} {fmt_num(f.data['share_pct'])}%{_cite(f)}" for f in lc[:6]) + ".")
        else:
            lines.append("No land-cover map was computed for this image, so I cannot give areas; run a "
                         "segmentation model first.")
    elif intent == "presence":
        if not refs:
            return template_answer(question, sheet, "class_list")
        for r in refs:
            name = sheet.known_classes.get(r.key, r.key)
            if (f := _count_fact(sheet, r.key)) or (f := _landcover_fact(sheet, r.key)):
                lines.append(f"Yes. {_count_sentence(sheet, r.key)}" if f.kind == "count" else
                             f"Yes: {name} covers {fmt_num(f.data['share_pct'])}% of the area{_cite(f)}.")
            elif f := _absent_fact(sheet, r.key):
                lines.append(f"No {name} was detected (score >= {fmt_num(sheet.score_threshold)})"
                             f"{_cite(f)}." if "count" in f.data else
                             f"No {name} was found in the land-cover map{_cite(f)}.")
    elif intent == "where":
        targets = [r.key for r in refs] or [k for k in sheet.present_classes if _is_object_class(sheet, k)]
        for key in targets:
            name = sheet.known_classes.get(key, key)
            objs = [f for f in sheet.by_kind("object") if f.classes == [key]]
            if objs:
                cnt = _count_fact(sheet, key)
                head = f"{name}: " if len(targets) > 1 else ""
                more = (f" ({cnt.data['count'] - len(objs)} more are not listed{_cite(cnt)})"
                        if cnt and cnt.data["count"] > len(objs) else "")
                georef = bool(sheet.info and sheet.info.crs)
                lines.append(head + "; ".join(
                    f"{f.data['object_id']} in the {f.data['quadrant']} quarter, {_box_and_centre(f.data, georef)}"
                    + _cite(f) for f in objs[:5]) + more + ".")
            elif f := _landcover_fact(sheet, key):
                lc_name = name[:1].upper() + name[1:]  # it starts the sentence
                lines.append(f"{lc_name} is mostly in the {f.data['quadrant']} quarter{_cite(f)}." if f.data["quadrant"]
                             else f"{lc_name} is spread over all four quarters{_cite(f)}.")
            elif cnt := _count_fact(sheet, key):
                lines.append(_count_sentence(sheet, key))
            else:
                lines.append(_count_sentence(sheet, key))
        if not targets:
            lines.append("No objects were detected, so there is nothing to locate.")
    elif intent == "class_list":
        parts = [f"{f.data['class']} ({f.data['count']}){_cite(f)}" for f in sheet.by_kind("count")
                 if f.data.get("class")]
        lc = [f"{f.data['class']} ({fmt_num(f.data['share_pct'])}%){_cite(f)}" for f in sheet.by_kind("landcover")
              if f.data.get("class")]
        if parts:
            lines.append("Detected objects: " + ", ".join(parts) + ".")
        if lc:
            lines.append("Land cover: " + ", ".join(lc) + ".")
        if not parts and not lc:
            lines.append("Nothing was detected in this area" + (_cite(total) if total else "") + ".")
    else:  # describe: a factual summary
        meta = sheet.by_kind("meta")[0] if sheet.by_kind("meta") else None
        if meta:
            d = meta.data
            gsd = f" at {fmt_num(d['gsd_m'])} m per pixel" if d.get("gsd_m") else ""
            lines.append(f"This image is {d['width_px']} x {d['height_px']} px{gsd}{_cite(meta)}.")
        lc = sheet.by_kind("landcover")[:3]
        if lc:
            lines.append("It is mostly " + ", ".join(
                f"{f.data['class']} ({fmt_num(f.data['share_pct'])}%){_cite(f)}" for f in lc) + ".")
        counts = [f for f in sheet.by_kind("count") if f.data.get("class")]
        if counts:
            lines.append("Detected: " + ", ".join(f"{f.data['count']} {f.data['class']}{_cite(f)}"
                                                 for f in counts) + ".")
        scenes = sheet.by_kind("scene")[:1]
        if scenes:
            lines.append(f"The most common scene type is {scenes[0].data['class']}{_cite(scenes[0])}.")
        if change := _changed_share_sentence(sheet):
            lines.append(change)
    return " ".join(lines)


def _box_and_centre(d: dict, georef: bool) -> str:
    """``pixel box [x0, y0, x1, y1], centre x=.., y=..`` of an object or change-region fact (centre: map CRS)."""
    return f"pixel box {d['pixel_box_xyxy']}" + (f", centre x={d['centre'][0]:.1f}, y={d['centre'][1]:.1f}"
                                                 if georef else "")


NO_CHANGE_MAP = ("I cannot tell what changed: no change map was computed for this image. Choose a second image "
                 "of the same place to compare with (chat panel: 'Compare with'; API: compare_with) and ask again.")


def _changed_share_sentence(sheet: FactSheet) -> str | None:
    """``12.5% of the area changed, 0.01 km², mostly in the north-east quarter [F9].`` (None without a map)."""
    f = next((f for f in sheet.by_kind("change") if "share_pct" in f.data and "class" not in f.data), None)
    if f is None:
        return None
    d = f.data
    if d["share_pct"] is None:
        return f"The change map has no valid pixels in this area{_cite(f)}."
    if d["share_pct"] == 0:
        return f"Nothing changed in this area: 0% of it changed{_cite(f)}."
    area = f", {area_text(d['area_km2'])}" if d.get("area_km2") else ""
    where = f", mostly in the {d['quadrant']} quarter" if d.get("quadrant") else ", spread over the area"
    return f"{fmt_num(d['share_pct'])}% of the area changed{area}{where}{_cite(f)}."


def _change_answer(question: str, sheet: FactSheet) -> str:
    """What changed against the second image: share and area, then the change regions (where asked, with boxes)."""
    facts = sheet.by_kind("change")
    if not facts:
        return NO_CHANGE_MAP
    lines = []
    if share := _changed_share_sentence(sheet):
        lines.append(share)
    kinds = [f for f in facts if f.data.get("class")]
    if kinds:
        lines.append("By type of change: " + ", ".join(
            f"{f.data['class']} {fmt_num(f.data['share_pct'])}%{_cite(f)}" for f in kinds) + ".")
    regions = next((f for f in facts if "regions" in f.data), None)
    if regions is not None:
        n = regions.data["regions"]
        if n == 0:
            lines.append(f"No change regions were found in this area{_cite(regions)}.")
        else:
            lines.append(f"There {'is 1 change region' if n == 1 else f'are {n} change regions'}"
                         f"{_cite(regions)}.")
            where = bool(re.search(r"\b(where|locate|location|located|which part|show)\b", question, re.I))
            listed = sheet.by_kind("change_region")[:5 if where else 3]
            georef = bool(sheet.info and sheet.info.crs)

            def region(f: Fact) -> str:
                d = f.data
                size = area_text(d["area_m2"] / 1e6) if d.get("area_m2") else ""
                loc = f"{d['quadrant']} quarter"
                if where:
                    loc += f", {_box_and_centre(d, georef)}"
                return f"{d['object_id']} ({', '.join(filter(None, (size, loc)))}){_cite(f)}"

            if listed:
                lines.append(("Largest first: " if not where else "They are at: ")
                             + "; ".join(region(f) for f in listed) + ".")
    return " ".join(lines)


SYSTEM_FREE = (
    "You are a remote-sensing assistant. Answer using ONLY the numbered facts below about the image. "
    "After each claim, cite the fact ID in square brackets, like [F2]. Copy numbers exactly from the facts. "
    "If the facts do not answer the question, say that you cannot tell. Be brief.\n\nFACTS:\n{facts}"
)
SYSTEM_PHRASE = (
    "Rewrite the ANSWER as a short friendly reply to the QUESTION. Keep every number and every [F..] tag "
    "exactly as written. Do not add any new information."
)


def _objects_for(sheet: FactSheet, cited: list[str]) -> list[dict]:
    """Object and change-region facts cited directly, or through a cited count / region-count fact."""
    classes = set()
    ids = set(cited)
    regions = False
    for fid in cited:
        f = sheet.by_id(fid)
        if f and f.kind == "count" and f.data.get("class"):
            classes.add(norm_class(f.data["class"]))
        regions |= bool(f and f.kind == "change" and f.data.get("regions"))
    out = []
    for f in sheet.facts:
        if f.kind == "change_region" and (f.id in ids or regions) or f.kind == "object" and (
                f.id in ids or (f.classes and f.classes[0] in classes)):
            d = f.data
            out.append({"id": d["object_id"], "fact": f.id, "class": d["class"], "score": d["score"],
                        "pixel_box_xyxy": d["pixel_box_xyxy"], "centre": d["centre"], "geometry": f.geometry})
    return out


def _stream_words(text: str, on_token: Callable[[str], None] | None) -> None:
    if on_token:
        for piece in re.findall(r"\S+\s*", text):
            on_token(piece)


def answer_question(question: str, sheet: FactSheet, *, backend: ChatBackend | None = None, mode: str = "auto",
                    history: list[dict] | None = None, on_token: Callable[[str], None] | None = None,
                    max_tokens: int = 160) -> ChatAnswer:
    """Answer ``question`` from ``sheet``.

    Args:
        question: the user's question.
        sheet: facts of the selected raster.
        backend: LM, or None for template answers only.
        mode: ``auto`` (templates for structured intents, LM for free questions), ``template`` (never the
            LM), ``phrase`` (LM rewords the template answer), ``free`` (LM answers every question).
        history: previous ``{"role", "content"}`` messages (last 6 are sent to the LM).
        on_token: receives text as it is produced (the LM's raw stream; templates in word pieces).
        max_tokens: LM generation limit.

    Raises:
        ValueError: unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    t0 = time.perf_counter()
    intent = classify(question)
    tmpl = template_answer(question, sheet, intent, history)
    tmpl_check = verify(tmpl, sheet, question=question)
    # A template without citations is a refusal or "no data" note: rewording it can only lose the refusal
    # (measured: SmolLM2 turned "I cannot tell about trains" into an offer to help with math homework).
    rewordable = bool(tmpl_check.cited)
    use_lm = backend is not None and (mode == "free" or (mode == "phrase" and rewordable)
                                      or (mode == "auto" and intent == "describe"))
    timings: dict[str, float] = {}
    if not use_lm:
        v = verify(tmpl, sheet, question=question)
        _stream_words(v.text, on_token)
        timings["total"] = time.perf_counter() - t0
        return _finish(v, sheet, intent, "template", None, tmpl, timings)

    first: list[float] = []

    def tok(piece: str) -> None:
        if not first:
            first.append(time.perf_counter() - t0)
        if on_token:
            on_token(piece)

    hist = [m for m in (history or [])[-6:] if m.get("role") in ("user", "assistant")]
    if mode == "phrase" or (mode == "auto" and intent != "describe"):
        messages = [{"role": "system", "content": SYSTEM_PHRASE},
                    {"role": "user", "content": f"QUESTION: {question}\nANSWER: {tmpl}"}]
        used = "phrase"
    else:
        # local CPU models get the compact rendering (same IDs and numbers, about half the tokens: prefill
        # time grows with the prompt); endpoint models the full sheet with coordinates
        facts = sheet.to_prompt_text() if getattr(backend, "compact_prompt", False) else sheet.to_text()
        messages = [{"role": "system", "content": SYSTEM_FREE.format(facts=facts)}, *hist,
                    {"role": "user", "content": question}]
        used = "free"
    tg = time.perf_counter()
    raw = backend.generate(messages, max_tokens=max_tokens, stop=["<|im_end|>", "\nQUESTION:"], on_token=tok)
    timings["generate"] = time.perf_counter() - tg
    if first:
        timings["first_token"] = first[0]
    # free-form text must cite a fact in every sentence; a rewording is held to the template's citations
    v = verify(raw, sheet, question=question, require_citation=used == "free")
    # phrase mode must keep the template's facts: a rewording that lost a citation is not accepted
    lost = used == "phrase" and not set(tmpl_check.cited) <= set(v.cited)
    # a template with no citation is a refusal ("I cannot tell about trains", "I have no count for ..."): the
    # facts cannot answer the question, so a free answer that cites some other fact is beside the point
    # (measured: "No wind turbines were detected [F3]", F3 being the ground-track-field count)
    beside = used == "free" and not rewordable and bool(v.text.strip())
    if beside:
        v.problems.append((v.text, "the facts cannot answer this question; the refusal stands"))
    elif used == "free" and v.text.strip() and (missing := _unanswered_classes(question, v.text, sheet, intent)):
        # a count / presence / where answer must be about the class asked for, not another true fact
        beside = True
        v.problems.append((v.text, f"does not answer the question about {', '.join(missing)}"))
    if not v.text.strip() or lost or beside:
        fallback = verify(tmpl, sheet, question=question)
        fallback.problems = v.problems + fallback.problems
        fallback.ok = False
        timings["total"] = time.perf_counter() - t0
        return _finish(fallback, sheet, intent, "fallback", raw, tmpl, timings)
    timings["total"] = time.perf_counter() - t0
    return _finish(v, sheet, intent, used, raw, tmpl, timings)


def _unanswered_classes(question: str, answer: str, sheet: FactSheet, intent: str) -> list[str]:
    """Known classes a count / presence / where question asks about that ``answer`` never mentions."""
    if intent not in ("count", "presence", "where"):
        return []
    asked = {r.key: r.word for r in question_classes(question, sheet) if r.key}
    said = {cls for _, cls in mentioned_classes(answer, class_vocabulary(sheet))}
    return [word for key, word in asked.items() if key not in said]


def _finish(v: Verification, sheet: FactSheet, intent: str, mode: str, raw: str | None, tmpl: str,
            timings: dict[str, float]) -> ChatAnswer:
    return ChatAnswer(
        text=v.text, intent=intent, mode=mode, cited=v.cited, objects=_objects_for(sheet, v.cited),
        crs=sheet.info.crs if sheet.info else None,
        verification={"ok": v.ok, "problems": [{"sentence": s, "reason": r} for s, r in v.problems],
                      "numbers_checked": v.numbers_checked, "numbers_supported": v.numbers_supported,
                      "hallucinated_classes": v.hallucinated_classes},
        raw_lm_text=raw, template_text=tmpl, timings_s={k: round(x, 4) for k, x in timings.items()})


__all__ = ["ChatAnswer", "answer_question", "classify", "template_answer", "display_class"]
