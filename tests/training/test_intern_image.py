"""InternImage: official layout (counts, keys), golden (MTP_SPEC §7.9), interface, loading."""

from __future__ import annotations

import pytest
import torch

from training.checkpoints import fill_deterministic_
from training.models import create_model
from training.models.intern_image import (
    InternImage,
    InternImageConfig,
    checkpoint_filter_fn,
    internimage_t,
    internimage_xl,
)


def _meta(factory, **kw) -> InternImage:
    with torch.device("meta"):
        return factory(**kw)


def test_xl_counts_and_layout():
    m = _meta(internimage_xl)
    sd = m.state_dict()
    assert len(sd) == 875
    assert sum(p.numel() for p in m.parameters()) == 328_971_228
    assert m.out_channels == [192, 384, 768, 1536]
    expect = {
        "patch_embed.conv1.weight": (96, 3, 3, 3),
        "patch_embed.norm1.1.weight": (96,),
        "patch_embed.conv2.weight": (192, 96, 3, 3),
        "patch_embed.norm2.1.bias": (192,),
        "levels.0.blocks.0.gamma1": (192,),
        "levels.0.blocks.0.gamma2": (192,),
        "levels.0.blocks.0.norm1.0.weight": (192,),
        "levels.0.blocks.0.norm2.0.bias": (192,),
        "levels.0.blocks.0.dcn.dw_conv.0.weight": (192, 1, 3, 3),
        "levels.0.blocks.0.dcn.dw_conv.1.1.weight": (192,),
        "levels.0.blocks.0.dcn.offset.weight": (216, 192),
        "levels.0.blocks.0.dcn.mask.weight": (108, 192),
        "levels.0.blocks.0.dcn.input_proj.weight": (192, 192),
        "levels.0.blocks.0.dcn.output_proj.weight": (192, 192),
        "levels.0.blocks.0.mlp.fc1.weight": (768, 192),
        "levels.0.blocks.0.mlp.fc2.weight": (192, 768),
        "levels.0.downsample.conv.weight": (384, 192, 3, 3),
        "levels.0.downsample.norm.1.weight": (384,),
        "levels.2.blocks.23.dcn.offset.weight": (48 * 18, 768),
        "levels.3.blocks.4.mlp.fc1.weight": (6144, 1536),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert "levels.0.downsample.conv.bias" not in sd and "levels.3.downsample.conv.weight" not in sd
    assert not any(k.startswith("levels.0.norm") for k in sd)  # post-norm: no per-level norm


# §7.9, measured on the official module with DCNv3_pytorch.
GOLDEN_XL224 = [
    ((192, 56, 56), 1.140747e04, 5.429985e05, -1.085365e00, 5.496792e-01),
    ((384, 28, 28), 2.784738e03, 2.705257e05, 5.402628e-01, -1.343485e00),
    ((768, 14, 14), 4.013247e03, 1.436941e05, 2.904548e-01, 1.463945e00),
    ((1536, 7, 7), 2.586890e02, 6.750874e04, 1.069903e00, -1.185871e00),
]


@pytest.mark.slow
def test_golden_xl_224():
    with torch.device("meta"):
        m = internimage_xl(strict_official=True)
    m = fill_deterministic_(m.to(torch.float64).to_empty(device="cpu")).eval()  # no integer buffers
    x = torch.sin(0.01 * torch.arange(3 * 224 * 224, dtype=torch.float64)).reshape(1, 3, 224, 224)
    with torch.no_grad():
        outs = m(x)
    for o, (shape, s, a, f0, f1000) in zip(outs, GOLDEN_XL224, strict=True):
        assert tuple(o.shape[1:]) == shape
        f = o.flatten()
        for got, exp in ((f.sum(), s), (f.abs().sum(), a), (f[0], f0), (f[1000], f1000)):
            assert got.item() == pytest.approx(exp, rel=1e-6, abs=0)


def test_small_variant_interface_and_backward():
    m = create_model("internimage_t")
    assert isinstance(m, InternImage)
    assert m.out_channels == [64, 128, 256, 512] and m.strides == [4, 8, 16, 32]
    assert 28e6 < sum(p.numel() for p in m.parameters()) < 31e6  # official InternImage-T is ~30M
    assert "levels.0.norm.0.weight" in m.state_dict()  # pre-norm variant keeps the per-level norm
    x = torch.randn(2, 3, 64, 96)
    outs = m.forward_intermediates(x)
    assert [tuple(o.shape) for o in outs] == [
        (2, 64, 16, 24),
        (2, 128, 8, 12),
        (2, 256, 4, 6),
        (2, 512, 2, 3),
    ]
    assert all(o.is_contiguous() for o in outs)
    sum(o.square().mean() for o in m(x)).backward()
    assert m.patch_embed.conv1.weight.grad.abs().sum() > 0
    assert m.levels[3].blocks[-1].mlp.fc2.weight.grad.abs().sum() > 0
    assert m.no_weight_decay() == set()


def test_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    cfg = dict(channels=16, depths=(1, 1, 2, 1), groups=(2, 2, 4, 8), layer_scale=1.0)
    a = InternImage(InternImageConfig(**cfg)).train()
    b = InternImage(InternImageConfig(**cfg, use_checkpoint=True)).train()
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        for blk in m.modules():
            if hasattr(blk, "offset") and isinstance(blk.offset, torch.nn.Linear):
                torch.manual_seed(1)
                torch.nn.init.normal_(blk.offset.weight, std=0.2)
    x = torch.randn(1, 3, 64, 64)
    for m in (a, b):
        sum(o.square().mean() for o in m(x)).backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-7, msg=n)


def test_layer_ids_follow_official_rule():
    m = _meta(internimage_xl)
    assert m.num_layer_ids == 41
    assert m.layer_id("patch_embed.conv1.weight") == 0
    assert m.layer_id("levels.0.blocks.0.dcn.offset.weight") == 1
    assert m.layer_id("backbone.levels.2.blocks.23.gamma1") == 5 + 5 + 23 + 1
    assert m.layer_id("levels.3.blocks.4.mlp.fc2.bias") == 39
    assert m.layer_id("levels.0.downsample.conv.weight") == 6
    assert m.layer_id("decode_head.conv_seg.weight") == 40


def test_filter_loads_official_prefixes_strict():
    src = InternImage(InternImageConfig(channels=16, depths=(1, 1, 1, 1), groups=(2, 2, 4, 8)))
    sd = {f"module.backbone.{k}": v.clone() for k, v in src.state_dict().items()}
    sd["module.head.weight"] = torch.zeros(10, 128)
    dst = InternImage(InternImageConfig(channels=16, depths=(1, 1, 1, 1), groups=(2, 2, 4, 8)))
    dst.load_state_dict(checkpoint_filter_fn(sd, dst), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(src.eval()(x), dst.eval()(x), strict=True):
            torch.testing.assert_close(a, b)


def test_config_errors_are_explained():
    with pytest.raises(ValueError, match="4 entries"):
        InternImageConfig(depths=(1, 1, 1))
    with pytest.raises(ValueError, match="not divisible"):
        InternImageConfig(channels=20, groups=(3, 6, 12, 24))
    with pytest.raises(ValueError, match="bands"):
        internimage_t()(torch.randn(1, 4, 32, 32))


def test_level_subsets_skip_later_levels():
    torch.manual_seed(0)
    m = InternImage(InternImageConfig(channels=16, depths=(1, 1, 1, 1), groups=(2, 2, 4, 8))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = m.forward_intermediates(x)
        sub = m.forward_intermediates(x, indices=[1])
        last = m.forward_features(x)
    torch.testing.assert_close(sub[0], full[1])
    torch.testing.assert_close(last, full[3])
    assert m.num_layers == 4 and m.layer_id("levels.3.blocks.0.gamma1") == 4
