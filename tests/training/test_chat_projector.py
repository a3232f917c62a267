"""training/chat_projector.py on a tiny random LM: instruction rendering, token layout, and a few AdamW steps
that lower the loss and make the answer depend on the image. No shared data, no SmolLM2, no network."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

from training.chat_projector import (
    MAX_BOXES,
    Encoded,
    Sample,
    a_scene,
    add_arguments,
    batch_loss,
    box_text,
    caption,
    encode,
    evaluate,
    grounding_answer,
    group_batches,
    render_grounding,
    render_instructions,
    render_scene,
    run,
    scene_images,
    train_projector,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
from tiny_lm import tiny_lm as make_tiny_lm  # noqa: E402

pytestmark = pytest.mark.slow

WORDS = ["<unk>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant", "ships", "water", "three", "the",
         "is", "are", "there", "how", "many", "yes", "no", "."]


def tiny_lm():
    return make_tiny_lm(WORDS, initializer_range=0.5)


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


def test_caption_and_caption_group():
    import random

    assert caption({"airplane": 3, "ground_track_field": 1}) == "3 airplanes and 1 ground track field"
    assert caption({"ship": 1, "storage_tank": 2, "harbor": 2}) == "2 harbors, 2 storage tanks and 1 ship"
    assert caption({}) == "no objects of the known classes"
    s = render_instructions("001", {"ship": 2}, ["ship", "vehicle", "harbor", "bridge"], None, random.Random(0))
    assert {x.group for x in s} == {"caption"}
    assert s[0].target == "The image shows 2 ships." and s[0].messages[0]["role"] == "user"
    counts = {x.messages[0]["content"]: x.target for x in s[1:] if "ship" in x.messages[0]["content"]
              and "many" in x.messages[0]["content"]}
    assert all(t == "There are 2 ships." for t in counts.values())


def test_facts_group_cites_sheet(tmp_path):
    """Facts-group targets copy the sheet's numbers and cite the count / absent fact IDs."""
    import random

    import numpy as np
    import rasterio

    from backend.chat.facts import build_fact_sheet, read_coco_objects

    img = tmp_path / "001.tif"
    with rasterio.open(img, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 64, 64), dtype=np.uint8))
    ann = {"categories": [{"id": 1, "name": "ship"}, {"id": 2, "name": "vehicle"}, {"id": 3, "name": "harbor"}],
           "annotations": [{"image_id": 0, "category_id": 1, "bbox": [1, 1, 5, 5], "id": i} for i in range(3)]}
    sheet = build_fact_sheet(str(img), objects=read_coco_objects(ann, 0), object_classes=["ship", "vehicle", "harbor"],
                             score_threshold=0.0)
    s = render_instructions("001", {"ship": 3}, ["ship", "vehicle", "harbor"], sheet, random.Random(0))
    facts = [x for x in s if x.group == "facts"]
    assert facts and all(x.messages[0]["role"] == "system" and "FACTS:" in x.messages[0]["content"] for x in facts)
    count_id = next(f.id for f in sheet.by_kind("count") if f.classes == ["ship"])
    by_q = {x.messages[1]["content"]: x.target for x in facts}
    ship_count = [t for q, t in by_q.items() if "ships" in q and ("many" in q or "Count" in q)]
    assert ship_count == [f"There are 3 ships [{count_id}]."]
    absent = [t for q, t in by_q.items() if "vehicles" in q and ("many" in q or "Count" in q)]
    assert absent and absent[0].startswith("No vehicles were detected [F")
    assert any(t.startswith("I cannot tell") for t in by_q.values())


def test_grounding_answers_carry_the_boxes():
    """Boxes in whole percent of width and height, reading order, the largest MAX_BOXES, absent classes."""
    size = (200, 100)
    assert box_text((20, 10, 40, 30), size) == "[10, 10, 20, 30]"
    assert box_text((-3, 0, 205, 100), size) == "[0, 0, 100, 100]"  # clipped to the image
    two = grounding_answer("ship", [(100, 60, 120, 70), (20, 10, 40, 30)], size)
    assert two == "2 ships at [10, 10, 20, 30] and [50, 60, 60, 70]."  # top one first
    assert grounding_answer("ship", [(0, 0, 2, 2)], size) == "1 ship at [0, 0, 1, 2]."
    assert grounding_answer("storage_tank", [], size) == "There are no storage tanks."
    many = [(10 * i, 0, 10 * i + i + 1, 10) for i in range(MAX_BOXES + 3)]  # box i is (i + 1) pixels wide
    text = grounding_answer("vehicle", many, size)
    assert text.startswith(f"{MAX_BOXES + 3} vehicles, the {MAX_BOXES} largest at [15, 0, ")
    assert text.count("[") == MAX_BOXES and "[0, 0, 1, 10]" not in text  # the smallest left out


def test_render_grounding_asks_present_and_one_absent_class():
    import random

    objects = [("ship", (0.0, 0.0, 10.0, 10.0)), ("ship", (50.0, 50.0, 60.0, 60.0)), ("harbor", (0.0, 80.0, 90.0, 99.0))]
    s = render_grounding("001", objects, (100, 100), ["ship", "harbor", "vehicle", "bridge"], random.Random(0))
    assert {x.group for x in s} == {"grounding"} and all(x.messages[0]["role"] == "user" for x in s)
    by_target = {x.target for x in s}
    assert "2 ships at [0, 0, 10, 10] and [50, 50, 60, 60]." in by_target
    assert "1 harbor at [0, 80, 90, 99]." in by_target
    assert len(s) == 3 and sum(t.startswith("There are no ") for t in by_target) == 1
    assert all(any(w in x.messages[0]["content"] for w in ("Where", "Locate", "bounding boxes")) for x in s)


def test_scene_instructions_and_images(tmp_path):
    import random

    from training.data.make_fixture import write_scenes

    assert a_scene("DenseResidential") == "a dense residential scene" and a_scene("Airport") == "an airport scene"
    s = render_scene("k", "Airport", ["Airport", "Beach", "BareLand"], random.Random(0))
    assert [x.group for x in s] == ["scene"] * 3
    assert s[0].target == "This is an airport scene."
    assert (s[1].messages[0]["content"], s[1].target) == ("Is this an airport scene?", "Yes.")
    assert s[2].target == "No." and "airport" not in s[2].messages[0]["content"]
    root = write_scenes(tmp_path / "aid", per_class=10)
    train, test = scene_images(root, "train", 3), scene_images(root, "test", 5)
    classes = sorted({c for _, _, c in train})
    assert len(classes) >= 2 and len(train) == 3 * len(classes)
    assert all(k == f"aid/{c}/{p.stem}" and p.parent.name == c for k, p, c in train)
    assert len(test) == 2 * len(classes)  # 20 % of 10 per class: fewer than asked, all of them
    assert not {k for k, _, _ in train} & {k for k, _, _ in test}  # the scene group never sees the test split


def test_encode_layout(lm):
    s = Sample("a", "facts", [{"role": "system", "content": "the water"}, {"role": "user", "content": "how many ships"}],
               "three ships .")
    e = encode(lm, s)
    full = lm.prompt_ids(s.messages)[0].tolist()
    assert list(e.prefix) + e.suffix[:e.n_prompt] == full
    assert [WORDS[i] for i in e.suffix[:3]] == ["how", "many", "ships"]
    assert [WORDS[i] for i in e.suffix[e.n_prompt:]] == ["three", "ships", ".", "<|im_end|>"]


def _toy(lm) -> tuple[dict[str, torch.Tensor], list[Encoded]]:
    """Two images with different features; the same question has the answer 'yes' on one and 'no' on the other,
    so only the image can lower the loss below log 2."""
    from backend.chat.visual import ProjectorConfig, VisualProjector

    torch.manual_seed(0)
    feats = {"a": torch.randn(5, 56), "b": torch.randn(5, 56)}
    msgs = [{"role": "system", "content": "the water"}, {"role": "user", "content": "is there ships"}]
    enc = [encode(lm, Sample("a", "facts", msgs, "yes")), encode(lm, Sample("b", "facts", msgs, "no"))]
    proj = VisualProjector(ProjectorConfig(in_channels=[4, 6, 8, 10], hidden_size=16, grid=2, mlp_dim=32))
    proj.match_scale(float(lm.model.get_input_embeddings().weight.std()))
    return feats, enc, proj


def test_few_steps_lower_loss_and_use_the_image(lm):
    feats, enc, proj = _toy(lm)
    groups = group_batches(enc)
    before = evaluate(lm, proj, feats, groups)["all"]
    hist = train_projector(lm, proj, feats, enc, enc, steps=40, batch=1, lr=1e-2, warmup=2, eval_every=0)
    after = evaluate(lm, proj, feats, groups)["all"]
    shuffled = evaluate(lm, proj, feats, groups, shuffle=True)["all"]
    assert hist["steps_done"] == 40 and len(hist["train"]) == 40
    assert after < 0.5 * before
    assert shuffled > after + 1.0  # the answer comes from the image: the other image's tokens give it wrong
    assert hist["val"][0]["step"] == 0 and hist["val"][-1]["step"] == 40
    assert not any(p.requires_grad for p in lm.model.parameters())  # LM frozen


def test_batch_loss_shares_prefix(lm):
    """A batch of 2 questions with one shared prefix KV cache gives the mean of the single-sample losses."""
    feats, _, proj = _toy(lm)
    msgs1 = [{"role": "system", "content": "the water"}, {"role": "user", "content": "is there ships"}]
    msgs2 = [{"role": "system", "content": "the water"}, {"role": "user", "content": "how many ships are there"}]
    e1, e2 = encode(lm, Sample("a", "facts", msgs1, "yes")), encode(lm, Sample("a", "facts", msgs2, "three ships"))
    assert e1.prefix == e2.prefix
    with torch.no_grad():
        both = float(batch_loss(lm, proj, feats["a"], [e1, e2]))
        l1 = float(batch_loss(lm, proj, feats["a"], [e1]))
        l2 = float(batch_loss(lm, proj, feats["a"], [e2]))
    # token-weighted mean: e1 has 2 answer tokens (yes, end), e2 has 3
    assert both == pytest.approx((2 * l1 + 3 * l2) / 5, rel=1e-4)


def test_cli_refuses_evaluation_images():
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--out", "/nonexistent", "--val", "450", "470"])
    with pytest.raises(SystemExit, match="chat evaluation"):
        run(args)


@pytest.mark.parametrize("mode", ["lora", "bias-scale"])
def test_projector_with_lm_tuning_trains_both(mode):
    """--lm-tuning: the adapter trains with the projector (its own learning rate), the LM's weights stay."""
    from backend.chat.lm_tuning import LMTuning, attach

    lm = tiny_lm()
    feats, enc, proj = _toy(lm)
    base = {k: v.clone() for k, v in lm.model.state_dict().items()}
    lm_params = attach(lm.model, LMTuning(mode, rank=2, alpha=4))
    start = [p.detach().clone() for p in lm_params]
    groups = group_batches(enc)
    before = evaluate(lm, proj, feats, groups)["all"]
    hist = train_projector(lm, proj, feats, enc, enc, steps=40, batch=1, lr=1e-2, warmup=2, eval_every=0,
                           lm_params=lm_params, lm_lr=1e-2)
    after = evaluate(lm, proj, feats, groups)["all"]
    assert hist["steps_done"] == 40 and after < 0.5 * before
    assert all(p.requires_grad for p in lm_params)
    assert sum(p.requires_grad for p in lm.model.parameters()) == len(lm_params)
    assert any(not torch.equal(p, s) for p, s in zip(lm_params, start, strict=True))  # the adapter moved
    now = {k.replace(".base.", "."): v for k, v in lm.model.state_dict().items()}
    assert all(torch.equal(now[k], v) for k, v in base.items())  # the LM's own weights did not


def test_rows_of_several_images_share_a_prefix(lm):
    """B x N x D features: each row gets its own image's tokens; the loss is the token-weighted mean of the
    single-image losses, and a training step can mix images (--images-per-step)."""
    feats, enc, proj = _toy(lm)
    assert enc[0].prefix == enc[1].prefix and enc[0].image != enc[1].image
    with torch.no_grad():
        both = float(batch_loss(lm, proj, torch.stack([feats["a"], feats["b"]]), enc))
        la, lb = float(batch_loss(lm, proj, feats["a"], enc[:1])), float(batch_loss(lm, proj, feats["b"], enc[1:]))
    assert both == pytest.approx((la + lb) / 2, rel=1e-4)  # one answer token + end each
    groups = group_batches(enc)
    before = evaluate(lm, proj, feats, groups)["all"]
    hist = train_projector(lm, proj, feats, enc, None, steps=25, batch=1, lr=1e-2, warmup=2, eval_every=0,
                           images_per_step=2, groups_cycle=["facts"])
    assert hist["steps_done"] == 25
    assert evaluate(lm, proj, feats, groups)["all"] < 0.5 * before
    assert evaluate(lm, proj, feats, groups, shuffle=True)["all"] > evaluate(lm, proj, feats, groups)["all"] + 1.0
    with pytest.raises(ValueError, match=r"no training instructions of group\(s\) \['caption'\]"):
        train_projector(lm, proj, feats, enc, None, steps=1, groups_cycle=["caption"])
