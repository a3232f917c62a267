"""Detection trainer: a tiny synthetic COCO set written by the test; training (losses fall), checkpoint /
resume, evaluation metrics, score-threshold choice, export to a package and a run through the backend."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from training import detection_trainer as dt
from training.package import load_package

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))

CLASSES = [{"id": 1, "name": "red_square"}, {"id": 2, "name": "green_bar"}]
SIZE = 96


import tiny_backbone  # noqa: E402,F401 - registers the "tiny_pyramid_test" backbone


def _objects(i: int) -> list[tuple[int, list[float]]]:
    """Deterministic objects of image ``i``: (category id, polygon [x0, y0, x1, y1, ...])."""
    rng = np.random.default_rng(i)
    objs = []
    x, y = rng.integers(4, 40, 2)
    objs.append((1, [x, y, x + 24, y, x + 24, y + 24, x, y + 24]))  # red square 24 x 24
    x, y = rng.integers(50, 60), rng.integers(10, 50)
    objs.append((2, [x, y, x + 12, y, x + 12, y + 36, x, y + 36]))  # green bar 12 x 36
    return [(c, [float(v) for v in p]) for c, p in objs]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    """Eight 96 x 96 PNGs ``001.png`` .. ``008.png`` with a red square and a green bar each, COCO JSON."""
    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    images, anns = [], []
    for i in range(1, 9):
        img = np.full((SIZE, SIZE, 3), 40, dtype=np.uint8)
        for c, p in _objects(i):
            x0, y0, x1, y1 = int(p[0]), int(p[1]), int(p[4]), int(p[5])
            img[y0:y1, x0:x1] = (230, 30, 30) if c == 1 else (30, 220, 30)
            anns.append({"id": len(anns), "image_id": i - 1, "category_id": c, "iscrowd": 0,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float((x1 - x0) * (y1 - y0)),
                         "segmentation": [p]})  # fmt: skip
        Image.fromarray(img).save(root / "images" / f"{i:03d}.png")
        images.append({"id": i - 1, "file_name": f"{i:03d}.png", "width": SIZE, "height": SIZE})
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": CLASSES}))
    return root


def _train_args(root: Path, out: Path, task: str = "object_detection", **kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    dt.add_arguments(p)
    argv = ["--task", task, "--data", str(root), "--out", str(out), "--backbone", "tiny_pyramid_test",
            "--no-pretrained", "--fpn-channels", "16", "--train-range", "1-6", "--val-range", "7-7",
            "--test-range", "8-8", "--crop-size", "96", "--scale-min", "1", "--scale-max", "1", "--batch-size", "2",
            "--lr", "1e-3", "--warmup-steps", "2", "--log-every", "1", "--val-every-min", "100", "--device", "cpu"]  # fmt: skip
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}"] if v is True else [f"--{k.replace('_', '-')}", str(v)]
    return p.parse_args(argv)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(coco_root, tmp_path_factory) -> Path:
    """A 24-step Faster R-CNN run on the synthetic set (shared by the export/backend tests)."""
    out = tmp_path_factory.mktemp("run")
    assert dt.run(_train_args(coco_root, out, max_steps=24, seed=0)) == 0
    return out


def test_parse_range_and_split(coco_root):
    from training.data.splits import parse_range

    assert parse_range("1-440") == (1, 440)
    for bad in ("440-1", "1..3", "", "a-b"):
        with pytest.raises(ValueError, match="FIRST-LAST"):
            parse_range(bad)
    base = dt._base_dataset(argparse.Namespace(data=str(coco_root), dataset="coco", ann_file=None))
    ns = argparse.Namespace(data=str(coco_root), train_range="1-6", val_range="7-7", test_range="8-8",
                            label_fraction=1.0, seed=0)  # fmt: skip
    assert dt.build_split(base, "train", ns) == list(range(6))
    assert dt.build_split(base, "test", ns) == [7]
    ns.label_fraction = 0.5
    half = dt.build_split(base, "train", ns)
    assert len(half) == 3 and set(half) <= set(range(6)) and half == dt.build_split(base, "train", ns)
    ns.test_range = "50-60"
    with pytest.raises(ValueError, match="test-range"):
        dt.build_split(base, "test", ns)


def test_training_losses_fall_and_checkpoints(trained):
    log = [r for r in _log(trained) if "loss" in r]
    assert [r["step"] for r in log] == list(range(1, 25))
    assert all(math.isfinite(r["loss"]) for r in log)
    first = np.mean([r["loss"] for r in log[:3]])
    last = np.mean([r["loss"] for r in log[-3:]])
    assert last < 0.7 * first, (first, last)
    assert log[0]["lr"] < log[2]["lr"]  # warm-up
    assert log[-1]["lr"] < log[3]["lr"]  # cosine decay
    ck = torch.load(trained / "last.pt", weights_only=False)
    assert ck["step"] == 24 and ck["meta"]["task"] == "object_detection"
    assert ck["meta"]["data"]["class_counts"]["train"] == {"red_square": 6, "green_bar": 6}
    assert (trained / "best.pt").is_file()
    assert any("val_mAP" in r for r in _log(trained))


def test_resume_continues_from_last_checkpoint(coco_root, tmp_path):
    out = tmp_path / "r"
    dt.run(_train_args(coco_root, out, max_steps=3))
    ck3 = torch.load(out / "last.pt", weights_only=False)
    dt.run(_train_args(coco_root, out, max_steps=5, resume=True))
    ck5 = torch.load(out / "last.pt", weights_only=False)
    assert ck3["step"] == 3 and ck5["step"] == 5
    steps = [r["step"] for r in _log(out) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5]  # no step repeated, none skipped
    # optimizer state was carried over (AdamW step counts continue)
    s3 = next(iter(ck3["optimizer"]["state"].values()))["step"]
    s5 = next(iter(ck5["optimizer"]["state"].values()))["step"]
    assert float(s5) == float(s3) + 2


def test_resume_without_checkpoint_fails_clearly(coco_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="drop --resume"):
        dt.run(_train_args(coco_root, tmp_path / "none", max_steps=1, resume=True))


@pytest.mark.parametrize("task", ["rotated_detection", "instance_segmentation"])
def test_other_tasks_train_and_evaluate(coco_root, tmp_path, task):
    out = tmp_path / task
    assert dt.run(_train_args(coco_root, out, task=task, max_steps=2)) == 0
    rec = [r for r in _log(out) if "loss" in r][-1]
    keys = {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"} | ({"loss_mask"} if task != "rotated_detection" else set())
    assert keys <= set(rec)
    ns = argparse.Namespace(model=str(out / "last.pt"), data=str(coco_root), dataset="coco", ann_file=None,
                            train_range="1-6", val_range="7-7", test_range="8-8", split="test", limit=None,
                            threads=None, out=str(tmp_path / "m.json"))  # fmt: skip
    assert dt.run_evaluate(ns) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    if task == "rotated_detection":
        assert {"rbox_mAP", "dota_mAP50"} <= set(m)
    else:
        assert {"bbox_mAP", "segm_mAP", "segm_per_class_AP50"} <= set(m)
    assert m["class_counts"] == {"red_square": 1, "green_bar": 1}


def _gt(boxes, labels):
    return {"boxes_xyxy": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


def test_evaluate_detector_perfect_and_wrong_class():
    gts = [_gt([[0, 0, 10, 10], [20, 20, 40, 30]], [0, 1])]
    perfect = [dict(_gt([[0, 0, 10, 10], [20, 20, 40, 30]], [0, 1]), scores=torch.tensor([0.9, 0.8]))]
    m = dt.evaluate_detector(perfect, gts, "object_detection", ["a", "b", "c"])
    assert m["mAP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)
    assert math.isnan(m["bbox_per_class_AP"]["c"])  # class absent from the split
    swapped = [dict(_gt([[0, 0, 10, 10], [20, 20, 40, 30]], [1, 0]), scores=torch.tensor([0.9, 0.8]))]
    assert dt.evaluate_detector(swapped, gts, "object_detection", ["a", "b"])["mAP"] == pytest.approx(0.0)


def test_choose_score_threshold_separates_true_from_false_positives():
    gts = [_gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    # two true positives at 0.9 / 0.7, false positives at 0.6 and 0.3
    preds = [dict(_gt([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [70, 70, 80, 80]], [0, 0, 0, 0]),
                  scores=torch.tensor([0.9, 0.7, 0.6, 0.3]))]  # fmt: skip
    thr, f1 = dt.choose_score_threshold(preds, gts, "object_detection")
    assert 0.6 < thr <= 0.7 and f1 == pytest.approx(1.0)


def test_export_package_and_backend_contract(trained, coco_root, tmp_path):
    ev = argparse.Namespace(model=str(trained / "best.pt"), data=str(coco_root), dataset="coco", ann_file=None,
                            train_range="1-6", val_range="7-7", test_range="8-8", split="test", limit=None,
                            threads=None, out=str(tmp_path / "metrics.json"))  # fmt: skip
    dt.run_evaluate(ev)
    p = argparse.ArgumentParser()
    dt.add_export_arguments(p)
    pkg = tmp_path / "pkg"
    args = p.parse_args([str(trained / "best.pt"), "--data", str(coco_root), "--train-range", "1-6",
                         "--val-range", "7-7", "--test-range", "8-8", "--out", str(pkg), "--gsd-m", "1.0",
                         "--gsd-range-m", "0.5,2", "--tile-size", "64", "--overlap", "16",
                         "--metrics", str(tmp_path / "metrics.json"), "--data-licence", "synthetic"])  # fmt: skip
    assert dt.run_export(args) == 0
    cfg, model = load_package(pkg)
    assert cfg.task == "object_detection" and cfg.class_names == ["red_square", "green_bar"]
    assert 0.05 <= cfg.score_threshold <= 0.95 and cfg.gsd_range_m == (0.5, 2.0)
    assert cfg.mean == [123.675, 116.28, 103.53]  # ImageNet statistics for a non-EfficientNet backbone
    assert cfg.metrics["split"].startswith("test") and "per_class_AP50_bbox" in cfg.metrics
    card = (pkg / "README.md").read_text()
    for needle in ("## Held-back metrics", "| test |", "validation split 7-7", "synthetic", "red_square"):
        assert needle in card
    # model call convention (docs/CONTRACTS.md): list of dicts with boxes_xyxy (N, 4), scores (N), labels (N)
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 64, 64))
    assert len(out) == 2
    for o in out:
        n = len(o["scores"])
        assert o["boxes_xyxy"].shape == (n, 4) and o["labels"].shape == (n,) and o["labels"].dtype == torch.int64

    # through the backend's job runner on a GeoTIFF made from a test image
    from make_fixtures import write_fixture_raster

    from backend.jobs import Job, JobContext
    from backend.models import ModelRegistry
    from backend.runtimes import RuntimeCache
    from backend.settings import Settings
    from backend.tasks import build_spec, run_spec

    img = np.asarray(Image.open(coco_root / "images" / "008.png")).transpose(2, 0, 1)
    raster = write_fixture_raster(tmp_path / "scene.tif", width=SIZE, height=SIZE, data=img, gsd_m=1.0)
    app = SimpleNamespace(models=ModelRegistry([tmp_path], include_bundled=False),
                          settings=Settings.resolve({}, env={}), device="cpu", runtimes=RuntimeCache())  # fmt: skip
    spec = build_spec(app, {"task": "object_detection", "model": "pkg", "inputs": {"raster": str(raster)},
                            "output_dir": str(tmp_path / "out"), "options": {"score_threshold": 0.0}})  # fmt: skip
    result = run_spec(app, spec, JobContext(Job(task=spec.task, model=spec.entry.id, runner=lambda c: {})))
    import pyogrio

    (vec,) = result["outputs"]
    info = pyogrio.read_info(vec["path"], layer="detections")
    assert {"class_id", "class_name", "score", "area_m2"} <= set(info["fields"])
    assert info["features"] == result["stats"]["detections"]


def test_finetune_style_namespace_is_accepted(coco_root, tmp_path):
    """``rsfm-train finetune`` hands over its own namespace: None step counts, epochs, no detection options."""
    out = tmp_path / "ft"
    ns = argparse.Namespace(task="object_detection", backbone="tiny_pyramid_test", backbone_kwargs="{}",
                            pretrained=False, data=str(coco_root), dataset="auto", out=str(out), label_fraction=1.0,
                            seed=0, epochs=1, max_steps=None, time_budget_min=None, resume=False, batch_size=2,
                            lr=1e-3, weight_decay=0.05, warmup_steps=None, crop_size=96, scale_min=1.0,
                            scale_max=1.0, workers=0, threads=None, device="cpu", log_every=1,
                            train_range="1-6", val_range="7-7", test_range="8-8", fpn_channels=16)  # fmt: skip
    assert dt.run(ns) == 0
    assert [r["step"] for r in _log(out) if "loss" in r] == [1, 2, 3]  # one epoch of 6 images, batch 2
    assert dt.task_of(out / "last.pt") == "object_detection"


def test_rsfm_train_finetune_and_evaluate_dispatch_detection(coco_root, tmp_path):
    """The user-facing commands route detection tasks to this trainer (``rsfm-train finetune/evaluate``)."""
    from training.cli import main

    out = tmp_path / "cli"
    argv = ["finetune", "--task", "object_detection", "--backbone", "tiny_pyramid_test", "--no-pretrained",
            "--data", str(coco_root), "--out", str(out), "--epochs", "1", "--batch-size", "2", "--crop-size", "96",
            "--scale-min", "1", "--scale-max", "1", "--train-range", "1-6", "--val-range", "7-7",
            "--test-range", "8-8", "--device", "cpu", "--log-every", "1"]  # fmt: skip
    assert main(argv) == 0
    assert dt.task_of(out / "last.pt") == "object_detection"
    metrics = tmp_path / "m.json"
    assert main(["evaluate", str(out / "last.pt"), "--data", str(coco_root), "--split", "test",
                 "--train-range", "1-6", "--val-range", "7-7", "--test-range", "8-8", "--out", str(metrics)]) == 0
    assert "mAP" in json.loads(metrics.read_text())


def test_backbone_weights_start_the_detector_from_an_encoder_file(coco_root, tmp_path):
    """``--backbone-weights`` (an MTP encoder) is loaded into the detector's backbone before training."""
    from safetensors.torch import save_file

    from training.models import create_model

    enc = create_model("tiny_pyramid_test")
    with torch.no_grad():
        for i, prm in enumerate(enc.parameters()):
            prm.fill_(0.01 * (i + 1))  # no random init can produce these
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(path))
    out = tmp_path / "from_encoder"
    assert dt.run(_train_args(coco_root, out, max_steps=1, lr=0.0, backbone_weights=path)) == 0  # lr 0: no update
    model = torch.load(out / "last.pt", weights_only=False)["model"]
    for name, prm in enc.named_parameters():
        torch.testing.assert_close(model[f"backbone.{name}"], prm.detach(), msg=name)
    with pytest.raises(ValueError, match="no tensor matches backbone keys"):
        bad = tmp_path / "bad.safetensors"
        save_file({"head.weight": torch.zeros(2)}, str(bad))
        dt.run(_train_args(coco_root, tmp_path / "bad", max_steps=1, backbone_weights=bad))
