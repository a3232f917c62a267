"""Dense task models: UperNet segmenter, scene classifier, siamese change detector, layer-decay groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from training.lr_decay import param_groups_layer_decay
from training.models import create_model
from training.models.segmentation import PyramidPooling, adaptive_avg_matrix

BB = "efficientnet_lite0"


def test_adaptive_avg_matrix_equals_adaptive_pool():
    x = torch.randn(2, 3, 13, 17)
    for bins in (1, 2, 3, 6):
        ph, pw = adaptive_avg_matrix(13, bins), adaptive_avg_matrix(17, bins)
        torch.testing.assert_close(ph @ x @ pw.t(), F.adaptive_avg_pool2d(x, bins))


def test_ppm_keeps_size():
    ppm = PyramidPooling(8, 4)
    assert ppm(torch.randn(2, 8, 5, 7)).shape == (2, 4, 5, 7)  # batch 2: BN on 1x1 bins needs > 1 value


@pytest.mark.parametrize("hw", [(64, 64), (72, 100)])
def test_upernet_logits_at_input_resolution_and_backward(hw):
    model = create_model("upernet_segmenter", backbone=BB, num_classes=5, channels=16)
    x = torch.randn(2, 3, *hw)
    y = model(x)
    assert y.shape == (2, 5, *hw)
    target = torch.randint(0, 5, (2, *hw))
    loss = F.cross_entropy(y, target)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert model.decode_head.classifier.weight.grad.abs().sum() > 0
    assert model.backbone.conv_stem.weight.grad.abs().sum() > 0


def test_upernet_rejects_bad_arguments():
    with pytest.raises(TypeError, match="chanels"):
        create_model("upernet_segmenter", backbone=BB, num_classes=3, chanels=8)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("upernet_segmenter", backbone=BB, num_classes=0)
    with pytest.raises(KeyError, match="no_such_backbone"):
        create_model("upernet_segmenter", backbone="no_such_backbone", num_classes=3)


def test_upernet_exports_to_onnx_with_parity(tmp_path):
    from training.onnx_export import export_onnx, onnx_max_rel_error

    torch.manual_seed(0)
    model = create_model("upernet_segmenter", backbone=BB, num_classes=4, channels=16).eval()
    x = torch.randn(1, 3, 96, 96)
    path = export_onnx(model, (x,), tmp_path / "seg.onnx", ["image"], ["logits"])
    assert onnx_max_rel_error(model, path, (x,)) < 1e-4


def test_scene_classifier_shapes_and_backward():
    model = create_model("scene_classifier", backbone=BB, num_classes=7)
    x = torch.randn(3, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (3, 7)
    F.cross_entropy(logits, torch.tensor([0, 3, 6])).backward()
    assert model.head.weight.grad is not None
    with pytest.raises(ValueError, match="num_classes"):
        create_model("scene_classifier", backbone=BB, num_classes=1)


def test_change_detector_shapes_shared_weights_and_symmetry():
    torch.manual_seed(0)
    model = create_model("change_detector", backbone=BB, channels=8).eval()
    a, b = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(a, b)
        # |f1 - f2| fusion with one shared encoder: swapping the dates changes nothing.
        torch.testing.assert_close(out, model(b, a))
        # Identical dates fuse to all-zero features: the output is the same for any image.
        same1, same2 = model(a, a), model(b, b)
    assert out.shape == (2, 2, 64, 64)
    torch.testing.assert_close(same1, same2)
    with pytest.raises(ValueError, match="same shape"):
        model(a, b[..., :32])


def test_change_detector_backward():
    model = create_model("change_detector", backbone=BB, channels=8)
    a, b = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    F.cross_entropy(model(a, b), torch.randint(0, 2, (2, 64, 64))).backward()
    assert model.backbone.conv_stem.weight.grad.abs().sum() > 0


class _ToyViT(nn.Module):
    """Minimal backbone exposing layer_id / num_layers like the ViT backbones."""

    num_layers = 2

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Linear(2, 2)
        self.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])

    def layer_id(self, name: str) -> int:
        if name.startswith("patch_embed"):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_layers + 1


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _ToyViT()
        self.head = nn.Linear(2, 2)


def test_layer_decay_scales_follow_spec():
    groups = param_groups_layer_decay(_Toy(), lr=1.0, weight_decay=0.05, layer_decay=0.9)
    scales = {g["name"]: g["lr_scale"] for g in groups}
    # scale = 0.9 ** (L + 1 - id), L = 2
    assert scales["layer0_decay"] == pytest.approx(0.9**3)
    assert scales["layer1_decay"] == pytest.approx(0.9**2)
    assert scales["layer2_decay"] == pytest.approx(0.9)
    assert scales["layer3_decay"] == pytest.approx(1.0)
    for g in groups:
        assert g["weight_decay"] == (0.0 if g["name"].endswith("no_decay") else 0.05)
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(_Toy().parameters()))


def test_layer_decay_off_for_cnn_backbone():
    model = create_model("scene_classifier", backbone=BB, num_classes=3)
    groups = param_groups_layer_decay(model, lr=1e-3, weight_decay=0.05, layer_decay=0.9)
    assert {g["lr_scale"] for g in groups} == {1.0}
    no_decay = [g for g in groups if g["weight_decay"] == 0.0]
    assert no_decay and all(p.ndim <= 1 for g in no_decay for p in g["params"])


def test_vit_scene_classifier_takes_whole_scenes_of_any_size():
    """A 150 px scene (AID's size) is resized to the nearest multiple of the ViT patch (144), not refused."""
    torch.manual_seed(0)
    model = create_model("scene_classifier", backbone="vit_t_rvsa", num_classes=5,
                         backbone_kwargs={"img_size": 64}).eval()
    x = torch.randn(2, 3, 150, 150)
    with torch.no_grad():
        got = model(x)
        want = model(torch.nn.functional.interpolate(x, size=(144, 144), mode="bilinear", align_corners=False))
    assert got.shape == (2, 5) and torch.allclose(got, want, atol=1e-5)
