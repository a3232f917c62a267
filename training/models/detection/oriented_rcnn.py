"""Oriented R-CNN (Xie et al., ICCV 2021), as MTP's rotated-detection decoder (MMRotate 1.x, ``le90``).

Oriented RPN: horizontal anchors, midpoint-offset deltas (stds 1, 1, 1, 1, 0.5, 0.5), SmoothL1 beta 1/9,
proposals suppressed by the IoU of their horizontal hulls (0.8, 2000 kept). RoI head: rotated RoIAlign 7x7
with 2x2 samples per bin on strides 4..32, two FC-1024 layers, class-agnostic ``DeltaXYWHA`` regression
(proj_xy, edge_swap, stds 0.1, 0.1, 0.2, 0.2, 0.1), SmoothL1 beta 1; rotated IoU 0.5 assignment; test: score
0.05, class-aware rotated NMS 0.1, up to 2000 boxes.

Rotated boxes are ``(cx, cy, w, h, a)`` in pixels with ``a`` in radians, **counter-clockwise as seen on the
image** (y down), regularised to ``w >= h``, ``a`` in ``[-pi/2, pi/2)`` (see :mod:`training.ops.rotated`;
MMRotate's clockwise ``theta`` is ``-a``).
"""

from __future__ import annotations

from training.models.detection.two_stage import TwoStageDetector, build_detector
from training.models.registry import register_model

__all__ = ["oriented_rcnn"]


@register_model
def oriented_rcnn(backbone: str, num_classes: int, backbone_kwargs: dict | None = None, **kw) -> TwoStageDetector:
    """Oriented R-CNN on a registered pyramid backbone.

    Args:
        backbone: registered backbone name; num_classes: object classes without background;
        backbone_kwargs: passed to the backbone factory; **kw: see :func:`~training.models.detection.two_stage.build_detector`.

    Training targets need ``boxes_cxcywha (N, 5)`` and ``labels``. Eval output per image:
    ``boxes_cxcywha (N, 5)``, ``scores (N,)``, ``labels (N,)`` int64.
    """
    return build_detector("oriented", backbone, num_classes, backbone_kwargs, **kw)
