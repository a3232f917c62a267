"""DCNv3 (deformable convolution v3, InternImage) in pure PyTorch, ONNX-exportable.

Paper: Wang et al., "InternImage: Exploring Large-Scale Vision Foundation Models with Deformable
Convolutions", CVPR 2023. Official code: ``OpenGVLab/InternImage`` (``ops_dcnv3``), copied into
``ViTAE-Transformer/MTP``. The official module runs a CUDA kernel; its pure-PyTorch twin
``DCNv3_pytorch`` has the same parameter names. This file is an independent re-implementation of the
same maths (MTP_SPEC §1.9, §6) built on ``F.grid_sample``, so it runs on CPU and exports to ONNX
(``GridSample``, opset >= 16).

Sampling convention (must match the checkpoints): for output pixel (h, w), group g and kernel point
``p = i * K + j`` (i = kernel column, j = kernel row: points are **x-major**), the offset channels are
interleaved ``(dx_p, dy_p)`` with groups outermost, and the sample is taken at (unpadded pixel coords)
``X = w*stride - pad + half + (i*dil - half + dx) * offset_scale``, ``Y`` likewise with ``j`` and ``dy``,
where ``half = dil*(K-1)//2``. Bilinear, zero outside the image. Output = sum_p mask[g, p] * sample.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DCNv3", "dcnv3_core"]


def dcnv3_core(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    kernel_size: int = 3,
    stride: int = 1,
    pad: int = 1,
    dilation: int = 1,
    group: int = 4,
    offset_scale: float = 1.0,
    official_grid: bool = False,
) -> torch.Tensor:
    """DCNv3 core op (the part the official code runs in CUDA).

    Args:
        x: input, channels-last ``(N, H, W, C)``; ``C = group * D``, channel ``g*D + d`` is channel d of group g.
        offset: ``(N, Ho, Wo, group * K*K * 2)``, per group, per point (x-major), ``(dx, dy)`` in pixels
            (before ``offset_scale``).
        mask: ``(N, Ho, Wo, group * K*K)`` modulation weights (the module applies a softmax over the points).
        kernel_size, stride, pad, dilation: the (square) kernel geometry.
        group: number of groups G.
        offset_scale: scales both the base kernel grid and the learned offsets (2.0 in InternImage-XL).
        official_grid: build the fixed part of the sampling grid in float32 on the zero-padded input, as the
            official ``dcnv3_core_pytorch`` does, so float64 runs reproduce its goldens to ~1e-9 (the default
            float64-exact grid differs from it by ~5e-7 relative). Same maths either way.

    Returns:
        ``(N, Ho, Wo, C)``, same dtype as ``x``.

    Raises:
        ValueError: channel or spatial sizes of the three inputs disagree.
    """
    n, h, w, c = x.shape
    k = kernel_size
    p = k * k
    if c % group:
        raise ValueError(f"dcnv3_core: channels {c} not divisible by group {group}")
    d = c // group
    extent = dilation * (k - 1)
    h_out = (h + 2 * pad - (extent + 1)) // stride + 1
    w_out = (w + 2 * pad - (extent + 1)) // stride + 1
    if offset.shape != (n, h_out, w_out, group * p * 2):
        raise ValueError(
            f"dcnv3_core: offset shape {tuple(offset.shape)} != {(n, h_out, w_out, group * p * 2)}"
        )
    if mask.shape != (n, h_out, w_out, group * p):
        raise ValueError(f"dcnv3_core: mask shape {tuple(mask.shape)} != {(n, h_out, w_out, group * p)}")

    half = extent // 2
    out_dtype = x.dtype
    # Sampling coordinates reach ~image size in pixels: half precision would misplace samples by up to a
    # pixel, so low-precision inputs are sampled in float32 and the result cast back.
    dt = torch.promote_types(torch.promote_types(x.dtype, offset.dtype), torch.float32)
    x, offset, mask = x.to(dt), offset.to(dt), mask.to(dt)
    if official_grid:
        out = _dcnv3_core_official_grid(
            x, offset, mask, k, stride, pad, dilation, group, offset_scale, h_out, w_out
        )
        return out.to(out_dtype)
    dev = offset.device
    # Kernel taps relative to the centre; point p = i*K + j uses tap i along x and tap j along y.
    taps = torch.arange(k, dtype=dt, device=dev) * dilation - half
    tap_x = taps.repeat_interleave(k)  # (P,) i-major
    tap_y = taps.repeat(k)  # (P,)
    # Kernel centres in unpadded pixel coordinates (the official code pads by `pad` first; sampling the
    # unpadded map at shifted coordinates with zero padding is the same bilinear result, without the copy).
    cy = torch.arange(h_out, dtype=dt, device=dev) * stride + (half - pad)
    cx = torch.arange(w_out, dtype=dt, device=dev) * stride + (half - pad)

    off = offset.reshape(n, h_out, w_out, group, p, 2)
    sx = cx.view(1, 1, w_out, 1, 1) + (tap_x + off[..., 0]) * offset_scale  # (N, Ho, Wo, G, P)
    sy = cy.view(1, h_out, 1, 1, 1) + (tap_y + off[..., 1]) * offset_scale
    # Pixel index -> grid_sample's [-1, 1] under align_corners=False (pixel centres at (i + 0.5) / size).
    gx = (2.0 * sx + 1.0) / w - 1.0
    gy = (2.0 * sy + 1.0) / h - 1.0
    grid = torch.stack((gx, gy), dim=-1)  # (N, Ho, Wo, G, P, 2)
    grid = grid.reshape(n, h_out * w_out, group, p, 2).transpose(1, 2).reshape(n * group, h_out * w_out, p, 2)

    inp = x.permute(0, 3, 1, 2).reshape(n * group, d, h, w)
    sampled = F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # sampled: (N*G, D, Ho*Wo, P)
    m = mask.reshape(n, h_out * w_out, group, p).transpose(1, 2).reshape(n * group, 1, h_out * w_out, p)
    out = (sampled * m).sum(-1)  # (N*G, D, Ho*Wo)
    return out.reshape(n, c, h_out * w_out).transpose(1, 2).reshape(n, h_out, w_out, c).to(out_dtype)


def _dcnv3_core_official_grid(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    k: int,
    stride: int,
    pad: int,
    dilation: int,
    group: int,
    offset_scale: float,
    h_out: int,
    w_out: int,
) -> torch.Tensor:
    """:func:`dcnv3_core` with the official float32 grid construction (normalised by the padded size)."""
    n, _, _, c = x.shape
    d, p = c // group, k * k
    xp = F.pad(x, (0, 0, pad, pad, pad, pad))
    hp, wp = xp.shape[1], xp.shape[2]
    half = (dilation * (k - 1)) // 2
    f32, dev = torch.float32, x.device
    ys = torch.linspace(half + 0.5, half + 0.5 + (h_out - 1) * stride, h_out, dtype=f32, device=dev)
    xs = torch.linspace(half + 0.5, half + 0.5 + (w_out - 1) * stride, w_out, dtype=f32, device=dev)
    ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
    ref = torch.stack((ref_x.reshape(-1) / wp, ref_y.reshape(-1) / hp), -1).reshape(1, h_out, w_out, 1, 2)
    taps = torch.linspace(-half, -half + (k - 1) * dilation, k, dtype=f32, device=dev)
    kx, ky = torch.meshgrid(taps, taps, indexing="ij")  # x-major point order
    kern = torch.stack((kx / wp, ky / hp), -1).reshape(p, 1, 2).repeat(1, group, 1).permute(1, 0, 2)
    base = (ref + kern.reshape(1, 1, 1, group * p, 2) * offset_scale).flatten(3, 4)  # float32
    norm = torch.tensor([wp, hp], device=dev).repeat(group * p).view(1, 1, 1, -1)
    loc = base + offset * offset_scale / norm
    grid = (2 * loc - 1).view(n, h_out * w_out, group, p, 2).transpose(1, 2).flatten(0, 1)
    inp = xp.reshape(n, hp * wp, c).transpose(1, 2).reshape(n * group, d, hp, wp)
    sampled = F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    m = mask.reshape(n, h_out * w_out, group, p).transpose(1, 2).reshape(n * group, 1, h_out * w_out, p)
    out = (sampled * m).sum(-1)
    return out.reshape(n, c, h_out * w_out).transpose(1, 2).reshape(n, h_out, w_out, c)


class _ToChannelsLast(nn.Module):
    """``(N, C, H, W) -> (N, H, W, C)``; a module so that state-dict indices match the official Sequential."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class DCNv3(nn.Module):
    """DCNv3 block (input_proj -> deformable sampling -> output_proj), channels-last in and out.

    Parameter names equal the official ``DCNv3`` / ``DCNv3_pytorch``: ``dw_conv.0`` (depthwise conv),
    ``dw_conv.1.1`` (LayerNorm), ``offset``, ``mask``, ``input_proj``, ``output_proj``.

    Args:
        channels: C.
        kernel_size: K of the deformable sampling (3).
        dw_kernel_size: kernel of the depthwise conv that predicts offsets; ``None`` = ``kernel_size``.
        stride, pad, dilation: sampling geometry (InternImage uses 1, 1, 1).
        group: G; ``channels % group == 0``.
        offset_scale: see :func:`dcnv3_core`.
        norm_eps: LayerNorm epsilon (1e-6 in the official build_norm_layer).
        official_grid: see :func:`dcnv3_core` (for parity tests with the official float32 grid).
    """

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        dw_kernel_size: int | None = None,
        stride: int = 1,
        pad: int = 1,
        dilation: int = 1,
        group: int = 4,
        offset_scale: float = 1.0,
        norm_eps: float = 1e-6,
        official_grid: bool = False,
    ) -> None:
        super().__init__()
        self.official_grid = official_grid
        if channels % group:
            raise ValueError(f"DCNv3: channels ({channels}) must be divisible by group ({group})")
        dw_k = dw_kernel_size if dw_kernel_size is not None else kernel_size
        self.channels, self.kernel_size, self.stride = channels, kernel_size, stride
        self.pad, self.dilation, self.group, self.offset_scale = pad, dilation, group, offset_scale
        self.dw_conv = nn.Sequential(
            nn.Conv2d(channels, channels, dw_k, stride=1, padding=(dw_k - 1) // 2, groups=channels),
            nn.Sequential(_ToChannelsLast(), nn.LayerNorm(channels, eps=norm_eps)),
            nn.GELU(),
        )
        p = kernel_size * kernel_size
        self.offset = nn.Linear(channels, group * p * 2)
        self.mask = nn.Linear(channels, group * p)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: zero offset/mask predictors (start as a plain 3x3 average), Xavier projections."""
        for lin in (self.offset, self.mask):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        for lin in (self.input_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, H, W, C)`` -> ``(N, Ho, Wo, C)`` (``Ho = H`` for stride 1, pad 1, K 3)."""
        n, h, w, _ = x.shape
        x_proj = self.input_proj(x)
        x1 = self.dw_conv(x.permute(0, 3, 1, 2))  # (N, H, W, C) after the LN/GELU
        offset = self.offset(x1)
        mask = self.mask(x1).reshape(n, h, w, self.group, -1).softmax(dim=-1).reshape(n, h, w, -1)
        y = dcnv3_core(
            x_proj,
            offset,
            mask,
            self.kernel_size,
            self.stride,
            self.pad,
            self.dilation,
            self.group,
            self.offset_scale,
            official_grid=self.official_grid,
        )
        return self.output_proj(y)
