"""The verifier catches wrong numbers, wrong counts, hallucinated classes and invented fact IDs."""

from __future__ import annotations

import pytest
from chat_fixtures import DET_CLASSES

from backend.chat.facts import PerceptionOutput, build_fact_sheet
from backend.chat.verifier import extract_numbers, number_supported, split_sentences, verify


@pytest.fixture(scope="module")
def sheet(chat_fixture):
    return build_fact_sheet(chat_fixture["raster"], [PerceptionOutput(chat_fixture["landcover"]),
                                                     PerceptionOutput(chat_fixture["detections"],
                                                                      classes=DET_CLASSES)])


def fid(sheet, cls, kind):
    return sheet.for_class(cls, kind)[0].id


def test_correct_answer_passes(sheet):
    ship, water = fid(sheet, "ship", "count"), fid(sheet, "water", "landcover")
    v = verify(f"There are 3 ships [{ship}]. Water covers about 50% of the image [{water}].", sheet)
    assert v.ok and v.cited == [ship, water] and v.numbers_checked == 2 == v.numbers_supported


def test_wrong_number_removed(sheet):
    ship, water = fid(sheet, "ship", "count"), fid(sheet, "water", "landcover")
    v = verify(f"Water covers 60% of the image [{water}]. There are 3 ships [{ship}].", sheet)
    assert not v.ok
    assert v.text == f"There are 3 ships [{ship}]."
    assert "60" in v.problems[0][1]


def test_wrong_count_caught_even_without_citation(sheet):
    for text in ("There are 5 ships.", "I can see four ships in the water.", "There are 2 ships."):
        v = verify(text, sheet)
        assert not v.ok and v.text == "", text
        assert "facts count 3" in v.problems[0][1]


def test_number_from_the_wrong_fact(sheet):
    total = next(f for f in sheet.by_kind("count") if f.data["class"] is None)
    v = verify(f"The vehicles are 63.2 m apart [{total.id}].", sheet)
    assert not v.ok  # 63.2 exists in the sheet, but not in the fact the sentence cites


def test_hallucinated_class(sheet):
    v = verify("There is a tennis court next to the harbor.", sheet)
    assert not v.ok and v.text == ""
    assert {"tennis court", "harbor"} <= set(v.hallucinated_classes)


def test_negated_absent_class_is_fine(sheet):
    v = verify(f"No airplane was detected [{fid(sheet, 'airplane', 'absent')}].", sheet)
    assert v.ok


def test_invented_fact_and_object_ids(sheet):
    assert not verify("Ships are shown in [F99].", sheet).ok
    assert not verify("O42 is a ship.", sheet).ok
    assert verify("O1 is a ship.", sheet).ok


def test_flag_mode_keeps_sentence_with_note(sheet):
    v = verify("There are 7 ships.", sheet, mode="flag")
    assert v.text.startswith("There are 7 ships.") and "[unverified:" in v.text
    with pytest.raises(ValueError):
        verify("x", sheet, mode="nope")


def test_question_numbers_may_be_echoed(sheet):
    assert verify("Fewer than 17 objects were detected.", sheet, question="Are there more than 17 objects?").ok
    assert not verify("Fewer than 17 objects were detected.", sheet).ok


def test_number_helpers():
    assert extract_numbers("12.5% of [F3], O2 and EPSG:32640, three") == [(12.5, 1), (3.0, 0)]
    assert number_supported(12.0, 0, [12.3]) and not number_supported(12.0, 0, [12.6])
    assert number_supported(0.04, 2, [0.04]) and not number_supported(0.05, 2, [0.04])
    assert split_sentences("A is 0.5 km². B [F2].\nC") == ["A is 0.5 km².", "B [F2].", "C"]


def test_require_citation(sheet):
    ship = fid(sheet, "ship", "count")
    v = verify(f"There are 3 ships [{ship}]. They look lovely.", sheet, require_citation=True)
    assert v.text == f"There are 3 ships [{ship}]." and v.problems[0][1] == "cites no fact"
    assert verify("They look lovely.", sheet).ok  # off by default


def test_a_bare_citation_is_not_an_answer(sheet):
    ship = fid(sheet, "ship", "count")
    v = verify(f"[{ship}] 3. There are 3 ships [{ship}].", sheet, require_citation=True)
    assert v.text == f"There are 3 ships [{ship}]."
    assert v.problems[0][1] == "states nothing besides a citation"
    assert verify(f"[{ship}] 3.", sheet).ok  # only free-form answers (require_citation) must say something
