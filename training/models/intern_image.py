"""InternImage backbone (DCNv3) of MTP, in plain PyTorch.

Paper: Wang et al., "InternImage: Exploring Large-Scale Vision Foundation Models with Deformable
Convolutions", CVPR 2023; used as the InternImage-XL encoder of MTP (Wang et al., JSTARS 2024).
Official code: ``OpenGVLab/InternImage`` (``classification/models/intern_image.py``), copied into
``ViTAE-Transformer/MTP`` as ``Multi-Task_Pretrain/backbone/intern_image.py``. This is an independent
re-implementation from ``MTP_SPEC.md`` §1.9 with the official parameter names (so released checkpoints load
as an identity map) and the pure-PyTorch DCNv3 of :mod:`training.ops.dcnv3` (no CUDA extension needed,
exportable to ONNX).

Tensors are channels-last ``(N, H, W, C)`` inside the levels; the four returned maps are NCHW at strides
4/8/16/32 with ``channels * 2**s`` channels (XL: 192/384/768/1536).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.utils.checkpoint as torch_checkpoint

from training.models.registry import register_model
from training.models.vit_rvsa import DropPath, Mlp, check_level_indices, init_linear_and_norm_
from training.ops.dcnv3 import DCNv3

__all__ = ["InternImage", "InternImageConfig", "checkpoint_filter_fn", "internimage_t", "internimage_xl"]


@dataclass
class InternImageConfig:
    """Hyper-parameters of :class:`InternImage` (defaults = InternImage-XL as in MTP).

    Attributes:
        channels: width of level 0 (level s has ``channels * 2**s``).
        depths: blocks per level.
        groups: DCNv3 groups per level.
        mlp_ratio: MLP hidden width / channels.
        drop_path_rate: stochastic depth, linear over all blocks (0.2 for XL).
        layer_scale: init value of the per-channel residual scales ``gamma1/gamma2``; ``None`` = no scales.
        offset_scale: DCNv3 offset scale (2.0 for XL, 1.0 for T).
        post_norm: ``True`` (XL): ``x + gamma * LN(f(x))`` and no per-level final norm; ``False`` (T):
            pre-norm blocks and a final LN per level (key ``levels.s.norm.0``).
        dw_kernel_size: kernel of the DCNv3 offset-predicting depthwise conv (``None`` = 3).
        in_chans: input bands.
        norm_eps: LayerNorm epsilon everywhere (1e-6).
        strict_official: DCNv3 builds its sampling grid in float32 like the official pure-PyTorch op
            (for golden parity; see :func:`training.ops.dcnv3.dcnv3_core`).
        use_checkpoint: gradient checkpointing per block while training (the official ``with_cp``).
    """

    channels: int = 192
    depths: tuple[int, ...] = (5, 5, 24, 5)
    groups: tuple[int, ...] = (12, 24, 48, 96)
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    layer_scale: float | None = 1e-5
    offset_scale: float = 2.0
    post_norm: bool = True
    dw_kernel_size: int | None = None
    in_chans: int = 3
    norm_eps: float = 1e-6
    strict_official: bool = False
    use_checkpoint: bool = False

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        self.groups = tuple(int(g) for g in self.groups)
        if len(self.depths) != 4 or len(self.groups) != 4:
            raise ValueError(
                f"depths {self.depths} and groups {self.groups} must both have 4 entries (4 levels)"
            )
        for s, g in enumerate(self.groups):
            if (self.channels * 2**s) % g:
                raise ValueError(f"level {s}: {self.channels * 2**s} channels not divisible by {g} groups")


def _ln_after(pre: nn.Module | None, dim: int, eps: float) -> nn.Sequential:
    """LayerNorm wrapped in a Sequential so the official key indices (``norm1.1`` etc.) are reproduced."""
    return (
        nn.Sequential(pre, nn.LayerNorm(dim, eps=eps))
        if pre is not None
        else nn.Sequential(nn.LayerNorm(dim, eps=eps))
    )


class _ToChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class _ToChannelsFirst(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class StemLayer(nn.Module):
    """Conv3x3 s2 -> LN -> GELU -> Conv3x3 s2 -> LN: ``(N, 3, H, W)`` -> ``(N, H/4, W/4, C)``."""

    def __init__(self, in_chans: int, out_chans: int, eps: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans // 2, 3, stride=2, padding=1)
        self.norm1 = nn.Sequential(
            _ToChannelsLast(), nn.LayerNorm(out_chans // 2, eps=eps), _ToChannelsFirst()
        )
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_chans // 2, out_chans, 3, stride=2, padding=1)
        self.norm2 = _ln_after(_ToChannelsLast(), out_chans, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class DownsampleLayer(nn.Module):
    """Conv3x3 s2 (no bias) + LN, channels-last in and out, doubling the channels."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False)
        self.norm = _ln_after(_ToChannelsLast(), 2 * channels, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)))


class InternImageLayer(nn.Module):
    """One block: DCNv3 + MLP with residuals, post- or pre-norm, optional layer scale."""

    def __init__(self, cfg: InternImageConfig, channels: int, groups: int, drop_path: float) -> None:
        super().__init__()
        self.post_norm = cfg.post_norm
        self.use_checkpoint = cfg.use_checkpoint
        self.norm1 = _ln_after(None, channels, cfg.norm_eps)
        self.dcn = DCNv3(
            channels,
            kernel_size=3,
            dw_kernel_size=cfg.dw_kernel_size,
            stride=1,
            pad=1,
            dilation=1,
            group=groups,
            offset_scale=cfg.offset_scale,
            norm_eps=cfg.norm_eps,
            official_grid=cfg.strict_official,
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = _ln_after(None, channels, cfg.norm_eps)
        self.mlp = Mlp(channels, int(channels * cfg.mlp_ratio))
        self.layer_scale = cfg.layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(cfg.layer_scale * torch.ones(channels))
            self.gamma2 = nn.Parameter(cfg.layer_scale * torch.ones(channels))

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        a = self.norm1(self.dcn(x)) if self.post_norm else self.dcn(self.norm1(x))
        if self.layer_scale:
            a = self.gamma1 * a
        x = x + self.drop_path(a)
        b = self.norm2(self.mlp(x)) if self.post_norm else self.mlp(self.norm2(x))
        if self.layer_scale:
            b = self.gamma2 * b
        return x + self.drop_path(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, H, W, C)`` -> same shape."""
        if self.use_checkpoint and self.training and x.requires_grad:
            return torch_checkpoint.checkpoint(self._inner, x, use_reentrant=False)
        return self._inner(x)


class InternImageBlock(nn.Module):
    """One level (official name ``InternImageBlock``): blocks, optional final norm, optional downsample."""

    def __init__(self, cfg: InternImageConfig, level: int, drop_paths: list[float], downsample: bool) -> None:
        super().__init__()
        ch = cfg.channels * 2**level
        self.blocks = nn.ModuleList(InternImageLayer(cfg, ch, cfg.groups[level], dp) for dp in drop_paths)
        self.norm = _ln_after(None, ch, cfg.norm_eps) if not cfg.post_norm else None
        self.downsample = DownsampleLayer(ch, cfg.norm_eps) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(next level input, this level's feature)``, both channels-last."""
        for blk in self.blocks:
            x = blk(x)
        if self.norm is not None:
            x = self.norm(x)
        feat = x
        if self.downsample is not None:
            x = self.downsample(x)
        return x, feat


class InternImage(nn.Module):
    """InternImage backbone with the shared RSFM interface.

    ``out_channels`` (4 ints), ``forward_intermediates(x)`` / ``forward(x)`` -> 4 NCHW maps at strides
    4/8/16/32, ``no_weight_decay()``, ``layer_id(name)`` / ``num_layer_ids`` for layer-wise lr decay.
    """

    def __init__(self, cfg: InternImageConfig | None = None, **kwargs) -> None:
        super().__init__()
        if cfg is None:
            cfg = InternImageConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either an InternImageConfig or keyword arguments, not both")
        self.cfg = cfg
        self.patch_embed = StemLayer(cfg.in_chans, cfg.channels, cfg.norm_eps)
        n_blocks = sum(cfg.depths)
        dpr = [cfg.drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]  # linspace
        starts = [sum(cfg.depths[:i]) for i in range(4)]
        self.levels = nn.ModuleList(
            InternImageBlock(cfg, i, dpr[starts[i] : starts[i] + cfg.depths[i]], downsample=i < 3)
            for i in range(4)
        )
        self.out_channels: list[int] = [cfg.channels * 2**i for i in range(4)]
        self.strides: list[int] = [4, 8, 16, 32]
        self._init_weights()

    def _init_weights(self) -> None:
        """Official init: trunc-normal 0.02 linears, LN 1/0, then DCNv3's own reset (zero offsets/masks)."""
        init_linear_and_norm_(self)
        for m in self.modules():
            if isinstance(m, DCNv3):
                m.reset_parameters()

    @property
    def num_layers(self) -> int:
        """L for layer-wise lr decay (:mod:`training.lr_decay`): ids run 0..L+1 (L = number of blocks)."""
        return sum(self.cfg.depths)

    @property
    def num_layer_ids(self) -> int:
        """Stem (0), blocks (1..sum(depths)), everything after the backbone (sum(depths) + 1)."""
        return sum(self.cfg.depths) + 2

    def layer_id(self, name: str) -> int:
        """Layer id for layer-wise lr decay (official InternImage rule, MTP_SPEC §2.5).

        ``patch_embed.*`` -> 0; ``levels.s.blocks.b.*`` -> its global block index + 1; ``levels.s.downsample``
        and ``levels.s.norm`` -> the id after the level's last block; anything else -> ``sum(depths) + 1``.
        """
        name = re.sub(r"^((module|backbone|encoder)\.)+", "", name)
        if name.startswith("patch_embed."):
            return 0
        m = re.match(r"levels\.(\d+)\.blocks\.(\d+)\.", name)
        if m:
            s, b = int(m.group(1)), int(m.group(2))
            return sum(self.cfg.depths[:s]) + b + 1
        m = re.match(r"levels\.(\d+)\.(downsample|norm)\.", name)
        if m:
            return sum(self.cfg.depths[: int(m.group(1)) + 1]) + 1
        return sum(self.cfg.depths) + 1

    def no_weight_decay(self) -> set[str]:
        """No named exclusions (InternImage has no pos_embed; 1-D params are excluded by the optimiser)."""
        return set()

    def forward_intermediates(
        self, x: torch.Tensor, indices: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """NCHW maps of the requested levels (levels after the last requested one are not computed).

        Args:
            x: ``(N, in_chans, H, W)`` normalised image; any size (each stride-2 step rounds up).
            indices: levels to return (default ``[0, 1, 2, 3]``).

        Returns:
            level s: ``(N, channels * 2**s, ~H / 2**(s+2), ~W / 2**(s+2))``.
        """
        wanted = check_level_indices(indices)
        if x.shape[1] != self.cfg.in_chans:
            raise ValueError(f"input has {x.shape[1]} bands, the model expects {self.cfg.in_chans}")
        t = self.patch_embed(x)
        outs: dict[int, torch.Tensor] = {}
        for s, level in enumerate(self.levels[: max(wanted) + 1]):
            t, feat = level(t)
            if s in wanted:
                outs[s] = feat.permute(0, 3, 1, 2).contiguous()
        return [outs[s] for s in wanted]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-32 map ``(N, 8 * channels, ~H/32, ~W/32)``."""
        return self.forward_intermediates(x, indices=[3])[0]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Same as :meth:`forward_intermediates`."""
        return self.forward_intermediates(x)


def checkpoint_filter_fn(
    state_dict: dict[str, torch.Tensor], model: InternImage | None = None
) -> dict[str, torch.Tensor]:
    """Adapt an official InternImage / MTP state dict: strip ``module.``/``encoder.``/``backbone.`` and drop
    classification-only keys (``head.*``, ``conv_head.*``, ``fc_norm.*``, ``clip_projector.*``). Names are
    otherwise identical, so the result loads with ``strict=True``."""
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    for prefix in ("encoder.", "backbone."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    drop = re.compile(r"^(head|conv_head|fc_norm|clip_projector|avgpool)\b")
    return {k: v for k, v in sd.items() if not drop.match(k)}


PRETRAINED = {
    "internimage_xl.mtp_samrs": {"file": "last_internimage_xl_ss_is_rd_pretrn_model_encoder.pth"},
}


@register_model
def internimage_xl(**kwargs) -> InternImage:
    """InternImage-XL (MTP encoder): 192 ch, depths 5/5/24/5, groups 12/24/48/96, offset scale 2, post-norm,
    layer scale 1e-5; out channels 192/384/768/1536."""
    return InternImage(InternImageConfig(**kwargs))


@register_model
def internimage_t(**kwargs) -> InternImage:
    """InternImage-T (official T config, ~30M params, CPU-sized): 64 ch, depths 4/4/18/4, groups 4/8/16/32,
    offset scale 1, pre-norm with per-level norms, no layer scale; out channels 64/128/256/512."""
    defaults = dict(
        channels=64,
        depths=(4, 4, 18, 4),
        groups=(4, 8, 16, 32),
        layer_scale=None,
        offset_scale=1.0,
        post_norm=False,
    )
    return InternImage(InternImageConfig(**{**defaults, **kwargs}))
