"""ViT + RVSA: official layout (counts, shapes, keys), goldens (MTP_SPEC §7.9), RVSA maths, sizes, loading."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.checkpoints import fill_deterministic_
from training.models import create_model
from training.models.vit_rvsa import (
    RotatedVariedSizeWindowAttention,
    ViTRVSA,
    ViTRVSAConfig,
    checkpoint_filter_fn,
    swin_relative_position_index,
    vit_b_rvsa,
    vit_l_rvsa,
    vit_t_rvsa,
)


def _meta(factory, **kw) -> ViTRVSA:
    """Build on the meta device: shapes and counts without allocating (ViT-L is 1.3 GB)."""
    with torch.device("meta"):
        return factory(**kw)


def _counts(m: torch.nn.Module) -> tuple[int, int, int]:
    sd = m.state_dict()
    total = sum(p.numel() for p in m.parameters())
    core = sum(p.numel() for n, p in m.named_parameters() if not n.startswith(("fpn", "norm.")))
    return len(sd), total, core


# ------------------------------------------------------------------------------- layout (§1.8, §7.1-7.4)


def test_vit_b_counts_and_layout():
    m = _meta(vit_b_rvsa, img_size=224)
    assert _counts(m) == (245, 93_291_328, 86_208_064)
    full = [i for i, b in enumerate(m.blocks) if hasattr(b.attn, "full_attn_rel_pos_h")]
    assert full == [2, 5, 8, 11]
    assert m.cfg.out_indices == (3, 5, 7, 11)
    rvsa = sum(
        p.numel()
        for n, p in m.named_parameters()
        if any(s in n for s in ("sampling_", "attn.rel_pos_", "relative_position_bias_table"))
    )
    assert rvsa == 398_656
    assert sum(p.numel() for n, p in m.named_parameters() if "full_attn_rel_pos" in n) == 13_824
    assert m.out_channels == [768] * 4
    # Parameter count depends on img_size through pos_embed and the full-attention tables.
    assert _counts(_meta(vit_b_rvsa, img_size=512))[2] == 86_862_400


def test_vit_l_counts_and_layout():
    m = _meta(vit_l_rvsa)  # MTP size 448 is the default
    assert _counts(m) == (509, 318_245_248, 305_655_168)
    assert [i for i, b in enumerate(m.blocks) if hasattr(b.attn, "full_attn_rel_pos_h")] == [5, 11, 17, 23]
    assert m.cfg.out_indices == (7, 11, 15, 23)
    rvsa = sum(
        p.numel()
        for n, p in m.named_parameters()
        if any(s in n for s in ("sampling_", "attn.rel_pos_", "relative_position_bias_table"))
    )
    assert rvsa == 1_727_360
    assert sum(p.numel() for n, p in m.named_parameters() if "full_attn_rel_pos" in n) == 28_160
    assert _counts(_meta(vit_l_rvsa, img_size=224))[2] == 305_038_720


def test_official_shapes():
    sd_b = _meta(vit_b_rvsa).state_dict()
    sd_l = _meta(vit_l_rvsa).state_dict()
    assert list(sd_b)[:3] == ["pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    expect_b = {
        "pos_embed": (1, 196, 768),
        "patch_embed.proj.weight": (768, 3, 16, 16),
        "blocks.0.attn.qkv.weight": (2304, 768),
        "blocks.2.attn.full_attn_rel_pos_h": (27, 64),
        "blocks.2.attn.full_attn_rel_pos_w": (27, 64),
        "blocks.0.attn.rel_pos_h": (13, 64),
        "blocks.0.attn.relative_position_bias_table": (169, 12),
        "blocks.0.attn.relative_position_index": (49, 49),
        "blocks.0.attn.sampling_offsets.2.weight": (24, 768, 1, 1),
        "blocks.0.attn.sampling_scales.2.weight": (24, 768, 1, 1),
        "blocks.0.attn.sampling_angles.2.weight": (12, 768, 1, 1),
        "blocks.0.mlp.fc1.weight": (3072, 768),
        "fpn1.0.weight": (768, 768, 2, 2),
        "fpn1.1.ln.weight": (768,),
        "fpn1.3.weight": (768, 768, 2, 2),
        "fpn2.0.weight": (768, 768, 2, 2),
        "norm.weight": (768,),
    }
    for k, shape in expect_b.items():
        assert tuple(sd_b[k].shape) == shape, k
    assert sum(1 for k in sd_b if k.startswith("blocks.2.")) == 14  # full-attention block entries
    assert sum(1 for k in sd_b if k.startswith("blocks.0.")) == 22  # RVSA block entries
    assert tuple(sd_l["pos_embed"].shape) == (1, 784, 1024)
    assert tuple(sd_l["blocks.5.attn.full_attn_rel_pos_h"].shape) == (55, 64)
    assert tuple(sd_l["blocks.0.attn.relative_position_bias_table"].shape) == (169, 16)
    assert tuple(sd_l["blocks.0.attn.sampling_offsets.2.weight"].shape) == (32, 1024, 1, 1)
    idx = swin_relative_position_index(7)
    assert idx.dtype == torch.int64 and idx.shape == (49, 49) and idx.max().item() == 168
    # (dy + 6) * 13 + (dx + 6): token 0 = (0, 0), token 8 = (1, 1) -> dy = dx = -1 -> 5 * 13 + 5.
    assert idx[0, 8].item() == 5 * 13 + 5 and idx[8, 0].item() == 7 * 13 + 7


def test_registry_and_interface():
    m = create_model("vit_t_rvsa")
    assert isinstance(m, ViTRVSA)
    x = torch.randn(1, 3, 64, 64)
    outs = m.forward_intermediates(x)
    assert [tuple(o.shape) for o in outs] == [
        (1, 192, 16, 16),
        (1, 192, 8, 8),
        (1, 192, 4, 4),
        (1, 192, 2, 2),
    ]
    assert m.out_channels == [192] * 4 and m.strides == [4, 8, 16, 32]
    assert [o.shape for o in m(x)] == [o.shape for o in outs]
    assert [tuple(t.shape) for t in m.forward_tapped(x)] == [(1, 192, 4, 4)] * 4
    assert "pos_embed" in m.no_weight_decay()


def test_layer_id_and_decay_scales():
    """§7.8: patch/pos embed 0.9^(depth+1), blocks.i 0.9^(depth-i), everything else 1.0."""
    m = _meta(vit_b_rvsa)
    last = m.num_layer_ids - 1
    scale = {n: 0.9 ** (last - m.layer_id(n)) for n, _ in m.named_parameters()}
    assert scale["pos_embed"] == pytest.approx(0.2542, abs=1e-4)
    assert scale["patch_embed.proj.weight"] == pytest.approx(0.9**13)
    assert scale["blocks.0.norm1.weight"] == pytest.approx(0.9**12)
    assert scale["blocks.11.mlp.fc2.bias"] == pytest.approx(0.9)
    assert scale["fpn1.0.weight"] == 1.0 and scale["norm.weight"] == 1.0
    assert m.layer_id("backbone.blocks.3.attn.qkv.weight") == 4
    assert m.layer_id("decode_head.conv_seg.weight") == last
    ml = _meta(vit_l_rvsa)
    assert 0.9 ** (ml.num_layer_ids - 1 - ml.layer_id("pos_embed")) == pytest.approx(0.0718, abs=1e-4)


# ------------------------------------------------------------------------------------- goldens (§7.9)

GOLDEN_B224 = [
    ((768, 56, 56), 1.895617e02, 4.749869e04, 5.413860e-02, 4.790582e-02),
    ((768, 28, 28), -2.891485e03, 5.260844e06, 1.288232e01, -4.010437e00),
    ((768, 14, 14), 9.365441e02, 2.706987e05, 2.641655e-01, -2.591552e00),
    ((768, 7, 7), 1.669870e04, 9.987443e04, 1.935590e00, 5.040465e00),
]
GOLDEN_L448 = [
    ((1024, 112, 112), 9.465968e02, 1.987787e05, 1.752533e-02, 1.654686e-02),
    ((1024, 56, 56), 1.328107e05, 1.071356e08, 4.709765e01, 4.854829e01),
    ((1024, 28, 28), 4.963293e03, 3.709163e06, 3.960279e00, -1.375439e-01),
    ((1024, 14, 14), 1.351512e05, 1.386784e06, 6.103129e00, 1.362782e01),
]


def _golden_input(size: int) -> torch.Tensor:
    return torch.sin(0.01 * torch.arange(3 * size * size, dtype=torch.float64)).reshape(1, 3, size, size)


def _check_golden(outs: list[torch.Tensor], golden) -> None:
    # The spec prints 7 significant digits, so 1e-6 relative is the tightest meaningful tolerance.
    for o, (shape, s, a, f0, f1000) in zip(outs, golden, strict=True):
        assert tuple(o.shape[1:]) == shape
        f = o.flatten()
        for got, exp in ((f.sum(), s), (f.abs().sum(), a), (f[0], f0), (f[1000], f1000)):
            assert got.item() == pytest.approx(exp, rel=1e-6, abs=0)


def _golden_model(factory, size: int) -> ViTRVSA:
    """Build on meta (skips the random init, the slow part), materialise in float64, fill §7.9 weights."""
    with torch.device("meta"):
        m = factory(img_size=size, strict_official=True)
    m = m.to(torch.float64).to_empty(device="cpu")
    for mod in m.modules():  # integer buffers are not covered by the fill: regenerate them
        if isinstance(mod, RotatedVariedSizeWindowAttention):
            mod.relative_position_index.copy_(swin_relative_position_index(mod.ws))
    return fill_deterministic_(m).eval()


def test_golden_vit_b_224():
    m = _golden_model(vit_b_rvsa, 224)
    with torch.no_grad():
        _check_golden(m(_golden_input(224)), GOLDEN_B224)


@pytest.mark.slow
def test_golden_vit_l_448():
    m = _golden_model(vit_l_rvsa, 448)
    with torch.no_grad():
        _check_golden(m(_golden_input(448)), GOLDEN_L448)


def test_general_mode_matches_strict_at_construction_size():
    """Default mode differs from strict only by the float32 rounding of the official fixed grids."""
    torch.manual_seed(0)
    strict = vit_t_rvsa(img_size=224, strict_official=True).double().eval()
    fill_deterministic_(strict)
    general = vit_t_rvsa(img_size=224).double().eval()
    general.load_state_dict(strict.state_dict(), strict=True)
    x = _golden_input(224)
    with torch.no_grad():
        for a, b in zip(strict(x), general(x), strict=True):
            assert (a - b).abs().max() / a.abs().max() < 1e-4


# ----------------------------------------------------------------------------------------- RVSA maths


def _naive_window_attention(
    attn: RotatedVariedSizeWindowAttention, x: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """Plain 7x7 window attention with decomposed rel-pos (unscaled q) + Swin bias, zero-padded like RVSA."""
    b, n, c = x.shape
    ws, nh = attn.ws, attn.num_heads
    hd = c // nh
    pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
    top, left = pad_h // 2, pad_w // 2
    qkv = attn.qkv(x).reshape(b, h, w, 3, nh, hd)
    qkv = F.pad(qkv.permute(0, 3, 4, 5, 1, 2), (left, pad_w - left, top, pad_h - top))  # b,3,nh,hd,H',W'
    hp, wp = h + pad_h, w + pad_w
    out = torch.zeros(b, nh, hd, hp, wp, dtype=x.dtype)
    coords = [(i, j) for i in range(ws) for j in range(ws)]
    for wy in range(hp // ws):
        for wx in range(wp // ws):
            sl = (slice(wy * ws, (wy + 1) * ws), slice(wx * ws, (wx + 1) * ws))
            q, k, v = (
                qkv[:, t, :, :, sl[0], sl[1]].flatten(3).transpose(2, 3) for t in range(3)
            )  # b,nh,49,hd
            logits = (q @ k.transpose(-1, -2)) * attn.scale
            for qi, (qy, qx) in enumerate(coords):
                for ki, (ky, kx) in enumerate(coords):
                    rel = (
                        q[:, :, qi] @ attn.rel_pos_h[qy - ky + ws - 1]
                        + q[:, :, qi] @ attn.rel_pos_w[qx - kx + ws - 1]
                    )
                    bias = attn.relative_position_bias_table[
                        (qy - ky + ws - 1) * (2 * ws - 1) + (qx - kx + ws - 1)
                    ]
                    logits[:, :, qi, ki] += rel + bias
            o = logits.softmax(-1) @ v  # b,nh,49,hd
            out[:, :, :, sl[0], sl[1]] = o.transpose(2, 3).reshape(b, nh, hd, ws, ws)
    out = out[:, :, :, top : top + h, left : left + w].reshape(b, c, h * w).transpose(1, 2)
    return attn.proj(out)


@pytest.mark.parametrize("hw", [(14, 14), (9, 12)], ids=["no-pad", "padded"])
def test_rvsa_with_zero_regressors_is_window_attention(hw):
    """§1.4 fact: zeroed regressors sample pixel centres exactly -> plain window attention."""
    torch.manual_seed(1)
    cfg = ViTRVSAConfig(embed_dim=24, depth=3, num_heads=3, out_indices=(0, 1, 2, 2), img_size=224)
    attn = RotatedVariedSizeWindowAttention(cfg).double()
    for reg in (attn.sampling_offsets, attn.sampling_scales, attn.sampling_angles):
        torch.nn.init.zeros_(reg[2].weight)
        torch.nn.init.zeros_(reg[2].bias)
    torch.nn.init.normal_(attn.rel_pos_h, std=0.3)
    torch.nn.init.normal_(attn.rel_pos_w, std=0.3)
    torch.nn.init.normal_(attn.relative_position_bias_table, std=0.3)
    h, w = hw
    x = torch.randn(2, h * w, 24, dtype=torch.float64)
    torch.testing.assert_close(attn(x, h, w), _naive_window_attention(attn, x, h, w), rtol=1e-10, atol=1e-10)


def _grid_with_offset_bias(strict: bool, h: int, w: int, bias_x: float) -> torch.Tensor:
    cfg = ViTRVSAConfig(embed_dim=8, depth=3, num_heads=1, out_indices=(0, 1, 2, 2), strict_official=strict)
    attn = RotatedVariedSizeWindowAttention(cfg).double()
    for reg in (attn.sampling_offsets, attn.sampling_scales, attn.sampling_angles):
        torch.nn.init.zeros_(reg[2].weight)
        torch.nn.init.zeros_(reg[2].bias)
    with torch.no_grad():
        attn.sampling_offsets[2].bias[0] = bias_x
    x_pad = torch.zeros(1, 8, h + (7 - h % 7) % 7, w + (7 - w % 7) % 7, dtype=torch.float64)
    return attn._sample_grid(x_pad, h, w)


def test_rvsa_offset_normalisation_quirk():
    """§7.6: official divides the x offset by h//7; the general mode uses w//7 (same for square grids)."""
    h, w = 14, 28  # h // 7 = 2, w // 7 = 4
    base = _grid_with_offset_bias(True, h, w, 0.0)
    strict_dx = _grid_with_offset_bias(True, h, w, 1.0) - base
    general_dx = _grid_with_offset_bias(False, h, w, 1.0) - _grid_with_offset_bias(False, h, w, 0.0)
    torch.testing.assert_close(strict_dx[..., 0], torch.full_like(strict_dx[..., 0], 1 / 2))
    torch.testing.assert_close(general_dx[..., 0], torch.full_like(general_dx[..., 0], 1 / 4))
    assert strict_dx[..., 1].abs().max() == 0 and general_dx[..., 1].abs().max() == 0


def test_rvsa_rotation_and_scale_convention():
    """A window rotated by +90 deg maps its in-window x offset onto +y (x' = x cos - y sin, y' = x sin + y cos)."""
    cfg = ViTRVSAConfig(embed_dim=8, depth=3, num_heads=1, out_indices=(0, 1, 2, 2))
    attn = RotatedVariedSizeWindowAttention(cfg).double()
    for reg in (attn.sampling_offsets, attn.sampling_scales, attn.sampling_angles):
        torch.nn.init.zeros_(reg[2].weight)
        torch.nn.init.zeros_(reg[2].bias)
    with torch.no_grad():
        attn.sampling_angles[2].bias[0] = math.pi / 2
        attn.sampling_scales[2].bias[0] = 1.0  # x extent doubled
    g = attn._sample_grid(torch.zeros(1, 8, 14, 14, dtype=torch.float64), 14, 14)
    step = 2 / 13
    # Window (0, 0), centre at pixel 3: in-window pixel (row 3, col 6) has base (x=3 step, y=0) -> scaled x=6 step
    # -> rotated to (x=0, y=6 step).
    centre = -1 + 3 * step
    assert g[0, 3, 6, 0].item() == pytest.approx(centre, abs=1e-12)
    assert g[0, 3, 6, 1].item() == pytest.approx(centre + 6 * step, abs=1e-12)


# ---------------------------------------------------------------------------------------- input sizes


def test_strict_mode_replicates_official_failures():
    m = vit_t_rvsa(img_size=(64, 96), strict_official=True).eval()
    with pytest.raises(IndexError, match="Wp > Hp"):
        m(torch.randn(1, 3, 64, 96))
    m = vit_t_rvsa(img_size=64, strict_official=True).eval()
    with pytest.raises(ValueError, match="construction grid"):
        m(torch.randn(1, 3, 128, 128))
    # Hp >= Wp works in the official code and here.
    out = vit_t_rvsa(img_size=(96, 64), strict_official=True).eval()(torch.randn(1, 3, 96, 64))
    assert out[2].shape[-2:] == (6, 4)


@pytest.mark.parametrize("size", [(96, 160), (112, 64), (48, 48)])
def test_any_multiple_of_16_works(size):
    torch.manual_seed(0)
    m = vit_t_rvsa(img_size=224).eval()
    h, w = size
    outs = m(torch.randn(1, 3, h, w))
    assert [tuple(o.shape[-2:]) for o in outs] == [
        (h // 4, w // 4),
        (h // 8, w // 8),
        (h // 16, w // 16),
        (h // 32, w // 32),
    ]
    assert all(torch.isfinite(o).all() for o in outs)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        m(torch.randn(1, 3, 100, 96))


def test_runtime_resize_equals_load_time_resize():
    """Running a 224 model at 320 == building a 320 model and adapting the checkpoint at load time."""
    torch.manual_seed(0)
    m224 = vit_t_rvsa(img_size=224).double().eval()
    fill_deterministic_(m224)
    m320 = vit_t_rvsa(img_size=320).double().eval()
    m320.load_state_dict(checkpoint_filter_fn(m224.state_dict(), m320), strict=True)
    x = torch.randn(1, 3, 320, 320, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(m224(x), m320(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_backward_reaches_rvsa_parameters_and_checkpointing_matches():
    torch.manual_seed(0)
    m = vit_t_rvsa(img_size=64, drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 64, 64)
    sum(o.square().mean() for o in m(x)).backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    for name in (
        "blocks.0.attn.sampling_offsets.2.weight",
        "blocks.0.attn.sampling_angles.2.weight",
        "blocks.0.attn.relative_position_bias_table",
        "blocks.2.attn.full_attn_rel_pos_w",
        "fpn1.0.weight",
        "pos_embed",
    ):
        assert grads[name].abs().sum() > 0, name
    assert "norm.weight" not in grads  # the official norm is never applied
    mc = vit_t_rvsa(img_size=64, use_checkpoint=True).train()
    mc.load_state_dict(m.state_dict())
    sum(o.square().mean() for o in mc(x)).backward()
    for n, p in mc.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------- checkpoint filter


def test_filter_loads_official_layout_strict():
    """Official key names with the prefixes the official loaders strip; MAE-style pos_embed with cls token."""
    src = vit_t_rvsa(img_size=224)
    sd = {f"module.encoder.{k}": v.clone() for k, v in src.state_dict().items()}
    sd["module.encoder.pos_embed"] = torch.cat([torch.zeros(1, 1, 192), sd["module.encoder.pos_embed"]], 1)
    sd["module.encoder.cls_token"] = torch.zeros(1, 1, 192)
    sd["module.encoder.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.int64)
    sd["module.semsegdecoder.decode_head.conv_seg.weight"] = torch.zeros(1, 256, 1, 1)
    dst = vit_t_rvsa(img_size=224)
    dst.load_state_dict(checkpoint_filter_fn(sd, dst), strict=True)
    torch.testing.assert_close(dst.pos_embed, src.pos_embed)
    torch.testing.assert_close(dst.blocks[0].attn.relative_position_index, swin_relative_position_index(7))
    # Detection variant (RVSA_MTP_branches) has no global rel-pos; the filter drops those tables.
    det = vit_t_rvsa(img_size=224, full_attn_rel_pos=False)
    det.load_state_dict(checkpoint_filter_fn(sd, det), strict=True)
    # A different size: pos_embed and the full-attention tables are resized.
    big = vit_t_rvsa(img_size=320)
    big.load_state_dict(checkpoint_filter_fn(sd, big), strict=True)
    assert big.blocks[2].attn.full_attn_rel_pos_h.shape == (39, 64)


def test_config_errors_are_explained():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTRVSAConfig(img_size=230)
    with pytest.raises(ValueError, match="out_indices"):
        ViTRVSAConfig(out_indices=(1, 2))
    with pytest.raises(ValueError, match="bands"):
        vit_t_rvsa()(torch.randn(1, 4, 64, 64))


def test_level_subsets_and_forward_features():
    torch.manual_seed(0)
    m = vit_t_rvsa(img_size=64).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = m.forward_intermediates(x)
        sub = m.forward_intermediates(x, indices=[2, 0])
        last = m.forward_features(x)
    torch.testing.assert_close(sub[0], full[2])
    torch.testing.assert_close(sub[1], full[0])
    torch.testing.assert_close(last, full[3])
    with pytest.raises(ValueError, match="pyramid levels"):
        m.forward_intermediates(x, indices=[4])
    with pytest.raises(ValueError, match="too small"):
        m(torch.randn(1, 3, 16, 64))
    assert m.forward_intermediates(torch.randn(1, 3, 16, 16), indices=[0, 2])[1].shape == (1, 192, 1, 1)


def test_layer_decay_groups_with_training_lr_decay():
    """The shared optimiser helper reads num_layers + layer_id: pos_embed gets 0.9^(L+1) (§7.8)."""
    lr_decay = pytest.importorskip("training.lr_decay")

    class Task(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = _meta(vit_b_rvsa)
            self.head = torch.nn.Linear(2, 2, device="meta")

    model = Task()
    groups = lr_decay.param_groups_layer_decay(model, lr=1.0, weight_decay=0.05, layer_decay=0.9)
    by_param = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert by_param[id(model.backbone.pos_embed)] == pytest.approx(0.2542, abs=1e-4)
    assert by_param[id(model.backbone.blocks[11].mlp.fc1.weight)] == pytest.approx(0.9)
    assert by_param[id(model.backbone.fpn1[0].weight)] == 1.0 and by_param[id(model.head.weight)] == 1.0
