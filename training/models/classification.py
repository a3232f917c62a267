"""Scene classification head on any RSFM backbone (MTP spec section 3.1).

As in MMPretrain's ``ImageClassifier`` used by MTP: global average pooling of the **last** backbone level,
then one linear layer (``LinearClsHead``; dropout optional). Output: logits ``B x K``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models.registry import create_model, register_model

__all__ = ["SceneClassifier", "scene_classifier"]


class SceneClassifier(nn.Module):
    """Backbone + GAP + linear head; ``forward(x: B x C x H x W) -> B x K`` logits."""

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.0):
        super().__init__()
        if not hasattr(backbone, "out_channels"):
            raise ValueError(f"{type(backbone).__name__} is not an RSFM backbone: it has no out_channels")
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(int(backbone.out_channels[-1]), num_classes)
        self.num_classes = num_classes
        # ViTs take whole patches only: a whole scene of another size (AID thumbnails are 150 px) is resized to
        # the nearest multiple of the patch size, which keeps all of the scene (padding would dilute the pooling)
        self.size_multiple = int(getattr(getattr(backbone, "cfg", None), "patch_size", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.size_multiple
        h, w = x.shape[-2:]
        if m > 1 and (h % m or w % m):
            size = (max(m, round(h / m) * m), max(m, round(w / m) * m))
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        feats = self.backbone.forward_intermediates(x)
        pooled = feats[-1].mean(dim=(2, 3))  # B x C of the deepest level
        return self.head(self.dropout(pooled))

    def no_weight_decay(self) -> set[str]:
        names = {f"backbone.{n}" for n in getattr(self.backbone, "no_weight_decay", set)()}
        return names | {"head.bias"}


@register_model
def scene_classifier(backbone: str, num_classes: int, backbone_kwargs: dict | None = None, dropout: float = 0.0,
                     **kw) -> nn.Module:
    """Scene classifier on the registered backbone ``backbone``.

    Raises:
        TypeError: unknown keyword arguments. ValueError: ``num_classes`` < 2.
    """
    if kw:
        raise TypeError(f"scene_classifier got unknown arguments {sorted(kw)}; valid: backbone, num_classes, "
                        "backbone_kwargs, dropout")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 for classification, got {num_classes}")
    return SceneClassifier(create_model(backbone, **(backbone_kwargs or {})), num_classes, dropout)
