"""Feature Pyramid Network (Lin et al., CVPR 2017) for the detectors.

Same structure and parameter names as MMDetection's ``FPN`` (``lateral_convs.i.conv``,
``fpn_convs.i.conv``), so the FPN weights of an MTP checkpoint (``inssegdecoder.neck.*``,
``rotdetdecoder.neck.*``) load after stripping the prefix. Extra levels come from max-pooling the last
output (``add_extra_convs=False``), as in every MTP detector config.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FPN"]


class _ConvModule(nn.Module):
    """A single conv kept under ``.conv`` so parameter names match MMDetection's ``ConvModule``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """Top-down pyramid: ``len(in_channels)`` NCHW maps -> ``num_outs`` maps of ``out_channels``.

    Args:
        in_channels: channels of the backbone maps (finest first, e.g. strides 4/8/16/32).
        out_channels: channels of every output map.
        num_outs: number of outputs; outputs beyond the inputs are stride-2 max-pools of the last one.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 5) -> None:
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError(f"num_outs ({num_outs}) must be >= the number of inputs ({len(in_channels)})")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.lateral_convs = nn.ModuleList(_ConvModule(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(_ConvModule(out_channels, out_channels, 3) for _ in in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} maps, got {len(feats)}")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            # Upsample to the exact size (not x2) so inputs not divisible by 32 still work.
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")  # fmt: skip
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals, strict=True)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs
