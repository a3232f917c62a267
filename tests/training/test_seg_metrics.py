"""Confusion matrix, IoU/F1/OA and change metrics against hand-computed values; sliding-window inference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from training.eval.segmentation import (
    change_metrics,
    confusion_matrix,
    segmentation_metrics,
    sliding_window_logits,
    tile_starts,
)


def test_confusion_matrix_counts_and_ignores():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, 3, ignore_index=255)
    # rows = true, cols = predicted; the ignored pixel (pred 2) is not counted.
    assert cm.tolist() == [[1, 1, 0], [1, 2, 0], [1, 0, 1]]
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(torch.tensor([5]), torch.tensor([0]), 3)


def test_segmentation_metrics_hand_computed():
    cm = np.array([[1, 1, 0], [1, 2, 0], [1, 0, 1]])
    m = segmentation_metrics(cm, ["a", "b", "c"])
    # class a: tp 1, fn 1, fp 2 -> IoU 1/4, F1 2/5; b: tp 2, fn 1, fp 1 -> IoU 2/4, F1 4/6; c: tp 1, fn 1, fp 0 -> 1/2, 2/3
    assert m["per_class"]["a"]["IoU"] == pytest.approx(0.25)
    assert m["per_class"]["a"]["F1"] == pytest.approx(0.4)
    assert m["per_class"]["b"]["IoU"] == pytest.approx(0.5)
    assert m["per_class"]["b"]["F1"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["IoU"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["precision"] == pytest.approx(1.0)
    assert m["mIoU"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert m["mF1"] == pytest.approx((0.4 + 2 / 3 + 2 / 3) / 3)
    assert m["OA"] == pytest.approx(4 / 7)
    assert m["per_class"]["b"]["support"] == 3


def test_absent_class_is_skipped_but_false_positive_class_counts():
    cm = np.array([[3, 0, 1], [0, 2, 0], [0, 0, 0]])  # class 2 absent from labels but predicted once
    m = segmentation_metrics(cm)
    assert m["per_class"]["2"]["IoU"] == 0.0
    cm2 = np.array([[3, 0, 0], [0, 2, 0], [0, 0, 0]])  # class 2 absent and never predicted
    m2 = segmentation_metrics(cm2)
    assert math.isnan(m2["per_class"]["2"]["IoU"]) and m2["mIoU"] == pytest.approx(1.0)


def test_change_metrics_hand_computed():
    cm = np.array([[90, 5], [3, 2]])  # tn 90, fp 5, fn 3, tp 2
    m = change_metrics(cm)
    assert m["precision"] == pytest.approx(2 / 7)
    assert m["recall"] == pytest.approx(2 / 5)
    assert m["F1"] == pytest.approx(4 / 12)
    assert m["IoU"] == pytest.approx(2 / 10)
    assert m["OA"] == pytest.approx(0.92)
    with pytest.raises(ValueError, match="2 x 2"):
        change_metrics(np.zeros((3, 3)))


def test_tile_starts_cover_without_overhang():
    assert tile_starts(10, 16, 12) == [0]
    assert tile_starts(40, 16, 12) == [0, 12, 24]
    assert tile_starts(41, 16, 12) == [0, 12, 24, 25]
    for n in (17, 33, 100):
        s = tile_starts(n, 16, 12)
        assert s[-1] + 16 == n and all(b - a <= 12 for a, b in zip(s, s[1:]))


class _PixelModel(nn.Module):
    """Logits = (x_0, -x_0) per pixel: translation-equivariant, so windows must stitch exactly."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x, x2=None):
        v = x[:, :1] * self.w if x2 is None else (x2 - x)[:, :1]
        return torch.cat([v, -v], dim=1)


@pytest.mark.parametrize("hw", [(20, 20), (37, 53), (8, 70)])
def test_sliding_window_equals_whole_image_for_pixelwise_model(hw):
    img = torch.randn(3, *hw)
    out = sliding_window_logits(_PixelModel(), img, 2, tile=16, overlap=4, batch_size=3)
    assert out.shape == (2, *hw)
    torch.testing.assert_close(out[0], img[0])
    second = torch.randn(3, *hw)
    out2 = sliding_window_logits(_PixelModel(), img, 2, tile=16, overlap=4, second=second)
    torch.testing.assert_close(out2[0], second[0] - img[0])
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_logits(_PixelModel(), img, 2, tile=16, overlap=16)
