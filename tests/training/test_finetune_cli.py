"""``rsfm-train finetune`` / ``export`` / ``evaluate`` end to end on tiny synthetic fixtures."""

from __future__ import annotations

import json

import pytest
import torch

from training.cli import main
from training.data.make_fixture import write_color_masks, write_levir, write_oscd, write_scenes
from training.package import load_package

COMMON = ["--backbone", "efficientnet_lite0", "--no-pretrained", "--seed", "0", "--threads", "1", "--log-every", "1"]


def _log(path):
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


def test_segmentation_finetune_export_evaluate(tmp_path):
    data = write_color_masks(tmp_path / "seg", groups=3, per_group=2, size=48)
    run = tmp_path / "run"
    argv = ["finetune", "--task", "semantic_segmentation", "--data", str(data), "--dataset", "color_masks",
            "--val-groups", "Tile 2", "--test-groups", "Tile 3", "--out", str(run), *COMMON,
            "--max-steps", "16", "--steps-per-epoch", "4", "--batch-size", "4", "--crop-size", "32",
            "--scale-min", "1", "--scale-max", "1", "--lr", "3e-3", "--head-channels", "16", "--eval-tile", "32",
            "--eval-overlap", "8", "--warmup-steps", "1"]
    assert main(argv) == 0
    epochs = [r for r in _log(run) if "train_loss" in r]
    assert len(epochs) == 4
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]  # it learns
    meta = json.loads((run / "run.json").read_text())
    assert meta["data"]["train_groups"] == ["Tile 1"] and meta["data"]["val_groups"] == ["Tile 2"]
    assert "pretrained" not in meta["architecture_kwargs"]["backbone_kwargs"]

    # Resume continues from last.pt and stops at the new --max-steps.
    assert main([*argv[:argv.index("--max-steps")], "--max-steps", "20", *argv[argv.index("--max-steps") + 2:],
                 "--resume"]) == 0
    ck = torch.load(run / "last.pt", weights_only=False)
    assert ck["step"] == 20

    metrics_file = tmp_path / "metrics.json"
    assert main(["evaluate", str(run / "best.pt"), "--data", str(data), "--dataset", "color_masks",
                 "--val-groups", "Tile 2", "--test-groups", "Tile 3", "--split", "test", "--out",
                 str(metrics_file)]) == 0
    metrics = json.loads(metrics_file.read_text())
    assert 0 <= metrics["mIoU"] <= 1 and "Building" in metrics["per_class"] and metrics["images"] == 2
    assert "Tile 3" in metrics["split"]

    pkg = tmp_path / "pkg"
    assert main(["export", str(run / "best.pt"), "--out", str(pkg), "--metrics", str(metrics_file),
                 "--gsd-m", "0.5", "--gsd-range-m", "0.25,1.0", "--tile-size", "32", "--overlap", "8",
                 "--data-licence", "CC0-1.0"]) == 0
    config, model = load_package(pkg)
    assert config.task == "semantic_segmentation" and config.onnx == "model.onnx"
    assert config.class_names == ["Building", "Water", "Vegetation"]
    assert config.metrics["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-4)
    card = (pkg / "README.md").read_text()
    assert "Held-back metrics" in card and "Max relative error" in card and "CC0-1.0" in card
    # The package gives the same metrics as the checkpoint it came from.
    again = tmp_path / "again.json"
    assert main(["evaluate", str(pkg), "--data", str(data), "--dataset", "color_masks", "--val-groups", "Tile 2",
                 "--test-groups", "Tile 3", "--split", "test", "--out", str(again)]) == 0
    assert json.loads(again.read_text())["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-6)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_scene_classification_finetune_and_label_fraction(tmp_path):
    data = write_scenes(tmp_path / "scenes", per_class=6)
    run = tmp_path / "run"
    assert main(["finetune", "--task", "scene_classification", "--data", str(data), "--out", str(run), *COMMON,
                 "--max-steps", "3", "--batch-size", "4", "--crop-size", "32", "--label-fraction", "0.5"]) == 0
    meta = json.loads((run / "run.json").read_text())
    assert meta["data"]["train_images"] == 6  # 0.5 of 12 (4 per class after the 20 % val cut), stratified
    ck = torch.load(run / "best.pt", weights_only=False)
    assert "OA" in ck["val_metrics"] and len(ck["val_metrics"]["per_class"]) == 3


@pytest.mark.parametrize("kind", ["levir_cd", "oscd"])
def test_change_detection_finetune_and_export(tmp_path, kind):
    data = write_levir(tmp_path / "cd") if kind == "levir_cd" else write_oscd(tmp_path / "cd")
    run = tmp_path / "run"
    split_args = [] if kind == "levir_cd" else ["--val-groups", "cupertino"]
    assert main(["finetune", "--task", "change_detection", "--data", str(data), "--out", str(run), *COMMON,
                 "--max-steps", "2", "--batch-size", "2", "--crop-size", "32", "--head-channels", "8",
                 "--eval-tile", "32", "--eval-overlap", "0", *split_args]) == (0)
    meta = json.loads((run / "run.json").read_text())
    assert meta["data"]["train_images"] == (3 if kind == "levir_cd" else 1)
    pkg = tmp_path / "pkg"
    assert main(["export", str(run / "best.pt"), "--out", str(pkg), "--gsd-m", "0.5", "--no-onnx"]) == 0
    config, model = load_package(pkg)
    assert config.task == "change_detection" and config.onnx is None
    x = torch.zeros(1, 3, 32, 32)
    assert model(x, x).shape == (1, 2, 32, 32)


def test_bad_arguments_are_explained(tmp_path):
    data = write_scenes(tmp_path / "scenes", per_class=3)
    with pytest.raises(ValueError, match="--epochs, --max-steps or --time-budget-min"):
        main(["finetune", "--task", "scene_classification", "--data", str(data), "--out", str(tmp_path / "r"),
              *COMMON])
    with pytest.raises(ValueError, match="--label-fraction"):
        main(["finetune", "--task", "scene_classification", "--data", str(data), "--out", str(tmp_path / "r"),
              *COMMON, "--max-steps", "1", "--label-fraction", "1.5"])
    with pytest.raises(FileNotFoundError, match="--resume"):
        main(["finetune", "--task", "scene_classification", "--data", str(data), "--out", str(tmp_path / "r2"),
              *COMMON, "--max-steps", "1", "--resume"])


def test_scene_split_fractions_are_recorded_and_reused_by_evaluate(tmp_path):
    data = write_scenes(tmp_path / "scenes", per_class=10)
    run = tmp_path / "run"
    assert main(["finetune", "--task", "scene_classification", "--data", str(data), "--out", str(run), *COMMON,
                 "--max-steps", "1", "--batch-size", "4", "--crop-size", "32",
                 "--val-fraction", "0.1", "--test-fraction", "0.2"]) == 0
    meta = json.loads((run / "run.json").read_text())["data"]
    # per class: 7 train, 1 validation, 2 held back (the last file numbers), 3 classes
    assert (meta["train_images"], meta["val_images"]) == (21, 3)
    assert (meta["val_fraction"], meta["test_fraction"]) == (0.1, 0.2)
    out = tmp_path / "test.json"
    # no fractions given: evaluate reads them back from the checkpoint, so "test" is the same held-back part
    assert main(["evaluate", str(run / "best.pt"), "--data", str(data), "--split", "test", "--out", str(out)]) == 0
    per_class = json.loads(out.read_text())["per_class"]
    assert sum(c["support"] for c in per_class.values()) == 6
    assert main(["evaluate", str(run / "best.pt"), "--data", str(data), "--split", "test", "--test-fraction", "0.3",
                 "--out", str(out)]) == 0
    assert sum(c["support"] for c in json.loads(out.read_text())["per_class"].values()) == 9
