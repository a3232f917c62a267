"""Anchor grid (MMDetection ``AnchorGenerator`` semantics: ``base_size = stride``, centre offset 0)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["AnchorGenerator"]


class AnchorGenerator:
    """Horizontal anchors for each pyramid level.

    Anchors of level ``l`` are centred on ``(j * stride, i * stride)`` for feature cell ``(i, j)``, with
    sizes ``stride * scale`` and aspect ratios ``h / w = ratio``; for each location the order is ratio-major
    (then scale), the layout the RPN head's output channels follow.
    """

    def __init__(
        self,
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        scales: Sequence[float] = (8.0,),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
    ) -> None:
        self.strides = tuple(strides)
        self.scales = torch.tensor(scales, dtype=torch.float32)
        self.ratios = torch.tensor(ratios, dtype=torch.float32)

    @property
    def num_anchors(self) -> int:
        """Anchors per location."""
        return len(self.scales) * len(self.ratios)

    def base_anchors(self, stride: int) -> torch.Tensor:
        """``(A, 4)`` xyxy anchors centred on the origin."""
        h_ratio = self.ratios.sqrt()
        w_ratio = 1 / h_ratio
        ws = (stride * w_ratio[:, None] * self.scales[None, :]).flatten()
        hs = (stride * h_ratio[:, None] * self.scales[None, :]).flatten()
        return torch.stack([-ws / 2, -hs / 2, ws / 2, hs / 2], dim=-1)

    def grid_anchors(self, feature_sizes: Sequence[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
        """Per level, ``(H * W * A, 4)`` anchors in image pixels, location-major then anchor."""
        out = []
        for (h, w), stride in zip(feature_sizes, self.strides, strict=True):
            base = self.base_anchors(stride).to(device)
            ys = torch.arange(h, device=device, dtype=torch.float32) * stride
            xs = torch.arange(w, device=device, dtype=torch.float32) * stride
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
            out.append((shifts + base[None]).reshape(-1, 4))
        return out
