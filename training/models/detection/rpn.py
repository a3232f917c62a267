"""Region Proposal Network (Ren et al., NeurIPS 2015) and Oriented R-CNN's oriented RPN (Xie et al., 2021).

One class covers both: the oriented variant uses the same horizontal anchors but regresses 6-d
midpoint-offset deltas (:class:`~training.models.detection.coders.MidpointOffsetCoder`), assigns anchors by
IoU with the horizontal hulls of the rotated ground truths, and suppresses proposals by the IoU of their
horizontal hulls (MMRotate's ``OrientedRPNHead``). Parameter names follow MMDetection
(``rpn_conv``, ``rpn_cls``, ``rpn_reg``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_iou

from training.models.detection.anchors import AnchorGenerator
from training.models.detection.coders import DeltaXYWHCoder, MidpointOffsetCoder
from training.models.detection.sampling import max_iou_assign, random_sample
from training.ops.rotated import rbox_to_hbox

__all__ = ["ProposalConfig", "RPN"]


@dataclass
class ProposalConfig:
    """Proposal selection per image: top ``nms_pre`` per level, NMS per level, keep ``max_per_img``."""

    nms_pre: int
    max_per_img: int
    nms_iou: float


class RPN(nn.Module):
    """Anchor-based proposal network over FPN levels.

    Args:
        in_channels: channels of every FPN map.
        strides: stride of each FPN map, finest first.
        oriented: build Oriented R-CNN's RPN (rotated proposals ``(P, 5)``) instead of horizontal
            proposals ``(P, 4)`` xyxy.
        train_proposals / test_proposals: :class:`ProposalConfig` (or its dict form) for training / eval.

    ``forward(feats, image_size, gt_boxes=None)`` returns ``(proposals, losses)``: a list (one per image)
    of detached proposals, and in training ``{"loss_rpn_cls", "loss_rpn_bbox"}`` (empty dict in eval).
    ``gt_boxes`` is a list of ``(G, 4)`` xyxy or, when oriented, ``(G, 5)`` rotated boxes.
    """

    def __init__(
        self,
        in_channels: int = 256,
        strides: tuple[int, ...] = (4, 8, 16, 32, 64),
        oriented: bool = False,
        train_proposals: ProposalConfig | dict | None = None,
        test_proposals: ProposalConfig | dict | None = None,
        num_samples: int = 256,
        pos_fraction: float = 0.5,
    ) -> None:
        super().__init__()
        self.oriented = oriented
        self.anchor_generator = AnchorGenerator(strides)
        self.coder = MidpointOffsetCoder() if oriented else DeltaXYWHCoder()
        self.box_dim = 6 if oriented else 4
        num_anchors = self.anchor_generator.num_anchors
        self.rpn_conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(in_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(in_channels, num_anchors * self.box_dim, 1)
        for m in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
        if isinstance(train_proposals, dict):
            train_proposals = ProposalConfig(**train_proposals)
        if isinstance(test_proposals, dict):
            test_proposals = ProposalConfig(**test_proposals)
        default_nms = 0.8 if oriented else 0.7
        self.train_proposals = train_proposals or ProposalConfig(2000, 2000 if oriented else 1000, default_nms)
        self.test_proposals = test_proposals or ProposalConfig(2000 if oriented else 1000,
                                                               2000 if oriented else 1000, default_nms)  # fmt: skip
        self.num_samples = num_samples
        self.pos_fraction = pos_fraction

    def forward(
        self,
        feats: list[torch.Tensor],
        image_size: tuple[int, int],
        gt_boxes: list[torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        batch = feats[0].shape[0]
        cls_levels, reg_levels = [], []
        for f in feats:
            t = F.relu(self.rpn_conv(f))
            # (B, A, H, W) -> (B, H*W*A): location-major, the anchor generator's order.
            cls_levels.append(self.rpn_cls(t).permute(0, 2, 3, 1).reshape(batch, -1))
            reg_levels.append(self.rpn_reg(t).permute(0, 2, 3, 1).reshape(batch, -1, self.box_dim))
        anchors = self.anchor_generator.grid_anchors([f.shape[-2:] for f in feats], feats[0].device)
        losses: dict[str, torch.Tensor] = {}
        if self.training:
            if gt_boxes is None:
                raise ValueError("RPN in training mode needs gt_boxes (one tensor per image)")
            losses = self.loss(torch.cat(anchors), torch.cat(cls_levels, 1), torch.cat(reg_levels, 1), gt_boxes)
        cfg = self.train_proposals if self.training else self.test_proposals
        with torch.no_grad():
            proposals = [
                self._proposals_single([c[i] for c in cls_levels], [r[i] for r in reg_levels], anchors, image_size, cfg)
                for i in range(batch)
            ]
        return proposals, losses

    def loss(
        self, anchors: torch.Tensor, cls: torch.Tensor, reg: torch.Tensor, gt_boxes: list[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Sigmoid CE on sampled anchors and box regression on positives, both / number of samples."""
        cls_inputs, cls_targets, reg_inputs, reg_targets = [], [], [], []
        for i, gts in enumerate(gt_boxes):
            gts = gts.to(anchors.dtype)
            gt_h = rbox_to_hbox(gts) if self.oriented else gts
            assign = max_iou_assign(box_iou(gt_h, anchors), 0.7, 0.3, 0.3, match_low_quality=True)
            pos, neg = random_sample(assign.gt_index, self.num_samples, self.pos_fraction)
            idx = torch.cat([pos, neg])
            cls_inputs.append(cls[i, idx])
            cls_targets.append(torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).to(cls.dtype))
            reg_inputs.append(reg[i, pos])
            reg_targets.append(self.coder.encode(anchors[pos], gts[assign.gt_index[pos]]))
        cls_in, cls_t = torch.cat(cls_inputs), torch.cat(cls_targets)
        num = max(cls_t.numel(), 1)
        loss_cls = F.binary_cross_entropy_with_logits(cls_in, cls_t, reduction="sum") / num
        reg_in, reg_t = torch.cat(reg_inputs), torch.cat(reg_targets)
        if self.oriented:
            loss_bbox = F.smooth_l1_loss(reg_in, reg_t, beta=1 / 9, reduction="sum") / num
        else:
            loss_bbox = F.l1_loss(reg_in, reg_t, reduction="sum") / num
        return {"loss_rpn_cls": loss_cls, "loss_rpn_bbox": loss_bbox}

    def _proposals_single(
        self,
        cls_levels: list[torch.Tensor],
        reg_levels: list[torch.Tensor],
        anchors: list[torch.Tensor],
        image_size: tuple[int, int],
        cfg: ProposalConfig,
    ) -> torch.Tensor:
        scores, boxes, level_ids = [], [], []
        for lvl, (c, r, a) in enumerate(zip(cls_levels, reg_levels, anchors, strict=True)):
            s = c.sigmoid()
            if s.numel() > cfg.nms_pre:
                s, top = s.topk(cfg.nms_pre)
                r, a = r[top], a[top]
            boxes.append(self.coder.decode(a, r) if self.oriented else self.coder.decode(a, r, image_size))
            scores.append(s)
            level_ids.append(torch.full_like(s, lvl, dtype=torch.long))
        scores_t, boxes_t, level_t = torch.cat(scores), torch.cat(boxes), torch.cat(level_ids)
        hull = rbox_to_hbox(boxes_t) if self.oriented else boxes_t
        wh = boxes_t[:, 2:4] if self.oriented else hull[:, 2:] - hull[:, :2]
        valid = (wh > 0).all(dim=1)
        scores_t, boxes_t, level_t, hull = scores_t[valid], boxes_t[valid], level_t[valid], hull[valid]
        keep = batched_nms(hull, scores_t, level_t, cfg.nms_iou)[: cfg.max_per_img]
        return boxes_t[keep]
