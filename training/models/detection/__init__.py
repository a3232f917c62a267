"""Two-stage detectors (Faster R-CNN, Mask R-CNN, Oriented R-CNN) on any pyramid backbone.

Importing this package registers the factories ``faster_rcnn``, ``mask_rcnn`` and ``oriented_rcnn``.
"""

from training.models.detection.faster_rcnn import faster_rcnn
from training.models.detection.mask_rcnn import mask_rcnn
from training.models.detection.oriented_rcnn import oriented_rcnn
from training.models.detection.two_stage import TwoStageDetector

__all__ = ["TwoStageDetector", "faster_rcnn", "mask_rcnn", "oriented_rcnn"]
