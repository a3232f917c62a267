"""Verifier: every number, class name and fact ID in an answer must be supported by the fact sheet.

The answer is split into sentences; a sentence is *unsupported* when it

* cites a fact ID that does not exist (``[F99]``) or an object / change-region ID not in the sheet (``O42``,
  ``C7``);
* states a number that equals no number of the fact sheet (after rounding to the answer's own precision,
  so "about 12%" matches 12.3 %) or of the user's question (count words "two".."twenty" count too), or a
  date that no (cited) fact states;
* claims the presence of a class that the sheet does not list as present (a hallucinated class) —
  a sentence that negates it ("no ships were detected") is fine;
* for free-form LM text (``require_citation``): cites no fact, or cites facts but states none of their
  numbers, classes or object IDs.

Unsupported sentences are removed (``mode="remove"``) or kept with a ``[unverified: ...]`` note
(``mode="flag"``). The result carries the cited fact IDs that survived, for the plugin to draw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from backend.chat.facts import DATE_PATTERN, ID_PATTERN, WORD_NUMBERS, FactSheet, dates_in, norm_class

# Object / land-cover words a small LM tends to invent. Any of these in an answer must be backed by the
# sheet (or negated). The sheet's own known classes are added at run time.
COMMON_CLASS_WORDS = [
    "airplane", "aircraft", "plane", "airport", "runway", "ship", "boat", "vessel", "harbor", "harbour", "port",
    "vehicle", "car", "truck", "bus", "storage tank", "tank", "bridge", "road", "highway", "railway", "building",
    "house", "roof", "tree", "forest", "vegetation", "grass", "farmland", "cropland", "field", "water", "river",
    "lake", "sea", "ocean", "pond", "beach", "sand", "desert", "bare soil", "mountain", "snow", "cloud",
    "tennis court", "basketball court", "baseball diamond", "ground track field", "stadium", "swimming pool",
    "roundabout", "helicopter", "parking lot", "dam", "wind turbine", "solar panel", "urban", "residential",
    "industrial", "park",
]

# Synonyms the question/answer may use for a known class (normalised form → normalised class).
SYNONYMS = {
    "plane": "airplane", "aircraft": "airplane", "aeroplane": "airplane", "jet": "airplane",
    "boat": "ship", "vessel": "ship", "car": "vehicle", "truck": "vehicle", "small vehicle": "vehicle",
    "large vehicle": "vehicle", "tank": "storage tank", "oil tank": "storage tank", "harbour": "harbor",
    "port": "harbor", "track field": "ground track field", "running track": "ground track field",
    "baseball field": "baseball diamond", "sea": "water", "lake": "water", "river": "water",
    "tree": "vegetation", "forest": "vegetation", "grass": "vegetation", "house": "building",
    "road": "road", "street": "road", "building": "building",
}

NEGATION = re.compile(r"\b(no|not|none|without|absent|zero|0|neither|nor|cannot|can't|couldn't|unable|"
                      r"isn't|aren't|wasn't|weren't|don't|doesn't|never)\b", re.I)


@dataclass
class Verification:
    """Outcome of :func:`verify`.

    Attributes:
        text: the answer after removing / flagging unsupported sentences.
        ok: True when nothing was unsupported.
        problems: ``(sentence, reason)`` for each unsupported sentence.
        cited: fact IDs cited by the kept sentences, in order of first use.
        numbers_checked / numbers_supported: counts over the whole answer (for numeric consistency).
        hallucinated_classes: class words claimed present but not in the sheet.
    """

    text: str
    ok: bool
    problems: list[tuple[str, str]] = field(default_factory=list)
    cited: list[str] = field(default_factory=list)
    numbers_checked: int = 0
    numbers_supported: int = 0
    hallucinated_classes: list[str] = field(default_factory=list)


def split_sentences(text: str) -> list[str]:
    """Split on sentence ends and line breaks, keeping decimals ("0.5") and list items intact."""
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z\[\-*•0-9])|\n+", text.strip())
    return [p.strip() for p in parts if p.strip()]


_NUM = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?![\w])")


def extract_numbers(sentence: str) -> list[tuple[float, int]]:
    """``(value, decimals)`` for each number written in digits, skipping fact/object IDs and EPSG codes."""
    s = re.sub(ID_PATTERN, " ", sentence)
    s = re.sub(DATE_PATTERN, " ", s)
    s = re.sub(r"EPSG:\d+", " ", s)
    out = []
    for m in _NUM.finditer(s):
        txt = m.group(0).replace(",", "")
        dec = len(txt.split(".")[1]) if "." in txt else 0
        try:
            out.append((float(txt), dec))
        except ValueError:
            continue
    for w, v in WORD_NUMBERS.items():
        if v >= 2 and re.search(rf"\b{w}\b", s, re.I):  # "one"/"zero" are too often not counts
            out.append((float(v), 0))
    return out


def number_supported(value: float, decimals: int, allowed: list[float]) -> bool:
    """True when ``value`` equals an allowed number rounded to the answer's precision.

    A number written with ``decimals`` decimals matches ``a`` when ``|value - a| <= 0.5 * 10**-decimals``
    (plus a 1 % relative slack for 3-significant-digit rounding of big values such as areas in m²).
    """
    tol = 0.5 * 10 ** (-decimals) + 1e-9
    return any(abs(value - a) <= tol or (a != 0 and abs(value - a) / abs(a) < 0.01 and decimals == 0
                                         and abs(value) >= 100)
               for a in allowed)


def class_vocabulary(sheet: FactSheet) -> dict[str, str]:
    """Normalised word → normalised class it refers to (itself when unknown to the sheet)."""
    vocab = {norm_class(w): norm_class(w) for w in COMMON_CLASS_WORDS}
    for syn, target in SYNONYMS.items():
        vocab[norm_class(syn)] = norm_class(target)
    for k in sheet.known_classes:
        vocab[k] = k
    return vocab


def mentioned_classes(text: str, vocab: dict[str, str]) -> list[tuple[str, str]]:
    """``(word, class)`` for class words in ``text``, longest match first ("storage tank" before "tank")."""
    words = re.sub(r"[_\-]+", " ", text.lower())
    found: list[tuple[str, str]] = []
    taken: list[tuple[int, int]] = []
    for w in sorted(vocab, key=len, reverse=True):
        pat = re.compile(rf"\b{re.escape(w)}(?:s|es)?\b")
        for m in pat.finditer(words):
            if any(a < m.end() and m.start() < b for a, b in taken):
                continue
            taken.append((m.start(), m.end()))
            found.append((w, vocab[w]))
    return found


_OBJECT_ID = r"\b([OC]\d+)\b"  # objects O3 and change regions C2
_COUNT_CLAIM = re.compile(r"(?<![\d.,])\b(\d+|" + "|".join(WORD_NUMBERS) + r"|no)\s+((?:[a-z]+[ _-]){0,2}[a-z]+)", re.I)


def _count_claims(sentence: str, sheet: FactSheet, vocab: dict[str, str]) -> list[str]:
    """Problems with "N <class>" phrases: N must equal the sheet's count for that class (0 when absent)."""
    counts: dict[str, int] = {}
    for f in sheet.facts:
        if f.kind == "count" and f.data.get("class"):
            counts[norm_class(f.data["class"])] = int(f.data["count"])
        elif f.kind == "absent" and "count" in f.data:
            for c in f.classes:
                counts.setdefault(c, 0)
    out = []
    for m in _COUNT_CLAIM.finditer(re.sub(ID_PATTERN, " ", sentence)):
        num, words = m.group(1).lower(), m.group(2).lower()
        n = 0 if num == "no" else WORD_NUMBERS.get(num, None)
        if n is None:
            n = int(num)
        found = mentioned_classes(words, vocab)
        # the class must start the phrase ("3 ships", "3 storage tanks"), not merely follow later
        if not found or not re.sub(r"[_\-]+", " ", words).startswith(found[0][0][:3]):
            continue
        cls = found[0][1]
        if cls in counts and counts[cls] != n:
            out.append(f"says {n} {found[0][0]} but the facts count {counts[cls]}")
    return out


def states_cited(sentence: str, cited: list, vocab: dict[str, str]) -> bool:
    """True when ``sentence`` states a number, a class or an object ID of one of the ``cited`` facts."""
    values = [v for f in cited for v in f.values]
    if any(number_supported(v, dec, values) for v, dec in extract_numbers(sentence)):
        return True
    classes = {c for f in cited for c in f.classes}
    if any(cls in classes for _, cls in mentioned_classes(sentence, vocab)):
        return True
    ids = {str(f.data.get("object_id")) for f in cited if f.data.get("object_id")}
    return any(oid in ids for oid in re.findall(_OBJECT_ID, sentence))


def verify(answer: str, sheet: FactSheet, *, question: str = "", mode: str = "remove",
           require_citation: bool = False) -> Verification:
    """Check ``answer`` against ``sheet``; see the module docstring.

    Args:
        answer: generated text.
        sheet: the fact sheet the answer must be grounded in.
        question: the user's question; numbers it contains may be echoed.
        mode: ``"remove"`` drops unsupported sentences, ``"flag"`` keeps them with a note.
        require_citation: also treat a sentence that cites no fact ID as unsupported (used for free-form
            LM text: "The ships are a testament to the human spirit" has no number or wrong class, but is
            not grounded either).

    Raises:
        ValueError: unknown ``mode``.
    """
    if mode not in ("remove", "flag"):
        raise ValueError(f"mode must be 'remove' or 'flag', got {mode!r}")
    q_values = [v for v, _ in extract_numbers(question)]
    allowed = sheet.all_values() + q_values
    object_ids = {f.data["object_id"] for f in sheet.facts if "object_id" in f.data}
    vocab = class_vocabulary(sheet)
    present = set(sheet.present_classes)
    sheet_dates = {d for f in sheet.facts for d in dates_in(f.text)}
    kept: list[str] = []
    res = Verification(text="", ok=True)
    for sent in split_sentences(answer):
        reasons: list[str] = []
        for fid in re.findall(r"\[?\b(F\d+)\]?", sent):
            if sheet.by_id(fid) is None:
                reasons.append(f"cites {fid}, which is not in the fact sheet")
        for oid in re.findall(_OBJECT_ID, sent):
            if oid not in object_ids:
                reasons.append(f"mentions object {oid}, which is not in the fact sheet")
        cited_here = [f for f in (sheet.by_id(x) for x in re.findall(r"\[?\b(F\d+)\]?", sent)) if f]
        # numbers must come from the facts the sentence cites (from any fact when it cites none)
        pool = [v for f in cited_here for v in f.values] + q_values if cited_here else allowed
        for v, dec in extract_numbers(sent):
            res.numbers_checked += 1
            if number_supported(v, dec, pool):
                res.numbers_supported += 1
            else:
                where = f" cited ({', '.join(f.id for f in cited_here)})" if cited_here else ""
                reasons.append(f"the number {v:g} is not in the{where} facts")
        known_dates = {d for f in cited_here for d in dates_in(f.text)} if cited_here else sheet_dates
        reasons += [f"the date {d[:4]}-{d[4:6]}-{d[6:]} is not in the{' cited' if cited_here else ''} facts"
                    for d in dates_in(sent) if d not in known_dates]
        if require_citation and not cited_here:
            reasons.append("cites no fact")
        # a citation with a bare number ("[F4] 1.") passes every check above but states nothing
        if require_citation and len(re.findall(r"[^\W\d_]{2,}", re.sub(r"\[?\bF\d+\]?", " ", sent))) < 2:
            reasons.append("states nothing besides a citation")
        # a cited sentence must say something its facts hold (measured: a 270M LM copied the instruction
        # "After each claim, cite the fact ID in square brackets, like [F2]." as its answer)
        elif require_citation and cited_here and not states_cited(sent, cited_here, vocab):
            reasons.append(f"cites {', '.join(f.id for f in cited_here)} but states nothing from it")
        wrong_counts = _count_claims(sent, sheet, vocab)
        # a number stated as the count of a class must be that class's count, not just any fact's number
        res.numbers_supported -= min(len(wrong_counts), res.numbers_supported)
        reasons += wrong_counts
        negated = bool(NEGATION.search(sent))
        for word, cls in mentioned_classes(sent, vocab):
            if cls in present or negated:
                continue
            # a generic word ("land", "water") used for a present class with that word inside is fine
            if any(cls in p.split(" ") or cls == p for p in present):
                continue
            reasons.append(f"claims '{word}', which was not detected")
            res.hallucinated_classes.append(word)
        if reasons:
            res.ok = False
            res.problems.append((sent, "; ".join(reasons)))
            if mode == "flag":
                kept.append(f"{sent} [unverified: {'; '.join(reasons)}]")
            continue
        kept.append(sent)
        for fid in re.findall(r"\[?\b(F\d+)\]?", sent):
            if fid not in res.cited:
                res.cited.append(fid)
    res.text = " ".join(kept)
    return res
