"""UperNet semantic segmentation head on any RSFM backbone.

Paper: Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018
(https://github.com/CSAILVision/unifiedparsing). MTP (Wang et al., 2024) finetunes all its backbones with
UperNet for semantic segmentation; this is an independent re-implementation (PPM on the stride-32 map,
top-down FPN, fusion of all levels at stride 4), written without mmseg.

ONNX: the pyramid pooling uses an explicit averaging matrix instead of ``adaptive_avg_pool2d`` (whose export
fails when the map size is not a multiple of the bin count), so static-shape export works at any tile size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.models.registry import create_model, register_model

__all__ = ["ConvBNReLU", "PyramidPooling", "UperNetHead", "UperNetSegmenter", "adaptive_avg_matrix", "upernet_segmenter"]


class ConvBNReLU(nn.Sequential):
    """``k x k`` conv (no bias) + BatchNorm + ReLU; keeps the spatial size."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


def adaptive_avg_matrix(size: int, bins: int, device=None, dtype=None) -> torch.Tensor:
    """``bins x size`` matrix whose rows average the same windows as ``adaptive_avg_pool`` does.

    Bin ``i`` covers ``[floor(i*size/bins), ceil((i+1)*size/bins))``, exactly PyTorch's rule, so
    ``P_h @ X @ P_w.T`` equals ``F.adaptive_avg_pool2d(X, (bins, bins))``.
    """
    m = torch.zeros(bins, size, device=device, dtype=dtype)
    for i in range(bins):
        start = (i * size) // bins
        end = -((-(i + 1) * size) // bins)
        m[i, start:end] = 1.0 / (end - start)
    return m


class PyramidPooling(nn.Module):
    """PSPNet pyramid pooling module: pool to ``s x s`` bins, 1x1 conv, upsample, concat, 3x3 conv.

    Input ``B x in_ch x h x w`` -> output ``B x channels x h x w``.
    """

    def __init__(self, in_ch: int, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.pool_scales = tuple(pool_scales)
        self.convs = nn.ModuleList([ConvBNReLU(in_ch, channels, 1) for _ in self.pool_scales])
        self.bottleneck = ConvBNReLU(in_ch + len(self.pool_scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        outs = [x]
        for scale, conv in zip(self.pool_scales, self.convs, strict=True):
            if scale == 1:
                pooled = x.mean(dim=(2, 3), keepdim=True)
            else:
                ph = adaptive_avg_matrix(h, scale, x.device, x.dtype)
                pw = adaptive_avg_matrix(w, scale, x.device, x.dtype)
                pooled = torch.matmul(torch.matmul(ph, x), pw.t())  # B x C x s x s
            outs.append(F.interpolate(conv(pooled), size=(h, w), mode="bilinear", align_corners=False))
        return self.bottleneck(torch.cat(outs, dim=1))


class UperNetHead(nn.Module):
    """UperNet decoder: PPM on the last level, lateral 1x1 convs, top-down sum, 3x3 FPN convs, fusion.

    Args:
        in_channels: channels of the backbone levels, finest first (strides 4, 8, 16, 32).
        channels: width of the decoder.
        num_classes: output classes K.
        dropout: dropout before the classifier.

    Input: list of ``B x in_channels[i] x H_i x W_i``; output ``B x K x H_0 x W_0`` (stride-4 logits).
    """

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int, dropout: float = 0.1,
                 pool_scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales)
        self.lateral = nn.ModuleList([ConvBNReLU(c, channels, 1) for c in in_channels[:-1]])
        self.fpn = nn.ModuleList([ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1]])
        self.fuse = ConvBNReLU(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral, feats[:-1], strict=True)]
        laterals.append(self.ppm(feats[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(lat) for conv, lat in zip(self.fpn, laterals[:-1], strict=True)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.classifier(self.dropout(self.fuse(torch.cat(outs, dim=1))))


class UperNetSegmenter(nn.Module):
    """Backbone + UperNet head; ``forward(x: B x C x H x W) -> logits B x K x H x W`` (input resolution)."""

    def __init__(self, backbone: nn.Module, num_classes: int, channels: int = 128, dropout: float = 0.1):
        super().__init__()
        if not hasattr(backbone, "out_channels") or len(backbone.out_channels) != 4:
            raise ValueError(
                f"{type(backbone).__name__} is not an RSFM backbone: it needs out_channels with 4 levels "
                "and forward_intermediates(x) returning 4 maps at strides 4/8/16/32"
            )
        self.backbone = backbone
        self.decode_head = UperNetHead(backbone.out_channels, channels, num_classes, dropout)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.forward_intermediates(x)
        logits = self.decode_head(feats)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def no_weight_decay(self) -> set[str]:
        """Backbone's own list (prefixed) plus every 1-D parameter of the head (norms, biases)."""
        names = {f"backbone.{n}" for n in getattr(self.backbone, "no_weight_decay", set)()}
        names |= {f"decode_head.{n}" for n, p in self.decode_head.named_parameters() if p.ndim <= 1}
        return names


@register_model
def upernet_segmenter(backbone: str, num_classes: int, backbone_kwargs: dict | None = None, channels: int = 128,
                      dropout: float = 0.1, **kw) -> nn.Module:
    """UperNet segmenter on the registered backbone ``backbone`` built with ``backbone_kwargs``.

    Raises:
        TypeError: unknown keyword arguments (so config typos are caught).
        ValueError: ``num_classes`` < 1 or the backbone lacks the pyramid interface.
    """
    if kw:
        raise TypeError(f"upernet_segmenter got unknown arguments {sorted(kw)}; valid: backbone, num_classes, "
                        "backbone_kwargs, channels, dropout")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    net = create_model(backbone, **(backbone_kwargs or {}))
    return UperNetSegmenter(net, num_classes, channels=channels, dropout=dropout)
