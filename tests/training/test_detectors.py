"""Detectors: train-mode losses (finite, falling when overfitting one image) and the eval output contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from tiny_backbone import TinyPyramid  # noqa: E402,F401 - registers "tiny_pyramid_test"

from training.models import create_model
from training.models.detection.anchors import AnchorGenerator
from training.models.detection.roi_heads import MultiLevelRoIAlign, paste_masks
from training.models.necks import FPN
from training.models.registry import _REGISTRY, register_model


def synthetic_scene(size: int = 64):
    """One image with two bright objects (an axis-aligned square and a rotated bar) and their labels."""
    torch.manual_seed(0)
    img = torch.randn(1, 3, size, size) * 0.1
    masks = torch.zeros(2, size, size)
    masks[0, 8:28, 10:30] = 1
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    a = math.radians(30)
    # rotated bar centred at (44, 42), w 30 along (cos a, -sin a), h 10
    du = (xx - 44) * math.cos(a) - (yy - 42) * math.sin(a)
    dv = (xx - 44) * math.sin(a) + (yy - 42) * math.cos(a)
    masks[1] = ((du.abs() <= 15) & (dv.abs() <= 5)).float()
    img[0, 0] += masks[0] * 2
    img[0, 1] += masks[1] * 2
    boxes = torch.tensor([[10.0, 8.0, 30.0, 28.0], [0.0, 0.0, 0.0, 0.0]])
    ys, xs = torch.nonzero(masks[1], as_tuple=True)
    boxes[1] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    target = {
        "boxes_xyxy": boxes,
        "boxes_cxcywha": torch.tensor([[20.0, 18.0, 20.0, 20.0, 0.0], [44.0, 42.0, 30.0, 10.0, a]]),
        "labels": torch.tensor([0, 1]),
        "masks": masks.to(torch.uint8),
    }
    return img, target


def build(name: str):
    torch.manual_seed(0)
    return create_model(name, backbone="tiny_pyramid_test", num_classes=2, fpn_channels=32)


@pytest.mark.parametrize(
    ("name", "loss_keys"),
    [
        ("faster_rcnn", {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"}),
        ("mask_rcnn", {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"}),
        ("oriented_rcnn", {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"}),
    ],
)
def test_losses_fall_when_overfitting_one_image(name, loss_keys):
    model = build(name)
    img, target = synthetic_scene()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    model.train()
    for _ in range(20):
        losses = model(img, [target])
        assert set(losses) == loss_keys
        assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    assert sum(history[-3:]) / 3 < 0.7 * sum(history[:3]) / 3, history
    # every parameter of the heads receives a gradient
    assert all(p.grad is not None for n, p in model.named_parameters() if "roi_head" in n or "rpn_head" in n)


def test_eval_output_contract_horizontal_and_masks():
    img, _ = synthetic_scene(70)  # not a multiple of 32: padded inside
    img = torch.cat([img, img.flip(-1)])
    for name in ("faster_rcnn", "mask_rcnn"):
        model = build(name).eval()
        model.roi_head.test_cfg.score_thr = 0.0  # an untrained model must still return boxes
        out = model(img)
        assert isinstance(out, list) and len(out) == 2
        for det in out:
            keys = {"boxes_xyxy", "scores", "labels"} | ({"masks"} if name == "mask_rcnn" else set())
            assert set(det) == keys
            n = det["scores"].shape[0]
            assert 0 < n <= 100
            assert det["boxes_xyxy"].shape == (n, 4) and det["labels"].dtype == torch.int64
            assert ((det["labels"] >= 0) & (det["labels"] < 2)).all()
            b = det["boxes_xyxy"]
            assert (b[:, 0] >= 0).all() and (b[:, 2] <= 70).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 70).all()
            assert (det["scores"][:-1] >= det["scores"][1:]).all()
            if name == "mask_rcnn":
                assert det["masks"].shape == (n, 70, 70)
                assert det["masks"].dtype == torch.float32
                assert ((det["masks"] >= 0) & (det["masks"] <= 1)).all()


def test_eval_output_contract_rotated():
    img, _ = synthetic_scene(64)
    model = build("oriented_rcnn").eval()
    model.roi_head.test_cfg.score_thr = 0.0
    (det,) = model(img)
    assert set(det) == {"boxes_cxcywha", "scores", "labels"}
    n = det["scores"].shape[0]
    assert 0 < n <= 2000
    assert det["boxes_cxcywha"].shape == (n, 5)
    a = det["boxes_cxcywha"][:, 4]
    assert ((a >= -math.pi / 2) & (a < math.pi / 2)).all()
    assert (det["boxes_cxcywha"][:, 2] >= det["boxes_cxcywha"][:, 3]).all()


def test_training_target_errors_are_clear():
    model = build("mask_rcnn").train()
    img, target = synthetic_scene()
    del target["masks"]
    with pytest.raises(KeyError, match="masks"):
        model(img, [target])
    with pytest.raises(ValueError, match="one target dict per image"):
        model(img)


def test_backbone_without_pyramid_interface_is_rejected():
    if "flat_backbone_test" not in _REGISTRY:

        @register_model
        def flat_backbone_test() -> nn.Module:
            return nn.Conv2d(3, 8, 3)

    with pytest.raises(TypeError, match="forward_intermediates"):
        create_model("faster_rcnn", backbone="flat_backbone_test", num_classes=3)


def test_fpn_shapes_and_extra_level():
    fpn = FPN([8, 16, 32, 64], 24, num_outs=5)
    feats = [torch.randn(1, c, 40 // s, 40 // s) for c, s in zip([8, 16, 32, 64], [1, 2, 4, 8], strict=True)]
    outs = fpn(feats)
    assert [tuple(o.shape[-2:]) for o in outs] == [(40, 40), (20, 20), (10, 10), (5, 5), (3, 3)]
    assert all(o.shape[1] == 24 for o in outs)


def test_anchor_layout_matches_mmdet_rule():
    gen = AnchorGenerator(strides=(4, 8))
    base = gen.base_anchors(4)
    # ratio h/w = 0.5 first: w = 4 * 8 / sqrt(0.5), h = 4 * 8 * sqrt(0.5)
    w, h = 32 / math.sqrt(0.5), 32 * math.sqrt(0.5)
    assert torch.allclose(base[0], torch.tensor([-w / 2, -h / 2, w / 2, h / 2]))
    lv0, lv1 = gen.grid_anchors([(2, 3), (1, 2)], torch.device("cpu"))
    assert lv0.shape == (2 * 3 * 3, 4) and lv1.shape == (1 * 2 * 3, 4)
    # location (row 1, col 2) anchor 1 is centred on (8, 4)
    a = lv0[(1 * 3 + 2) * 3 + 1]
    assert torch.allclose((a[:2] + a[2:]) / 2, torch.tensor([8.0, 4.0]))


def test_roi_level_mapping():
    extractor = MultiLevelRoIAlign(strides=(4, 8, 16, 32), output_size=2)
    feats = [torch.full((1, 1, 512 // s, 512 // s), float(s)) for s in (4, 8, 16, 32)]
    rois = torch.tensor([[0, 0, 0, 20, 20], [0, 0, 0, 120, 120], [0, 0, 0, 230, 230], [0, 0, 0, 500, 500.0]])
    out = extractor(feats, rois)
    assert out[:, 0, 0, 0].tolist() == [4.0, 8.0, 16.0, 32.0]


def test_paste_masks_full_box_is_box_indicator():
    masks = torch.ones(1, 28, 28)
    pasted = paste_masks(masks, torch.tensor([[2.0, 3.0, 10.0, 7.0]]), (12, 14))
    expected = torch.zeros(12, 14)
    expected[3:7, 2:10] = 1
    assert torch.allclose(pasted[0], expected)


def test_max_iou_assign_rules():
    from training.models.detection.sampling import max_iou_assign, random_sample

    iou = torch.tensor([[0.8, 0.5, 0.1, 0.0, 0.35],
                        [0.1, 0.6, 0.2, 0.0, 0.35]])  # fmt: skip
    res = max_iou_assign(iou, pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)
    # col 0: positive (0.8); col 1: ignored by thresholds but it is gt 1's best match -> positive for gt 1;
    # col 2, 3: negative; col 4: between thresholds -> ignored
    assert res.gt_index.tolist() == [0, 1, -1, -1, -2]
    res = max_iou_assign(iou, 0.7, 0.3, 0.3, match_low_quality=False)
    assert res.gt_index.tolist() == [0, -2, -1, -1, -2]
    assert max_iou_assign(torch.zeros(0, 3), 0.5, 0.5, 0.5).gt_index.tolist() == [-1, -1, -1]
    pos, neg = random_sample(torch.tensor([0, 1, -1, -1, -2, 0]), num=4, pos_fraction=0.25)
    assert pos.numel() == 1 and neg.numel() == 2 and set(neg.tolist()) == {2, 3}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mask_rcnn", "oriented_rcnn"])
def test_overfit_detects_both_objects(name):
    from torchvision.ops import box_iou

    from training.ops.rotated import rbox_iou

    model = build(name)
    img, target = synthetic_scene()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(120):
        model.train()
        losses = model(img, [target])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    model.eval()
    (det,) = model(img)
    top = det["scores"] > 0.5
    if name == "oriented_rcnn":
        iou = rbox_iou(det["boxes_cxcywha"][top], target["boxes_cxcywha"])
    else:
        iou = box_iou(det["boxes_xyxy"][top], target["boxes_xyxy"])
    for k in range(2):  # each object found by a confident detection of the right class
        hit = (iou[:, k] > 0.7) & (det["labels"][top] == target["labels"][k])
        assert hit.any(), (name, k, iou, det["labels"][top])
    if name == "mask_rcnn":
        best = det["masks"][top][iou[:, 0].argmax()] > 0.5
        gt = target["masks"][0].bool()
        assert (best & gt).sum() / (best | gt).sum() > 0.8


@pytest.mark.parametrize("name", ["faster_rcnn", "mask_rcnn", "oriented_rcnn"])
def test_batch_with_an_empty_image(name):
    model = build(name).train()
    img, target = synthetic_scene()
    empty = {"boxes_xyxy": torch.zeros(0, 4), "boxes_cxcywha": torch.zeros(0, 5),
             "labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 64, 64, dtype=torch.uint8)}  # fmt: skip
    losses = model(torch.cat([img, img.flip(-1)]), [target, empty])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    losses = model(img, [empty])  # no object anywhere in the batch
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_json_style_config_kwargs():
    torch.manual_seed(0)
    model = create_model("oriented_rcnn", backbone="tiny_pyramid_test", num_classes=2, fpn_channels=32,
                         test_cfg={"score_thr": 0.0, "nms_iou": 0.1, "max_per_img": 5},
                         rpn_kwargs={"test_proposals": {"nms_pre": 100, "max_per_img": 20, "nms_iou": 0.8}}).eval()  # fmt: skip
    img, _ = synthetic_scene()
    (det,) = model(img)
    assert 0 < det["scores"].numel() <= 5
    feats = model.neck(model.backbone.forward_intermediates(img))
    proposals, _ = model.rpn_head(feats, (64, 64))
    assert proposals[0].shape[0] <= 20 and proposals[0].shape[1] == 5
    with pytest.raises(ValueError, match="unknown keys"):
        create_model("faster_rcnn", backbone="tiny_pyramid_test", num_classes=2, test_cfg={"score": 0.1})


def test_team_backbone_efficientnet_lite0():
    from training.models import list_models

    if "efficientnet_lite0" not in list_models():
        pytest.skip("efficientnet_lite0 is not registered yet")
    torch.manual_seed(0)
    model = create_model("mask_rcnn", backbone="efficientnet_lite0", num_classes=2, fpn_channels=32)
    img, target = synthetic_scene()
    losses = model.train()(img, [target])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    (det,) = model.eval()(img)
    assert det["masks"].shape[1:] == (64, 64)


def test_model_package_round_trip(tmp_path):
    from training.package import ClassInfo, PackageConfig, load_package, save_package

    kwargs = {"backbone": "tiny_pyramid_test", "num_classes": 2, "fpn_channels": 32,
              "test_cfg": {"score_thr": 0.0, "nms_iou": 0.1, "max_per_img": 50},
              "rpn_kwargs": {"test_proposals": {"nms_pre": 200, "max_per_img": 100, "nms_iou": 0.8}}}  # fmt: skip
    torch.manual_seed(0)
    model = create_model("oriented_rcnn", **kwargs).eval()
    config = PackageConfig(name="tiny-oriented", task="rotated_detection", architecture="oriented_rcnn",
                           classes=[ClassInfo("ship", "#ff0000"), ClassInfo("plane", "#00ff00")],
                           bands=["red", "green", "blue"], mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], gsd_m=0.5, architecture_kwargs=kwargs)  # fmt: skip
    save_package(model, config, tmp_path)
    _, loaded = load_package(tmp_path)
    img, _ = synthetic_scene()
    (a,), (b,) = model(img), loaded(img)
    assert set(a) == set(b) and torch.equal(a["boxes_cxcywha"], b["boxes_cxcywha"]) and torch.equal(a["scores"], b["scores"])
