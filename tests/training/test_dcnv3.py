"""DCNv3 pure-PyTorch op: MTP_SPEC §7.10 golden, an independent loop reference, module behaviour, ONNX."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.ops.dcnv3 import DCNv3, dcnv3_core


def _golden_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """§7.10: N=1, H=W=8, G=4, D=16, K=3; float64."""
    x = torch.sin(0.01 * torch.arange(8 * 8 * 64, dtype=torch.float64)).reshape(1, 8, 8, 64)
    off = 3 * torch.sin(0.1 * torch.arange(8 * 8 * 72, dtype=torch.float64) + 1).reshape(1, 8, 8, 72)
    logits = torch.sin(0.2 * torch.arange(8 * 8 * 36, dtype=torch.float64) + 2).reshape(1, 8, 8, 4, 9)
    mask = torch.softmax(logits, dim=-1).reshape(1, 8, 8, 36)
    return x, off, mask


# (offset_scale, sum, abs-sum, y[0], y[777]) measured on the official dcnv3_core_pytorch.
GOLDEN = [
    (2.0, 5.6635106873e01, 1.8602339187e02, -4.0961547645e-02, -6.2607343893e-02),
    (1.0, 1.0230388423e02, 7.2021984587e02, -3.9984024991e-01, 2.4464526854e-01),
]


def _stats(y: torch.Tensor) -> list[float]:
    f = y.flatten()
    return [f.sum().item(), f.abs().sum().item(), f[0].item(), f[777].item()]


@pytest.mark.parametrize("golden", GOLDEN, ids=["scale2", "scale1"])
def test_golden_official_grid(golden):
    """With the official float32 grid the op reproduces the official numbers to their printed precision."""
    scale, *expected = golden
    x, off, mask = _golden_inputs()
    y = dcnv3_core(x, off, mask, 3, 1, 1, 1, 4, scale, official_grid=True)
    assert y.shape == (1, 8, 8, 64) and y.dtype == torch.float64
    for got, exp in zip(_stats(y), expected, strict=True):
        assert got == pytest.approx(exp, rel=2e-10)


@pytest.mark.parametrize("golden", GOLDEN, ids=["scale2", "scale1"])
def test_golden_exact_grid(golden):
    """The default float64-exact grid differs from the official float32 grid by < 1e-6 relative."""
    scale, *expected = golden
    x, off, mask = _golden_inputs()
    y = dcnv3_core(x, off, mask, 3, 1, 1, 1, 4, scale)
    for got, exp in zip(_stats(y), expected, strict=True):
        assert got == pytest.approx(exp, rel=1e-6)


def test_swapped_offsets_are_detected():
    """Interleave convention: swapping (dx, dy) moves the sum to ~46.13 (spec), far from 56.64."""
    x, off, mask = _golden_inputs()
    swapped = off.reshape(1, 8, 8, 36, 2).flip(-1).reshape(1, 8, 8, 72)
    y = dcnv3_core(x, swapped, mask, 3, 1, 1, 1, 4, 2.0)
    assert y.sum().item() == pytest.approx(46.13, rel=1e-3)


def _bilinear_zero(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Bilinear sample of ``img`` (H, W, D) at pixel coords (y, x); zero outside the image."""
    h, w, _ = img.shape
    y0, x0 = math.floor(y), math.floor(x)
    out = torch.zeros(img.shape[-1], dtype=img.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out = out + wy * wx * img[yy, xx]
    return out


def _loop_reference(x, off, mask, k, stride, pad, dil, group, scale) -> torch.Tensor:
    """Direct transcription of the spec formula (§1.9 step 4), one sample at a time."""
    n, h, w, c = x.shape
    d, p = c // group, k * k
    half = dil * (k - 1) // 2
    ho = (h + 2 * pad - (dil * (k - 1) + 1)) // stride + 1
    wo = (w + 2 * pad - (dil * (k - 1) + 1)) // stride + 1
    out = torch.zeros(n, ho, wo, c, dtype=x.dtype)
    o = off.reshape(n, ho, wo, group, p, 2)
    m = mask.reshape(n, ho, wo, group, p)
    for b in range(n):
        for i_h in range(ho):
            for i_w in range(wo):
                for g in range(group):
                    acc = torch.zeros(d, dtype=x.dtype)
                    for i in range(k):  # kernel column (x)
                        for j in range(k):  # kernel row (y)
                            pt = i * k + j
                            dx, dy = o[b, i_h, i_w, g, pt].tolist()
                            sx = i_w * stride - pad + half + (i * dil - half + dx) * scale
                            sy = i_h * stride - pad + half + (j * dil - half + dy) * scale
                            acc += m[b, i_h, i_w, g, pt] * _bilinear_zero(
                                x[b, :, :, g * d : (g + 1) * d], sy, sx
                            )
                    out[b, i_h, i_w, g * d : (g + 1) * d] = acc
    return out


@pytest.mark.parametrize(
    "k,stride,pad,dil,scale",
    [(3, 1, 1, 1, 2.0), (3, 2, 1, 1, 1.0), (3, 1, 2, 2, 1.5), (5, 1, 2, 1, 1.0)],
)
@pytest.mark.parametrize("official_grid", [False, True])
def test_matches_loop_reference(k, stride, pad, dil, scale, official_grid):
    g = torch.Generator().manual_seed(k * 100 + stride * 10 + pad + dil)
    n, h, w, group, d = 2, 5, 6, 2, 3
    x = torch.randn(n, h, w, group * d, generator=g, dtype=torch.float64)
    ho = (h + 2 * pad - (dil * (k - 1) + 1)) // stride + 1
    wo = (w + 2 * pad - (dil * (k - 1) + 1)) // stride + 1
    off = 1.5 * torch.randn(n, ho, wo, group * k * k * 2, generator=g, dtype=torch.float64)
    mask = torch.rand(n, ho, wo, group * k * k, generator=g, dtype=torch.float64)
    got = dcnv3_core(x, off, mask, k, stride, pad, dil, group, scale, official_grid=official_grid)
    ref = _loop_reference(x, off, mask, k, stride, pad, dil, group, scale)
    tol = 1e-5 if official_grid else 1e-12  # the official grid is rounded to float32 on purpose
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


def test_shape_errors_are_explained():
    x = torch.zeros(1, 4, 4, 8)
    with pytest.raises(ValueError, match="offset shape"):
        dcnv3_core(x, torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 4, 18), group=2)
    with pytest.raises(ValueError, match="divisible"):
        DCNv3(channels=10, group=4)


def test_module_at_init_is_a_3x3_average():
    """Zero-initialised offset/mask predictors: uniform mask 1/9 at the undeformed 3x3 grid (offset_scale 1)."""
    torch.manual_seed(0)
    m = DCNv3(channels=16, group=4, offset_scale=1.0).double()
    x = torch.randn(2, 7, 9, 16, dtype=torch.float64)
    y = m(x)
    proj = m.input_proj(x).permute(0, 3, 1, 2)
    avg = F.avg_pool2d(proj, 3, stride=1, padding=1, count_include_pad=True).permute(0, 2, 3, 1)
    torch.testing.assert_close(y, m.output_proj(avg), rtol=1e-12, atol=1e-12)


def test_module_state_dict_names_and_backward():
    m = DCNv3(channels=32, group=2, offset_scale=2.0)
    names = set(m.state_dict())
    assert {
        "dw_conv.0.weight",
        "dw_conv.0.bias",
        "dw_conv.1.1.weight",
        "dw_conv.1.1.bias",
        "offset.weight",
        "mask.weight",
        "input_proj.weight",
        "output_proj.bias",
    } <= names
    assert m.offset.weight.shape == (2 * 9 * 2, 32) and m.mask.weight.shape == (2 * 9, 32)
    torch.nn.init.normal_(m.offset.weight, std=0.1)  # non-zero so the offset path carries gradient
    x = torch.randn(1, 6, 6, 32, requires_grad=True)
    m(x).square().sum().backward()
    assert x.grad is not None and m.offset.weight.grad.abs().sum() > 0 and m.mask.weight.grad.abs().sum() > 0


def test_module_onnx_parity(tmp_path):
    from training.onnx_export import export_onnx, onnx_max_rel_error

    torch.manual_seed(0)
    m = DCNv3(channels=16, group=2, offset_scale=2.0).eval()
    torch.nn.init.normal_(m.offset.weight, std=0.5)
    torch.nn.init.normal_(m.mask.weight, std=0.5)
    x = torch.randn(1, 10, 12, 16)
    path = export_onnx(m, (x,), tmp_path / "dcn.onnx", ["x"], ["y"])
    assert onnx_max_rel_error(m, path, (x,)) < 1e-4


def test_low_precision_inputs_sample_in_float32():
    """bf16 in -> bf16 out, but sampling positions are computed in float32 (bf16 would be off by ~0.5 px)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 40, 40, 8, generator=g)
    off = 3 * torch.randn(1, 40, 40, 2 * 9 * 2, generator=g)
    mask = torch.rand(1, 40, 40, 2 * 9, generator=g)
    ref = dcnv3_core(
        x.bfloat16().float(), off.bfloat16().float(), mask.bfloat16().float(), group=2, offset_scale=2.0
    )
    got = dcnv3_core(x.bfloat16(), off.bfloat16(), mask.bfloat16(), group=2, offset_scale=2.0)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2)
