"""ViT + RVSA (rotated varied-size window attention) backbone of MTP, in plain PyTorch.

Papers: Wang et al., "Advancing Plain Vision Transformer Towards Remote Sensing Foundation Model"
(RVSA, TGRS 2022) and Wang et al., "MTP: Advancing Remote Sensing Foundation Model via Multi-Task
Pretraining" (JSTARS 2024). Official code: ``ViTAE-Transformer/MTP``,
``Multi-Task_Pretrain/backbone/vit_win_rvsa_v3_wsz7.py`` (class ``ViT_Win_RVSA_V3_WSZ7``). This is an
independent re-implementation from the spec (``MTP_SPEC.md`` §1.1-1.8); parameter names equal the official
ones so released checkpoints load as an identity map (see :func:`checkpoint_filter_fn`).

Two modes (``ViTRVSAConfig.strict_official``):

* ``strict_official=True`` reproduces the official forward bit for bit, quirks included: the input token
  grid must equal the construction grid (no interpolation), the full-attention rel-pos tables are sized
  from the grid height only (so ``Wp > Hp`` raises ``IndexError`` like the official code), and RVSA
  divides the x-offset by ``h // 7`` and the y-offset by ``w // 7``.
* ``strict_official=False`` (default; a deliberate generalisation, identical for square inputs at the
  construction size): any input whose sides are multiples of the patch size works. ``pos_embed`` and the
  full-attention tables are bicubically resized at run time when the grid differs (the same resize the
  official finetune code applies at load time), the width table is sized from the grid width, and RVSA
  divides the x-offset by ``max(w // 7, 1)`` and the y-offset by ``max(h // 7, 1)``.

Output: four NCHW maps at strides 4/8/16/32 from the simple feature pyramid (``fpn1..fpn4``), all with
``embed_dim`` channels. ``norm`` exists (it is in the released checkpoints) but is never applied.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as torch_checkpoint

from training.models.registry import register_model

__all__ = [
    "ViTRVSA",
    "ViTRVSAConfig",
    "checkpoint_filter_fn",
    "vit_b_rvsa",
    "vit_l_rvsa",
    "vit_s_rvsa",
    "vit_t_rvsa",
]


@dataclass
class ViTRVSAConfig:
    """Hyper-parameters of :class:`ViTRVSA` (defaults = ViT-B + RVSA as in MTP).

    Attributes:
        img_size: construction size in pixels (int = square, or ``(H, W)``); fixes ``pos_embed`` and the
            full-attention tables. Inputs of another size are handled by run-time resizing unless strict.
        patch_size: 16 (the simple feature pyramid assumes 16).
        in_chans: input bands.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer size.
        interval: block i (0-based) uses full attention iff ``(i + 1) % interval == 0``, else RVSA.
        out_indices: blocks whose outputs feed the pyramid (4 of them).
        window_size: RVSA window (7).
        drop_path_rate: stochastic depth, linear over the blocks (0.1 pretraining, 0.3 finetuning).
        full_attn_rel_pos: ``False`` builds the detection variant (``RVSA_MTP_branches``) without the
            full-attention rel-pos tables.
        strict_official: reproduce the official forward exactly (see module docstring).
        use_checkpoint: gradient checkpointing per block while training (saves memory, costs time).
    """

    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    interval: int = 3
    out_indices: tuple[int, ...] = (3, 5, 7, 11)
    window_size: int = 7
    drop_path_rate: float = 0.0
    full_attn_rel_pos: bool = True
    strict_official: bool = False
    use_checkpoint: bool = False
    norm_eps: float = field(default=1e-6, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.img_size, int):
            self.img_size = (self.img_size, self.img_size)
        self.img_size = (int(self.img_size[0]), int(self.img_size[1]))
        self.out_indices = tuple(int(i) for i in self.out_indices)
        if self.patch_size != 16:
            raise ValueError(
                f"patch_size={self.patch_size}: only 16 is supported (the feature pyramid assumes it)"
            )
        if any(s % self.patch_size for s in self.img_size):
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if len(self.out_indices) != 4 or not all(0 <= i < self.depth for i in self.out_indices):
            raise ValueError(f"out_indices {self.out_indices} must be 4 block indices in [0, {self.depth})")

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid ``(Hp, Wp)`` at the construction size."""
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    def is_full_attention(self, i: int) -> bool:
        """Whether block ``i`` is a global-attention block."""
        return (i + 1) % self.interval == 0


# --------------------------------------------------------------------------------------------- helpers


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (timm semantics: survivors are scaled by 1/(1-p))."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


class DropPath(nn.Module):
    """Module wrapper of :func:`_drop_path`."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Resize a decomposed rel-pos table ``(L, hd)`` to ``(length, hd)`` (bicubic along L, as the official
    finetune loader does: the table is viewed as a 1x1xLxhd image and only its height changes)."""
    if table.shape[0] == length:
        return table
    out = F.interpolate(table[None, None], size=(length, table.shape[1]), mode="bicubic", align_corners=False)
    return out[0, 0]


def resize_pos_embed(
    pos_embed: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]
) -> torch.Tensor:
    """Resize ``pos_embed`` ``(1, Hs*Ws, C)`` to ``(1, Hd*Wd, C)``, bicubic, ``align_corners=False``."""
    if tuple(src_grid) == tuple(dst_grid):
        return pos_embed
    c = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, src_grid[0], src_grid[1], c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=dst_grid, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, dst_grid[0] * dst_grid[1], c)


def _rel_distance_index(size: int, device: torch.device) -> torch.Tensor:
    """``idx[q, k] = q - k + size - 1`` in ``[0, 2*size-2]``: the row of a decomposed rel-pos table."""
    r = torch.arange(size, device=device)
    return r[:, None] - r[None, :] + (size - 1)


def add_decomposed_rel_pos(
    attn: torch.Tensor,
    q: torch.Tensor,
    grid: tuple[int, int],
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
) -> torch.Tensor:
    """MViTv2 decomposed relative positions (query and key grids equal).

    ``attn[(qy,qx),(ky,kx)] += <q(qy,qx), Rh[qy-ky+H-1]> + <q(qy,qx), Rw[qx-kx+W-1]>``.

    Args:
        attn: ``(B, nH, H*W, H*W)`` logits.
        q: ``(B, nH, H*W, hd)`` queries (scaled or not: the caller decides, the official code differs per block).
        grid: ``(H, W)``.
        rel_pos_h, rel_pos_w: tables with at least ``2H-1`` / ``2W-1`` rows.

    Returns:
        ``attn`` with the two terms added, same shape.
    """
    h, w = grid
    rh = rel_pos_h[_rel_distance_index(h, q.device)]  # (H, H, hd)
    rw = rel_pos_w[_rel_distance_index(w, q.device)]  # (W, W, hd)
    b, nh, _, hd = q.shape
    r_q = q.reshape(b, nh, h, w, hd)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)
    attn = attn.view(b, nh, h, w, h, w) + rel_h[..., :, None] + rel_w[..., None, :]
    return attn.view(b, nh, h * w, h * w)


def swin_relative_position_index(ws: int) -> torch.Tensor:
    """Swin index ``(ws*ws, ws*ws)`` int64: ``(dy + ws-1) * (2ws-1) + (dx + ws-1)``."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # (2, N, N)
    return rel[0] * (2 * ws - 1) + rel[1]


# ---------------------------------------------------------------------------------------------- blocks


def init_linear_and_norm_(module: nn.Module) -> None:
    """The official ViT/InternImage init: trunc-normal(0.02) linear weights, zero biases, LayerNorm 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Mlp(nn.Module):
    """``fc1 -> GELU(erf) -> fc2`` on the last dimension: ViT tokens ``(B, N, C)`` or InternImages channels-last maps."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Global multi-head self-attention with decomposed rel-pos (the official ``Attention``).

    Official order: ``q = q * scale`` first, then ``q @ k^T``, then the rel-pos terms with the scaled q.
    """

    def __init__(self, cfg: ViTRVSAConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        head_dim = cfg.embed_dim // cfg.num_heads
        self.scale = head_dim**-0.5
        self.strict = cfg.strict_official
        self.grid = cfg.grid_size
        self.qkv = nn.Linear(cfg.embed_dim, cfg.embed_dim * 3, bias=cfg.qkv_bias)
        self.use_rel_pos = cfg.full_attn_rel_pos
        if self.use_rel_pos:
            gh, gw = self.grid
            # Official quirk: both tables are sized from the grid height (window_size[0]).
            len_w = 2 * gh - 1 if self.strict else 2 * gw - 1
            self.full_attn_rel_pos_h = nn.Parameter(torch.zeros(2 * gh - 1, head_dim))
            self.full_attn_rel_pos_w = nn.Parameter(torch.zeros(len_w, head_dim))
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor, hp: int, wp: int) -> torch.Tensor:
        """``x``: ``(B, hp*wp, C)`` -> same shape."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, nH, N, hd)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        if self.use_rel_pos:
            rh, rw = self.full_attn_rel_pos_h, self.full_attn_rel_pos_w
            if self.strict:
                if wp > rw.shape[0] // 2 + 1:
                    raise IndexError(
                        f"strict_official full attention: grid width {wp} exceeds the table built for height "
                        f"{rw.shape[0] // 2 + 1} (the official code fails the same way for Wp > Hp); "
                        "use strict_official=False for non-square inputs"
                    )
            else:
                rh = resize_rel_pos(rh, 2 * hp - 1)
                rw = resize_rel_pos(rw, 2 * wp - 1)
            attn = add_decomposed_rel_pos(attn, q, (hp, wp), rh, rw)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


def _official_window_grid(
    hp: int, wp: int, ws: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Window centres and in-window offsets computed in float32 with the official op sequence.

    The official code pools a ``(1, 2, H', W')`` float32 reference image (x channel, y channel) with a
    ``ws x ws`` average, and builds the offsets as ``arange * 2 * ws / ws / (size - 1)`` minus their mean.
    The goldens are sensitive to the float32 rounding of these steps, so strict mode repeats them.

    Returns:
        ``ref_y (n_h,)``, ``ref_x (n_w,)``, ``base_y (ws,)``, ``base_x (ws,)`` (float32).
    """
    lin_h = torch.linspace(-1, 1, hp, device=device, dtype=torch.float32)
    lin_w = torch.linspace(-1, 1, wp, device=device, dtype=torch.float32)
    ref_img = torch.stack((lin_w.view(1, wp).expand(hp, wp), lin_h.view(hp, 1).expand(hp, wp)))[None]
    centres = F.avg_pool2d(ref_img, kernel_size=ws)  # (1, 2, n_h, n_w)
    base_h = torch.arange(ws, device=device) * 2 * ws / ws / (hp - 1)
    base_w = torch.arange(ws, device=device) * 2 * ws / ws / (wp - 1)
    return centres[0, 1, :, 0], centres[0, 0, 0, :], base_h - base_h.mean(), base_w - base_w.mean()


def check_level_indices(indices: Sequence[int] | None) -> list[int]:
    """Validate pyramid level indices (0..3); ``None`` = all four."""
    wanted = [0, 1, 2, 3] if indices is None else [int(i) for i in indices]
    if not wanted or any(i not in (0, 1, 2, 3) for i in wanted):
        raise ValueError(f"indices {indices} must be a non-empty list of pyramid levels in 0..3")
    return wanted


def _regressor(dim: int, out: int, ws: int) -> nn.Sequential:
    """Per-window regressor ``AvgPool(ws) -> LeakyReLU(0.01) -> Conv1x1``; only index 2 has weights."""
    return nn.Sequential(nn.AvgPool2d(ws, stride=ws), nn.LeakyReLU(0.01), nn.Conv2d(dim, out, 1))


class RotatedVariedSizeWindowAttention(nn.Module):
    """RVSA: window attention whose key/value windows are scaled, rotated and shifted per window and head.

    Follows MTP_SPEC §1.4 step by step (coordinates are ``grid_sample`` ``align_corners=True`` coordinates
    of the zero-padded token grid, x first).
    """

    def __init__(self, cfg: ViTRVSAConfig) -> None:
        super().__init__()
        dim, nh, ws = cfg.embed_dim, cfg.num_heads, cfg.window_size
        self.num_heads, self.ws, self.dim = nh, ws, dim
        self.head_dim = dim // nh
        self.scale = self.head_dim**-0.5
        self.strict = cfg.strict_official
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * ws - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * ws - 1, self.head_dim))
        self.sampling_offsets = _regressor(dim, nh * 2, ws)
        self.sampling_scales = _regressor(dim, nh * 2, ws)
        self.sampling_angles = _regressor(dim, nh, ws)
        self.qkv = nn.Linear(dim, dim * 3, bias=cfg.qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, nh))
        self.register_buffer("relative_position_index", swin_relative_position_index(ws), persistent=True)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _sample_grid(self, x_pad: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Sampling coordinates ``(B*nH, H', W', 2)`` (x, y in [-1, 1]) from the padded map ``(B, C, H', W')``."""
        b, _, hp, wp = x_pad.shape
        ws, nh = self.ws, self.num_heads
        n_h, n_w = hp // ws, wp // ws
        dt, dev = x_pad.dtype, x_pad.device
        if self.strict:
            # The official code builds the fixed grids in float32 whatever the model dtype; the float64
            # goldens depend on that rounding (~1e-5 relative), so strict mode does the same ops.
            ref_y, ref_x, base_y, base_x = _official_window_grid(hp, wp, ws, dev)
        else:
            # Window centres = mean of the linspace(-1, 1) pixel grid over each window.
            ref_y = torch.linspace(-1, 1, hp, dtype=dt, device=dev).reshape(n_h, ws).mean(1)  # (n_h,)
            ref_x = torch.linspace(-1, 1, wp, dtype=dt, device=dev).reshape(n_w, ws).mean(1)  # (n_w,)
            # In-window base offsets (i - (ws-1)/2) * 2/(size-1).
            base = torch.arange(ws, dtype=dt, device=dev) - (ws - 1) / 2
            base_y = base * (2.0 / (hp - 1))
            base_x = base * (2.0 / (wp - 1))

        off = self.sampling_offsets(x_pad).reshape(b * nh, 2, n_h, n_w)
        if self.strict:
            # Official quirk: x divided by a number from the height and y by one from the width.
            div_x, div_y = h // ws, w // ws
        else:
            div_x, div_y = max(w // ws, 1), max(h // ws, 1)
        off_x = off[:, 0] / div_x  # (B*nH, n_h, n_w)
        off_y = off[:, 1] / div_y
        scale = self.sampling_scales(x_pad).reshape(b * nh, 2, n_h, n_w)
        angle = self.sampling_angles(x_pad).reshape(b * nh, n_h, n_w)

        # Broadcast to (B*nH, n_h, ws, n_w, ws): window-level terms on axes 1 and 3, in-window on 2 and 4.
        cx = base_x.view(1, 1, 1, 1, ws) * (scale[:, 0] + 1)[:, :, None, :, None]
        cy = base_y.view(1, 1, ws, 1, 1) * (scale[:, 1] + 1)[:, :, None, :, None]
        cos = torch.cos(angle)[:, :, None, :, None]
        sin = torch.sin(angle)[:, :, None, :, None]
        rx = cx * cos - cy * sin
        ry = cx * sin + cy * cos
        sx = ref_x.view(1, 1, 1, n_w, 1) + rx + off_x[:, :, None, :, None]
        sy = ref_y.view(1, n_h, 1, 1, 1) + ry + off_y[:, :, None, :, None]
        return torch.stack((sx, sy), dim=-1).reshape(b * nh, hp, wp, 2)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``x``: ``(B, h*w, C)`` tokens of an ``h x w`` grid -> same shape."""
        b, n, c = x.shape
        ws, nh, hd = self.ws, self.num_heads, self.head_dim
        pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
        top, left = pad_h // 2, pad_w // 2
        pads = (left, pad_w - left, top, pad_h - top)
        hp, wp = h + pad_h, w + pad_w
        n_h, n_w = hp // ws, wp // ws

        x_pad = F.pad(x.transpose(1, 2).reshape(b, c, h, w), pads)
        # Coordinates in at least float32: half precision would misplace samples by a sizeable fraction of
        # a token on large grids.
        work = torch.promote_types(x.dtype, torch.float32)
        grid = self._sample_grid(x_pad.to(work), h, w)

        # Project the unpadded tokens, then zero-pad q/k/v (padded entries are exactly 0, no bias).
        qkv = self.qkv(x).transpose(1, 2).reshape(b * 3 * nh, hd, h, w)
        qkv = F.pad(qkv, pads).reshape(b, 3, nh, hd, hp, wp).transpose(0, 1).reshape(3, b * nh, hd, hp, wp)
        q, k, v = qkv[0], qkv[1], qkv[2]
        k = F.grid_sample(k.to(work), grid, mode="bilinear", padding_mode="zeros", align_corners=True).to(
            q.dtype
        )
        v = F.grid_sample(v.to(work), grid, mode="bilinear", padding_mode="zeros", align_corners=True).to(
            q.dtype
        )

        def windows(t: torch.Tensor) -> torch.Tensor:  # (B*nH, hd, H', W') -> (B*n_h*n_w, nH, ws*ws, hd)
            t = t.reshape(b, nh, hd, n_h, ws, n_w, ws).permute(0, 3, 5, 1, 4, 6, 2)
            return t.reshape(b * n_h * n_w, nh, ws * ws, hd)

        q, k, v = windows(q), windows(k), windows(v)
        dots = (q @ k.transpose(-2, -1)) * self.scale  # official: scale after the product
        dots = add_decomposed_rel_pos(dots, q, (ws, ws), self.rel_pos_h, self.rel_pos_w)  # unscaled q
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        dots = dots + bias.view(ws * ws, ws * ws, nh).permute(2, 0, 1).unsqueeze(0)
        out = dots.softmax(dim=-1) @ v  # (B*n_h*n_w, nH, ws*ws, hd); padded keys take part (no mask)

        out = out.reshape(b, n_h, n_w, nh, ws, ws, hd).permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, hp, wp)
        out = out[:, :, top : top + h, left : left + w]
        return self.proj(out.flatten(2).transpose(1, 2))


class Block(nn.Module):
    """Pre-norm transformer block; ``attn`` is global (:class:`Attention`) or RVSA."""

    def __init__(self, cfg: ViTRVSAConfig, index: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        full = cfg.is_full_attention(index)
        self.attn: nn.Module = Attention(cfg) if full else RotatedVariedSizeWindowAttention(cfg)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor, hp: int, wp: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hp, wp))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Conv ``k = s = patch`` -> tokens ``(B, Hp*Wp, C)`` and the grid ``(Hp, Wp)``."""

    def __init__(self, patch: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        hp, wp = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), (int(hp), int(wp))


class Norm2d(nn.Module):
    """LayerNorm over the channels of an NCHW map (key ``ln``)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------- model


class ViTRVSA(nn.Module):
    """ViT + RVSA backbone with the MTP simple feature pyramid.

    Interface shared by every RSFM backbone: ``out_channels`` (4 ints), ``forward_intermediates(x)`` and
    ``forward(x)`` -> list of 4 NCHW maps at strides 4/8/16/32, ``no_weight_decay()``, and for layer-wise
    lr decay ``layer_id(name)`` / ``num_layer_ids``.
    """

    def __init__(self, cfg: ViTRVSAConfig | None = None, **kwargs) -> None:
        super().__init__()
        if cfg is None:
            cfg = ViTRVSAConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a ViTRVSAConfig or keyword arguments, not both")
        self.cfg = cfg
        c = cfg.embed_dim
        gh, gw = cfg.grid_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, c)
        self.pos_embed = nn.Parameter(torch.zeros(1, gh * gw, c))
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linspace
        self.blocks = nn.ModuleList(Block(cfg, i, dpr[i]) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(c, eps=cfg.norm_eps)  # in the checkpoints, never applied (official)
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(c, c, 2, stride=2),
            Norm2d(c, cfg.norm_eps),
            nn.GELU(),
            nn.ConvTranspose2d(c, c, 2, stride=2),
        )
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2))
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(2, stride=2)
        self.out_channels: list[int] = [c] * 4
        self.strides: list[int] = [4, 8, 16, 32]
        self._init_weights()

    def _init_weights(self) -> None:
        """Official init (trunc-normal 0.02 linears and pos_embed, LN 1/0, depth-rescaled output projections);
        only matters when training from scratch."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        init_linear_and_norm_(self)
        with torch.no_grad():
            for i, blk in enumerate(self.blocks):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))

    # -- interface ------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """L for layer-wise lr decay (:mod:`training.lr_decay`): ids run 0..L+1, scale ``decay ** (L+1-id)``."""
        return self.cfg.depth

    @property
    def num_layer_ids(self) -> int:
        """Number of distinct :meth:`layer_id` values: patch/pos embed (0), blocks (1..depth), rest (depth+1)."""
        return self.cfg.depth + 2

    def layer_id(self, name: str) -> int:
        """Layer id of a parameter name for layer-wise lr decay (MTP_SPEC §7.8).

        ``pos_embed``/``patch_embed.*`` -> 0, ``blocks.i.*`` -> i + 1, anything else (``fpn*``, ``norm``,
        necks, heads) -> depth + 1. A leading ``backbone.``/``encoder.``/``module.`` prefix is ignored.
        The lr scale is then ``decay ** (num_layer_ids - 1 - layer_id)``.
        """
        name = re.sub(r"^((module|backbone|encoder)\.)+", "", name)
        if name == "pos_embed" or name.startswith("patch_embed."):
            return 0
        m = re.match(r"blocks\.(\d+)\.", name)
        if m:
            return int(m.group(1)) + 1
        return self.cfg.depth + 1

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not get weight decay (1-D params are excluded by the optimiser)."""
        return {"pos_embed"}

    def _pos_embed_for(self, hp: int, wp: int) -> torch.Tensor:
        grid = self.cfg.grid_size
        if (hp, wp) == grid:
            return self.pos_embed
        if self.cfg.strict_official:
            raise ValueError(
                f"strict_official: token grid {hp}x{wp} differs from the construction grid {grid[0]}x{grid[1]} "
                f"(input {hp * 16}x{wp * 16} px vs img_size {self.cfg.img_size}); build the model with "
                "img_size equal to the input size, or use strict_official=False to interpolate"
            )
        return resize_pos_embed(self.pos_embed, grid, (hp, wp))

    def forward_tapped(self, x: torch.Tensor, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """The tapped block outputs as NCHW maps at stride 16, before the pyramid (what the official
        change-detection and classification copies use).

        Args:
            x: ``(B, in_chans, H, W)``, H and W multiples of 16.
            indices: which of the 4 taps to return (default all); blocks after the last needed tap are skipped.

        Returns:
            tensors ``(B, embed_dim, H/16, W/16)``, one per requested tap.
        """
        wanted = check_level_indices(indices)
        b, _, h, w = x.shape
        p = self.cfg.patch_size
        if h % p or w % p:
            raise ValueError(
                f"input {h}x{w} px: both sides must be multiples of the patch size {p}; pad or resize"
            )
        if x.shape[1] != self.cfg.in_chans:
            raise ValueError(f"input has {x.shape[1]} bands, the model expects {self.cfg.in_chans}")
        taps = {self.cfg.out_indices[i]: i for i in wanted}
        last = max(taps)
        t, (hp, wp) = self.patch_embed(x)
        t = t + self._pos_embed_for(hp, wp)
        feats: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks[: last + 1]):
            if self.cfg.use_checkpoint and self.training and t.requires_grad:
                t = torch_checkpoint.checkpoint(blk, t, hp, wp, use_reentrant=False)
            else:
                t = blk(t, hp, wp)
            if i in taps:
                feats[taps[i]] = t.transpose(1, 2).reshape(b, -1, hp, wp)
        return [feats[i] for i in wanted]

    def forward_intermediates(
        self, x: torch.Tensor, indices: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """NCHW maps at strides 4/8/16/32 (``embed_dim`` channels each).

        Args:
            x: ``(B, in_chans, H, W)`` normalised image, H and W multiples of 16 (and >= 32 so stride 32 exists).
            indices: pyramid levels to return (default ``[0, 1, 2, 3]``).
        """
        wanted = check_level_indices(indices)
        if 3 in wanted and min(x.shape[-2:]) < 32:
            raise ValueError(
                f"input {x.shape[-2]}x{x.shape[-1]} px is too small for the stride-32 level; use >= 32 px "
                "or request indices without level 3"
            )
        feats = self.forward_tapped(x, wanted)
        ops = (self.fpn1, self.fpn2, self.fpn3, self.fpn4)
        return [ops[i](f) for i, f in zip(wanted, feats, strict=True)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-32 map ``(B, embed_dim, H/32, W/32)``."""
        return self.forward_intermediates(x, indices=[3])[0]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Same as :meth:`forward_intermediates`."""
        return self.forward_intermediates(x)


# ----------------------------------------------------------------------------------- checkpoint loading

_PREFIXES = ("module.", "encoder.", "backbone.")
# Keys of MAE / classification checkpoints that have no counterpart in the backbone.
_DROP = re.compile(r"^(cls_token|mask_token|decoder.*|head\..*|fc_norm\..*|dist_token)$")


def _strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.``, then keep only ``encoder.``/``backbone.`` entries (stripped) if any exist."""
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    for prefix in ("encoder.", "backbone."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def _convert_mtp_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official MTP names are already ours: only prefixes differ, and MAE extras are dropped."""
    sd = _strip_prefixes(state_dict)
    return {k: v for k, v in sd.items() if not _DROP.match(k)}


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: ViTRVSA) -> dict[str, torch.Tensor]:
    """Adapt an official MTP/MAE state dict to ``model`` (load the result with ``strict=True``).

    * strips ``module.``/``encoder.``/``backbone.``; drops ``cls_token``, ``mask_token``, ``decoder*``;
    * ``pos_embed``: drops a cls entry (MAE: N = g*g + 1) and bicubically resizes to the model's grid;
    * ``full_attn_rel_pos_*``: bicubically resized along the length to the model's table size, dropped if
      the model is the detection variant without them;
    * ``relative_position_index`` is regenerated (the model's own buffer), never trusted from the file.

    Args:
        state_dict: as loaded from the file (see :mod:`training.checkpoints`).
        model: the target model (its shapes decide the resizing).

    Returns:
        A new dict; tensors that need no change are shared, not copied.
    """
    sd = _convert_mtp_official(state_dict)
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k == "pos_embed":
            n = v.shape[1]
            g = int(math.isqrt(n))
            if g * g != n:  # MAE: a leading cls token
                v = v[:, 1:]
                g = int(math.isqrt(v.shape[1]))
                if g * g != v.shape[1]:
                    raise ValueError(
                        f"pos_embed with {n} tokens is neither g*g nor g*g+1; cannot map it to a grid"
                    )
            v = resize_pos_embed(v, (g, g), model.cfg.grid_size)
        elif "full_attn_rel_pos_" in k:
            if k not in own:
                continue  # the detection variant has no global rel-pos
            v = resize_rel_pos(v, own[k].shape[0])
        elif k.endswith("relative_position_index") and k in own:
            v = own[k].clone()
        out[k] = v
    return out


# ------------------------------------------------------------------------------------------- factories

# Pretrained weights (user-supplied files; MTP has no Hub repo, MTP_SPEC §5).
PRETRAINED = {
    "vit_b_rvsa.mtp_samrs": {"file": "last_vit_b_rvsa_ss_is_rd_pretrn_model_encoder.pth", "img_size": 224},
    "vit_l_rvsa.mtp_samrs": {"file": "last_vit_l_rvsa_ss_is_rd_pretrn_model_encoder.pth", "img_size": 448},
}


def _build(defaults: dict, kwargs: dict) -> ViTRVSA:
    params = {**defaults, **kwargs}
    return ViTRVSA(ViTRVSAConfig(**params))


@register_model
def vit_b_rvsa(**kwargs) -> ViTRVSA:
    """ViT-B + RVSA (768 ch, 12 blocks, 12 heads, full attention at 2/5/8/11, taps 3/5/7/11)."""
    return _build(dict(embed_dim=768, depth=12, num_heads=12, interval=3, out_indices=(3, 5, 7, 11)), kwargs)


@register_model
def vit_l_rvsa(**kwargs) -> ViTRVSA:
    """ViT-L + RVSA (1024 ch, 24 blocks, 16 heads, full attention at 5/11/17/23, taps 7/11/15/23); MTP at 448."""
    defaults = dict(
        embed_dim=1024, depth=24, num_heads=16, interval=6, out_indices=(7, 11, 15, 23), img_size=448
    )
    return _build(defaults, kwargs)


@register_model
def vit_s_rvsa(**kwargs) -> ViTRVSA:
    """CPU-sized ViT-S + RVSA (384 ch, 12 blocks, 6 heads); same layout as ViT-B, no released weights."""
    return _build(dict(embed_dim=384, depth=12, num_heads=6, interval=3, out_indices=(3, 5, 7, 11)), kwargs)


@register_model
def vit_t_rvsa(**kwargs) -> ViTRVSA:
    """Tiny ViT + RVSA for tests and CPU fine-tuning (192 ch, 6 blocks, 3 heads, full attention at 2/5)."""
    return _build(dict(embed_dim=192, depth=6, num_heads=3, interval=3, out_indices=(1, 2, 3, 5)), kwargs)
