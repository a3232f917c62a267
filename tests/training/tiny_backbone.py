"""A tiny backbone with the team interface (4 maps at strides 4/8/16/32), registered as ``tiny_pyramid_test``.

Detector tests build real heads on it: it is fast on CPU and needs no weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models.registry import _REGISTRY, register_model


class TinyPyramid(nn.Module):
    """Four conv stages at strides 4/8/16/32 with the team backbone interface."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.out_channels = [width] * 4
        self.stages = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, width, 4, stride=4), nn.ReLU())]
            + [nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU()) for _ in range(3)]
        )

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


if "tiny_pyramid_test" not in _REGISTRY:  # test modules may import this more than once

    @register_model
    def tiny_pyramid_test(width: int = 16) -> nn.Module:
        return TinyPyramid(width)
