"""Generic two-stage detector: backbone -> FPN -> RPN -> RoI heads.

Call convention (docs/CONTRACTS.md, "Model call convention"):

* training: ``model(images, targets) -> dict`` of scalar losses (sum them to train). ``images`` is
  ``(B, C, H, W)`` float, already normalised; ``targets`` a list of B dicts with ``labels (N,)`` int64 in
  ``0..num_classes-1`` and ``boxes_xyxy (N, 4)`` pixels (horizontal detectors), ``masks (N, H, W)``
  (Mask R-CNN) or ``boxes_cxcywha (N, 5)`` (Oriented R-CNN; angle in radians, counter-clockwise on the
  image, see :mod:`training.ops.rotated`).
* eval: ``model(images) -> list`` of B dicts in the contract's format for the task.

Inputs of any size work: they are zero-padded to a multiple of 32 inside the model and outputs are
clipped / cropped back to ``H x W``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.models.necks import FPN
from training.models.registry import create_model

__all__ = ["TwoStageDetector", "build_backbone", "build_detector"]

_SIZE_DIVISOR = 32


def build_backbone(name: str, backbone_kwargs: dict | None) -> nn.Module:
    """Create a registered backbone and check it has the pyramid interface the detectors need."""
    backbone = create_model(name, **(backbone_kwargs or {}))
    if not hasattr(backbone, "forward_intermediates") or not hasattr(backbone, "out_channels"):
        raise TypeError(
            f"backbone {name!r} must define out_channels (list of 4 ints) and forward_intermediates(x) returning "
            "4 NCHW maps at strides 4/8/16/32; choose a pyramid backbone"
        )
    if len(backbone.out_channels) != 4:
        raise ValueError(f"backbone {name!r} has {len(backbone.out_channels)} outputs; detectors need 4")
    return backbone


class TwoStageDetector(nn.Module):
    """Backbone + FPN (5 levels, strides 4..64) + RPN + RoI heads.

    Args:
        backbone: module with ``out_channels`` and ``forward_intermediates``.
        rpn: :class:`~training.models.detection.rpn.RPN`.
        roi_head: :class:`~training.models.detection.roi_heads.RoIHeads` or ``RotatedRoIHeads``.
        target_keys: keys every training target must have.
        fpn_channels: FPN width.
    """

    def __init__(self, backbone: nn.Module, rpn: nn.Module, roi_head: nn.Module, target_keys: tuple[str, ...],
                 fpn_channels: int = 256) -> None:  # fmt: skip
        super().__init__()
        self.backbone = backbone
        self.neck = FPN(backbone.out_channels, fpn_channels, num_outs=5)
        self.rpn_head = rpn
        self.roi_head = roi_head
        self.target_keys = target_keys
        self.oriented = getattr(rpn, "oriented", False)

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None):
        if images.ndim != 4:
            raise ValueError(f"images must be B x C x H x W, got shape {tuple(images.shape)}")
        image_size = (images.shape[-2], images.shape[-1])
        if self.training:
            self._check_targets(targets, images.shape[0])
        pad_h = (-image_size[0]) % _SIZE_DIVISOR
        pad_w = (-image_size[1]) % _SIZE_DIVISOR
        x = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
        feats = self.neck(self.backbone.forward_intermediates(x))
        gt_key = "boxes_cxcywha" if self.oriented else "boxes_xyxy"
        gt_boxes = [t[gt_key] for t in targets] if self.training else None
        proposals, rpn_losses = self.rpn_head(feats, image_size, gt_boxes)
        # The RoI heads use strides 4..32; the extra stride-64 level only feeds the RPN (MMDetection).
        out = self.roi_head(feats[:4], proposals, image_size, targets)
        if self.training:
            return {**rpn_losses, **out}
        return out

    def _check_targets(self, targets, batch: int) -> None:
        if targets is None or len(targets) != batch:
            raise ValueError(f"training needs one target dict per image ({batch}), got "
                             f"{None if targets is None else len(targets)}")  # fmt: skip
        for i, t in enumerate(targets):
            missing = [k for k in self.target_keys if k not in t]
            if missing:
                raise KeyError(f"target {i} lacks {missing}; a target needs {list(self.target_keys)}")


def build_detector(
    kind: str,
    backbone: str,
    num_classes: int,
    backbone_kwargs: dict | None = None,
    fpn_channels: int = 256,
    rpn_kwargs: dict | None = None,
    **roi_kwargs,
) -> TwoStageDetector:
    """Shared body of the ``faster_rcnn`` / ``mask_rcnn`` / ``oriented_rcnn`` factories.

    Args:
        kind: ``"faster"``, ``"mask"`` or ``"oriented"``.
        backbone, backbone_kwargs: registered backbone name and its factory arguments.
        num_classes: object classes without background.
        fpn_channels: FPN / RPN / RoI width (MTP: 256).
        rpn_kwargs: extra :class:`~training.models.detection.rpn.RPN` arguments (e.g. ``train_proposals``).
        **roi_kwargs: extra RoI-head arguments (``test_cfg``, ``num_samples``, ``pos_fraction``).
    """
    from training.models.detection.roi_heads import RoIHeads, RotatedRoIHeads
    from training.models.detection.rpn import RPN

    if kind not in ("faster", "mask", "oriented"):
        raise ValueError(f"kind must be 'faster', 'mask' or 'oriented', got {kind!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes counts object classes without background and must be >= 1, got {num_classes}")
    oriented = kind == "oriented"
    rpn = RPN(fpn_channels, oriented=oriented, **(rpn_kwargs or {}))
    if oriented:
        roi_head: nn.Module = RotatedRoIHeads(num_classes, fpn_channels, **roi_kwargs)
        keys: tuple[str, ...] = ("boxes_cxcywha", "labels")
    else:
        roi_head = RoIHeads(num_classes, fpn_channels, with_mask=kind == "mask", **roi_kwargs)
        keys = ("boxes_xyxy", "labels", "masks") if kind == "mask" else ("boxes_xyxy", "labels")
    return TwoStageDetector(build_backbone(backbone, backbone_kwargs), rpn, roi_head, keys, fpn_channels)
