"""Siamese change detector (MTP spec section 3.5, Open-CD ``SiamEncoderDecoder``) on any RSFM backbone.

Both dates go through the **same** backbone (shared weights); each of the 4 pyramid levels is fused as
``|f1 - f2|`` (``FeatureFusionNeck(policy='abs_diff')``), and a UNet-style decoder walks from the deepest
level back up: per block, x2 upsample, concat the next-finer skip (resized to match), two 3x3 Conv-BN-ReLU.
The logits (2 classes: 0 = no change, 1 = change) are resized bilinearly to the input size, so
``forward(x_before, x_after) -> B x 2 x H x W`` for any backbone stride layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.models.registry import create_model, register_model

__all__ = ["ChangeDetector", "UNetDecoder", "change_detector"]


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


class UNetDecoder(nn.Module):
    """Decoder over 4 levels (finest first); block ``i`` outputs ``channels[i]``.

    Input: 4 maps ``B x in_channels[j] x h_j x w_j``; output ``B x num_classes x h x w`` at twice the finest
    level's resolution (the extra x2 of Open-CD's UNetHead); callers resize to the label size.
    """

    def __init__(self, in_channels: Sequence[int], channels: Sequence[int] = (256, 128, 64, 32),
                 num_classes: int = 2, dropout: float = 0.1):
        super().__init__()
        rev = list(in_channels)[::-1]  # deepest first
        blocks = []
        cur = rev[0]
        for i, out_ch in enumerate(channels):
            skip = rev[i + 1] if i + 1 < len(rev) else 0
            blocks.append(_DoubleConv(cur + skip, out_ch))
            cur = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(cur, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        rev = list(feats)[::-1]
        x = rev[0]
        for i, block in enumerate(self.blocks):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            if i + 1 < len(rev):
                skip = rev[i + 1]
                if skip.shape[-2:] != x.shape[-2:]:
                    skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
                x = torch.cat([x, skip], dim=1)
            x = block(x)
        return self.conv_seg(self.dropout(x))


class ChangeDetector(nn.Module):
    """Shared-weight encoder on both dates + ``|f1 - f2|`` fusion + UNet decoder.

    ``forward(x_before: B x C x H x W, x_after: B x C x H x W) -> logits B x 2 x H x W``.
    """

    def __init__(self, backbone: nn.Module, channels: Sequence[int] = (256, 128, 64, 32), dropout: float = 0.1):
        super().__init__()
        if not hasattr(backbone, "out_channels") or len(backbone.out_channels) != 4:
            raise ValueError(f"{type(backbone).__name__} is not an RSFM backbone: it needs out_channels (4 levels) "
                             "and forward_intermediates(x) -> 4 maps")
        self.backbone = backbone
        self.decode_head = UNetDecoder(backbone.out_channels, channels, 2, dropout)

    def forward(self, x_before: torch.Tensor, x_after: torch.Tensor) -> torch.Tensor:
        if x_before.shape != x_after.shape:
            raise ValueError(f"both dates must have the same shape; got {tuple(x_before.shape)} and "
                             f"{tuple(x_after.shape)} (crop them to a common extent first)")
        b = x_before.shape[0]
        # One pass over the stacked dates: same weights, and BatchNorm sees both dates together.
        feats = self.backbone.forward_intermediates(torch.cat([x_before, x_after], dim=0))
        fused = [torch.abs(f[:b] - f[b:]) for f in feats]
        logits = self.decode_head(fused)
        return F.interpolate(logits, size=x_before.shape[-2:], mode="bilinear", align_corners=False)

    def no_weight_decay(self) -> set[str]:
        names = {f"backbone.{n}" for n in getattr(self.backbone, "no_weight_decay", set)()}
        return names | {f"decode_head.{n}" for n, p in self.decode_head.named_parameters() if p.ndim <= 1}


@register_model
def change_detector(backbone: str, backbone_kwargs: dict | None = None, channels: int | Sequence[int] = 64,
                    dropout: float = 0.1, **kw) -> nn.Module:
    """Siamese change detector on the registered backbone ``backbone``.

    Args:
        channels: decoder widths, deepest block first; an int ``c`` means ``(4c, 2c, c, c/2)``
            (Open-CD uses ``(512, 256, 128, 64)`` = ``c=128``).
    """
    if kw:
        raise TypeError(f"change_detector got unknown arguments {sorted(kw)}; valid: backbone, backbone_kwargs, "
                        "channels, dropout")
    chans = (4 * channels, 2 * channels, channels, max(channels // 2, 8)) if isinstance(channels, int) else channels
    return ChangeDetector(create_model(backbone, **(backbone_kwargs or {})), tuple(chans), dropout)
