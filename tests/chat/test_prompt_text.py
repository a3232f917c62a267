"""The compact fact sheet the LM gets (``FactSheet.to_prompt_text``): every fact ID, only the facts' own numbers."""

from __future__ import annotations

import re

import pytest
from chat_fixtures import DET_CLASSES

from backend.chat.facts import (
    DetectedObject,
    Fact,
    PerceptionOutput,
    build_fact_sheet,
    compact_fact_text,
    numbers_in,
)
from backend.chat.verifier import verify


def fixture_sheet(fx):
    return build_fact_sheet(fx["raster"], [PerceptionOutput(fx["landcover"]),
                                           PerceptionOutput(fx["detections"], classes=DET_CLASSES)])


def many_objects_sheet(tmp_path):
    """Ungeoreferenced image (no GSD), 14 objects: more than top_n, so a 'relation' fact exists too."""
    import numpy as np
    import rasterio
    import shapely

    path = tmp_path / "plain.png"
    with rasterio.open(path, "w", driver="PNG", width=300, height=200, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 200, 300), np.uint8))
    objs = [DetectedObject("storage_tank" if i % 3 else "ship", 0.5 + i / 40, shapely.box(10 + 20 * i, 20, 25 + 20 * i, 40),
                           "object_detection") for i in range(14)]
    return build_fact_sheet(str(path), objects=objs, object_classes=["ship", "storage_tank", "airplane"],
                            score_threshold=0.3)


def sheets(fx, tmp_path):
    return [fixture_sheet(fx), many_objects_sheet(tmp_path)]


def test_every_fact_id_once_per_line_in_order(chat_fixture, tmp_path):
    for sheet in sheets(chat_fixture, tmp_path):
        lines = sheet.to_prompt_text().splitlines()
        assert [re.match(r"\[(F\d+)\] \S", ln).group(1) for ln in lines] == [f.id for f in sheet.facts]
        assert {f.kind for f in sheet.facts} >= {"meta", "count", "absent", "object"}


def test_compact_numbers_are_the_facts_own_numbers(chat_fixture, tmp_path):
    """An LM that copies a number from the compact sheet writes a number the verifier finds in that fact."""
    for sheet in sheets(chat_fixture, tmp_path):
        for f in sheet.facts:
            short = compact_fact_text(f)
            assert short and short != f.text or f.kind == "relation", (f.id, short)
            missing = [v for v in numbers_in(short) if v not in f.values]
            assert not missing, (f.id, short, missing)


def test_compact_is_much_shorter_and_keeps_counts_and_classes(chat_fixture, tmp_path):
    for sheet in sheets(chat_fixture, tmp_path):
        full, short = sheet.to_text(), sheet.to_prompt_text()
        assert len(short) < 0.6 * len(full)
        for f in sheet.by_kind("count"):
            line = next(ln for ln in short.splitlines() if ln.startswith(f"[{f.id}]"))
            assert str(f.data["count"]) in line
            if f.data.get("class"):
                assert f.data["class"] in line
    text = fixture_sheet(chat_fixture).to_prompt_text()
    assert "[F7] ship: 3 (score>=0.3): 2 NW, 1 SW; footprint 2400 m²" in text
    assert "[F10] O1 ship 0.95 NW box 10 10 20 30" in text
    assert "EPSG" not in text and "lon " not in text  # map coordinates are for the user, not the LM


def test_copied_compact_count_lines_pass_the_verifier(chat_fixture):
    sheet = fixture_sheet(chat_fixture)
    for f in sheet.by_kind("count"):
        d = f.data
        name = d["class"] or "objects"
        answer = f"There are {d['count']} {name} detected [{f.id}]."
        assert verify(answer, sheet, require_citation=True).ok, answer


def test_unknown_fact_shapes_fall_back_to_the_full_wording():
    f = Fact("F1", "count", "7 things.", [7.0], [], {"class": "x"})  # no 'count' / 'threshold' keys
    assert compact_fact_text(f) == "7 things."
    g = Fact("F2", "weird", "Something else.", [], [], {})
    assert compact_fact_text(g) == "Something else."


@pytest.mark.parametrize("compact", [True, False])
def test_free_mode_sends_the_sheet_the_backend_asks_for(chat_fixture, compact):
    from backend.chat.lm import BuiltinBackend, ChatBackend, HFDirBackend, OpenAIBackend
    from backend.chat.router import answer_question

    class Recorder(ChatBackend):  # a backend that records its prompt (the LM itself is not under test)
        compact_prompt = compact

        def generate(self, messages, max_tokens=256, stop=None, on_token=None) -> str:
            self.messages = messages
            return "There are 3 ship detections [F7]."

    sheet = fixture_sheet(chat_fixture)
    rec = Recorder()
    ans = answer_question("Describe this image.", sheet, backend=rec, mode="free")
    sent = rec.messages[0]["content"]
    assert (sheet.to_prompt_text() in sent) is compact and (sheet.to_text() in sent) is not compact
    assert ans.mode == "free" and ans.cited == ["F7"]
    # the local CPU models want the compact sheet, endpoint models the full one
    assert BuiltinBackend.compact_prompt and HFDirBackend.compact_prompt and not OpenAIBackend.compact_prompt
