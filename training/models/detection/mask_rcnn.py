"""Mask R-CNN (He et al., ICCV 2017) with FPN, as MTP's instance-segmentation decoder (MMDetection 3.x).

Faster R-CNN (see :mod:`.faster_rcnn`) plus a mask branch: RoIAlign 14x14 -> 4 x conv 3x3 -> deconv x2 ->
class-specific 28x28 mask logits, trained with BCE against each positive RoI's crop of its ground-truth mask.
"""

from __future__ import annotations

from training.models.detection.two_stage import TwoStageDetector, build_detector
from training.models.registry import register_model

__all__ = ["mask_rcnn"]


@register_model
def mask_rcnn(backbone: str, num_classes: int, backbone_kwargs: dict | None = None, **kw) -> TwoStageDetector:
    """Mask R-CNN on a registered pyramid backbone.

    Args:
        backbone: registered backbone name; num_classes: object classes without background;
        backbone_kwargs: passed to the backbone factory; **kw: see :func:`~training.models.detection.two_stage.build_detector`.

    Training targets need ``boxes_xyxy``, ``labels`` and ``masks (N, H, W)`` (0/1). Eval output per image:
    ``boxes_xyxy``, ``scores``, ``labels`` and ``masks (N, H, W)`` float probabilities at input resolution.
    """
    return build_detector("mask", backbone, num_classes, backbone_kwargs, **kw)
