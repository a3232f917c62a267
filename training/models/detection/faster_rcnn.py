"""Faster R-CNN (Ren et al., NeurIPS 2015) with FPN, as in MTP's DIOR finetuning (MMDetection 3.1 config).

RPN: 3 anchors per location (scale 8, ratios 0.5/1/2, strides 4..64), IoU 0.7/0.3, 256 samples; RoI head:
RoIAlign 7x7 on strides 4..32, two FC-1024 layers, class-specific ``DeltaXYWH`` regression (stds 0.1, 0.1,
0.2, 0.2), 512 samples with 25 % positives; test: score 0.05, NMS 0.5, 100 boxes per image.
"""

from __future__ import annotations

from training.models.detection.two_stage import TwoStageDetector, build_detector
from training.models.registry import register_model

__all__ = ["faster_rcnn"]


@register_model
def faster_rcnn(backbone: str, num_classes: int, backbone_kwargs: dict | None = None, **kw) -> TwoStageDetector:
    """Faster R-CNN on a registered pyramid backbone.

    Args:
        backbone: registered backbone name (``training.models.create_model``).
        num_classes: object classes, background excluded.
        backbone_kwargs: passed to the backbone factory.
        **kw: ``fpn_channels`` (default 256), ``rpn_kwargs`` and RoI-head arguments such as ``test_cfg``
            (:class:`~training.models.detection.roi_heads.DetectionConfig`); see
            :func:`~training.models.detection.two_stage.build_detector`.

    Eval output per image: ``boxes_xyxy (N, 4)`` pixels, ``scores (N,)``, ``labels (N,)`` int64.
    """
    return build_detector("faster", backbone, num_classes, backbone_kwargs, **kw)
