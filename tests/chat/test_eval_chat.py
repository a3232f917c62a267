"""benchmarks/eval_chat.py: statistics helpers and the ``--facts model`` path on a fixture detector package.

The detector test runs a real (tiny, seeded-random) Faster R-CNN package through the backend's job queue on
two small JPEGs of a fixture "NWPU-like" dataset; it is slow only because of torch start-up on this machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests" / "fixtures"))

import eval_chat  # noqa: E402


def test_mcnemar_exact_known_values():
    a = {i: True for i in range(10)}
    b = {i: i >= 5 for i in range(10)}  # 5 discordant pairs, all favouring a
    r = eval_chat.mcnemar_exact(a, b)
    assert (r["n"], r["a_only"], r["b_only"]) == (10, 5, 0)
    assert r["p"] == pytest.approx(2 / 32)  # two-sided exact binomial: 2 * 0.5**5
    assert eval_chat.mcnemar_exact(a, a)["p"] == 1.0
    c = {i: i % 2 == 0 for i in range(12)}
    d = {i: i % 2 == 1 for i in range(12)}  # 6 vs 6: no evidence of a difference
    assert eval_chat.mcnemar_exact(c, d)["p"] == pytest.approx(1.0)
    assert eval_chat.mcnemar_exact({1: True}, {2: False})["n"] == 0  # only common items are paired


def test_correct_by_item_uses_the_scoring_rules():
    items = [{"type": "count", "class": "ship", "gt": 3}, {"type": "presence", "class": "ship", "gt": False},
             {"type": "describe", "class": None, "gt": {}}]
    ok = eval_chat.correct_by_item(items, {0: "There are 3 ship detections [F3].", 1: "Yes, there is.", 2: "x"})
    assert ok == {0: True, 1: False}


def _fixture_dataset(root: Path) -> Path:
    """Two 128 x 96 JPEGs with COCO boxes of the fixture detector's classes (ship, vehicle)."""
    import numpy as np
    from PIL import Image

    data = root / "data"
    (data / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in (1, 2):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(data / "images" / f"{n:03d}.jpg")
    ann = {"images": [{"id": 1, "file_name": "001.jpg", "width": 128, "height": 96},
                      {"id": 2, "file_name": "002.jpg", "width": 128, "height": 96}],
           "categories": [{"id": 1, "name": "ship"}, {"id": 2, "name": "vehicle"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 12]},
                           {"id": 2, "image_id": 1, "category_id": 1, "bbox": [60, 40, 20, 12]},
                           {"id": 3, "image_id": 2, "category_id": 2, "bbox": [5, 70, 8, 8]}]}
    (data / "annotations.json").write_text(json.dumps(ann))
    return data


@pytest.mark.slow
def test_facts_model_runs_the_detector_through_the_backend(tmp_path, monkeypatch):
    from make_fixtures import build_fixture_package

    from backend.chat.facts import PerceptionOutput, read_objects

    data = _fixture_dataset(tmp_path)
    build_fixture_package("object_detection", tmp_path / "models" / "det", name="fixture-det")
    work = tmp_path / "work"

    # 1. the runner: detections come back in pixel space of the JPEG (the GeoTIFF copy is only for the backend)
    runner = eval_chat.DetectorRunner(tmp_path / "models", "fixture-det", work)
    try:
        objs = runner.objects(data / "images" / "001.jpg")
    finally:
        runner.close()
    assert runner.classes == ["ship", "vehicle"] and runner.score_threshold == pytest.approx(0.05)
    gpkg = sorted((work / "out" / "001").rglob("*.gpkg"))
    assert len(gpkg) == 1
    in_map = read_objects(PerceptionOutput(str(gpkg[0]), "object_detection"))
    assert objs, "the seeded fixture detector found nothing at 0.05: the pixel mapping below would be untested"
    assert len(objs) == len(in_map)
    x0, y0 = eval_chat.GEO_ORIGIN
    for o, m in zip(objs, in_map, strict=True):  # pixel = (x - x0) / res, (y0 - y) / res
        mb, pb = m.geometry.bounds, o.geometry.bounds
        assert pb == pytest.approx(((mb[0] - x0), (y0 - mb[3]), (mb[2] - x0), (y0 - mb[1])), abs=1e-6)
        assert -1 <= pb[0] <= pb[2] <= 129 and -1 <= pb[1] <= pb[3] <= 97
    assert (work / "objects" / "fixture-det-001.json").exists()  # cached for a re-run

    # 2. the whole evaluation with GT and detector facts, no LM
    out = tmp_path / "eval.json"
    monkeypatch.setattr(sys, "argv", ["eval_chat.py", "--facts", "gt", "model", "--first", "1", "--last", "2",
                                      "--data", str(data), "--models-dir", str(tmp_path / "models"),
                                      "--model-id", "fixture-det", "--work-dir", str(work), "--no-lm",
                                      "--out", str(out)])
    assert eval_chat.main() == 0
    r = json.loads(out.read_text())
    assert r["images"] == 2 and r["facts"] == ["gt", "model"]
    det = r["detector"]
    assert det["model"] == "fixture-det" and det["pairs"] == 4  # 2 images x 2 classes
    assert det["objects_detected"] >= len(objs)
    rows = {s["facts"]: s for s in r["systems"] if s["system"] == "facts + templates (no LM)"}
    assert rows["gt"]["count_acc"] == 1.0 and rows["gt"]["presence_acc"] == 1.0  # GT facts: exact
    assert rows["model"]["n_count"] == rows["gt"]["n_count"] > 0  # same items, detector facts
    # the detector's count facts are what the template answers state: accuracy == exact-count rate on the
    # asked (image, class) pairs, which here is every pair (both classes asked per image)
    assert rows["model"]["count_acc"] == pytest.approx(det["count_exact_rate"])
    assert r["mcnemar"][0]["a"] == "templates, GT facts" and r["mcnemar"][0]["n"] > 0
