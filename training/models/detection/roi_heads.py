"""Second-stage heads: multi-level RoI feature extraction, box heads, mask head, and their training targets.

* :class:`RoIHeads`: horizontal boxes (Faster R-CNN), plus masks when given a :class:`MaskHead`
  (Mask R-CNN). Class-specific box regression with ``DeltaXYWHCoder(stds 0.1, 0.1, 0.2, 0.2)``.
* :class:`RotatedRoIHeads`: Oriented R-CNN's head: rotated RoIAlign, class-agnostic 5-d regression
  with ``DeltaXYWHACoder``, rotated IoU assignment and class-aware rotated NMS.

Labels inside the heads are ``0..K-1`` for objects and ``K`` for background (MMDetection convention).
Parameter names follow MMDetection (``bbox_head.shared_fcs.i``, ``fc_cls``, ``fc_reg``,
``mask_head.convs.i.conv``, ``upsample``, ``conv_logits``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_iou, roi_align

from training.models.detection.coders import DeltaXYWHACoder, DeltaXYWHCoder
from training.models.detection.sampling import max_iou_assign, random_sample
from training.ops.rotated import batched_rotated_nms, rbox_iou, rotated_roi_align

__all__ = ["DetectionConfig", "MultiLevelRoIAlign", "BoxHead", "MaskHead", "RoIHeads", "RotatedRoIHeads"]


@dataclass
class DetectionConfig:
    """Test-time filtering: score threshold, NMS IoU and detections kept per image."""

    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_img: int = 100


class MultiLevelRoIAlign(nn.Module):
    """Pool each RoI from one FPN level chosen by its size (MMDetection ``SingleRoIExtractor`` rule).

    Level ``floor(log2(sqrt(w * h) / finest_scale + 1e-6))`` clamped to the available levels, so a
    56 px RoI goes to stride 4 (with the default ``finest_scale`` 56).

    Args:
        strides: strides of the maps used, finest first (default 4, 8, 16, 32).
        output_size: side of the pooled grid.
        sampling_ratio: bilinear samples per bin side (0 = adaptive).
        rotated: RoIs are ``(R, 6)`` batch, cx, cy, w, h, a (rotated RoIAlign) instead of
            ``(R, 5)`` batch, x1, y1, x2, y2 (``torchvision.ops.roi_align``, ``aligned=True``).
    """

    def __init__(
        self,
        strides: tuple[int, ...] = (4, 8, 16, 32),
        output_size: int = 7,
        sampling_ratio: int = 0,
        rotated: bool = False,
        finest_scale: float = 56.0,
    ) -> None:
        super().__init__()
        self.strides = strides
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.rotated = rotated
        self.finest_scale = finest_scale

    def forward(self, feats: list[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """``feats``: at least ``len(strides)`` NCHW maps; returns ``(R, C, S, S)``."""
        c = feats[0].shape[1]
        out = feats[0].new_zeros((rois.shape[0], c, self.output_size, self.output_size))
        if rois.shape[0] == 0:
            return out
        if self.rotated:
            scale = (rois[:, 3] * rois[:, 4]).clamp(min=0).sqrt()
        else:
            scale = ((rois[:, 3] - rois[:, 1]).clamp(min=0) * (rois[:, 4] - rois[:, 2]).clamp(min=0)).sqrt()
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6)).clamp(0, len(self.strides) - 1).long()
        for lvl, stride in enumerate(self.strides):
            idx = torch.nonzero(levels == lvl).flatten()
            if idx.numel() == 0:
                continue
            if self.rotated:
                pooled = rotated_roi_align(feats[lvl], rois[idx], self.output_size, 1 / stride,
                                           self.sampling_ratio, aligned=True)  # fmt: skip
            else:
                pooled = roi_align(feats[lvl], rois[idx], self.output_size, 1 / stride,
                                   self.sampling_ratio, aligned=True)  # fmt: skip
            out[idx] = pooled.to(out.dtype)
        return out


def _as_detection_config(cfg: DetectionConfig | dict | None, default: DetectionConfig) -> DetectionConfig:
    """Accept a :class:`DetectionConfig` or its JSON form (a dict, as stored in a package's config.json)."""
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        unknown = set(cfg) - {"score_thr", "nms_iou", "max_per_img"}
        if unknown:
            raise ValueError(f"test_cfg has unknown keys {sorted(unknown)}; valid: score_thr, nms_iou, max_per_img")
        return DetectionConfig(**cfg)
    return cfg


class BoxHead(nn.Module):
    """``Shared2FCBBoxHead``: flatten -> 2 x (FC 1024 + ReLU) -> class logits ``K + 1`` and box deltas."""

    def __init__(self, num_classes: int, reg_dim: int, in_channels: int = 256, roi_size: int = 7,
                 fc_channels: int = 1024) -> None:  # fmt: skip
        super().__init__()
        self.shared_fcs = nn.ModuleList(
            [nn.Linear(in_channels * roi_size * roi_size, fc_channels), nn.Linear(fc_channels, fc_channels)]
        )
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, reg_dim)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class _ConvModule(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class MaskHead(nn.Module):
    """``FCNMaskHead``: 4 x (conv 3x3 + ReLU) on 14x14 RoIs -> deconv x2 + ReLU -> 1x1 conv to K logits."""

    def __init__(self, num_classes: int, channels: int = 256, num_convs: int = 4) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_ConvModule(channels) for _ in range(num_convs))
        self.upsample = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.conv_logits = nn.Conv2d(channels, num_classes, 1)
        for m in (self.upsample, self.conv_logits):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(R, C, 14, 14)`` -> ``(R, K, 28, 28)`` logits."""
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(F.relu(self.upsample(x)))


def _with_batch_index(boxes: list[torch.Tensor]) -> torch.Tensor:
    """List of ``(N_i, D)`` boxes -> ``(sum N_i, D + 1)`` RoIs with the image index first."""
    return torch.cat([torch.cat([b.new_full((b.shape[0], 1), i), b], 1) for i, b in enumerate(boxes)])


@dataclass
class _Samples:
    rois: list[torch.Tensor]  # per image, sampled proposals
    labels: torch.Tensor  # (R,) 0..K (K = background), all images
    pos_gt: list[torch.Tensor]  # per image, matched gt index of the positives (first in each image)
    num_pos: list[int]


class _TwoStageHead(nn.Module):
    """Shared sampling logic of the horizontal and rotated RoI heads."""

    num_classes: int

    def _sample(self, proposals, gt_boxes, gt_labels, iou_fn) -> _Samples:
        rois, labels, pos_gt, num_pos = [], [], [], []
        for props, gts, lbls in zip(proposals, gt_boxes, gt_labels, strict=True):
            gts = gts.to(props.dtype)
            cand = torch.cat([props, gts])  # ground truths are also proposals (MMDetection add_gt_as_proposals)
            assign = max_iou_assign(iou_fn(gts, cand), 0.5, 0.5, 0.5, match_low_quality=False)
            pos, neg = random_sample(assign.gt_index, self.num_samples, self.pos_fraction)
            rois.append(cand[torch.cat([pos, neg])])
            gt_idx = assign.gt_index[pos]
            labels.append(torch.cat([lbls[gt_idx], lbls.new_full((neg.numel(),), self.num_classes)]))
            pos_gt.append(gt_idx)
            num_pos.append(pos.numel())
        return _Samples(rois, torch.cat(labels), pos_gt, num_pos)


class RoIHeads(_TwoStageHead):
    """Faster R-CNN box head (and Mask R-CNN mask head when ``mask_head`` is given) over FPN maps.

    ``forward(feats, proposals, image_size, targets=None)``: training returns the loss dict
    ``{"loss_cls", "loss_bbox"[, "loss_mask"]}``; eval returns per image ``{"boxes_xyxy", "scores",
    "labels"[, "masks"]}`` with masks ``(N, H, W)`` probabilities at ``image_size``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        strides: tuple[int, ...] = (4, 8, 16, 32),
        with_mask: bool = False,
        test_cfg: DetectionConfig | dict | None = None,
        num_samples: int = 512,
        pos_fraction: float = 0.25,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.box_roi_extractor = MultiLevelRoIAlign(strides, 7, sampling_ratio=0)
        self.bbox_head = BoxHead(num_classes, 4 * num_classes, in_channels)
        self.mask_roi_extractor = MultiLevelRoIAlign(strides, 14, sampling_ratio=0) if with_mask else None
        self.mask_head = MaskHead(num_classes, in_channels) if with_mask else None
        self.coder = DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2))
        self.test_cfg = _as_detection_config(test_cfg, DetectionConfig())
        self.num_samples = num_samples
        self.pos_fraction = pos_fraction

    def forward(self, feats, proposals, image_size, targets=None):
        if self.training:
            if targets is None:
                raise ValueError("RoIHeads in training mode needs targets")
            return self.loss(feats, proposals, targets)
        return self.predict(feats, proposals, image_size)

    def loss(self, feats, proposals, targets) -> dict[str, torch.Tensor]:
        gt_boxes = [t["boxes_xyxy"] for t in targets]
        samples = self._sample(proposals, gt_boxes, [t["labels"] for t in targets], box_iou)
        cls, reg = self.bbox_head(self.box_roi_extractor(feats, _with_batch_index(samples.rois)))
        num = max(samples.labels.numel(), 1)
        loss_cls = F.cross_entropy(cls, samples.labels, reduction="sum") / num
        # Regression targets for the positives (first num_pos rows of each image), class-specific outputs.
        pos_rows, pos_targets = [], []
        offset = 0
        for rois, gts, gt_idx, n_pos in zip(samples.rois, gt_boxes, samples.pos_gt, samples.num_pos, strict=True):
            pos_rows.append(torch.arange(offset, offset + n_pos, device=cls.device))
            pos_targets.append(self.coder.encode(rois[:n_pos], gts[gt_idx].to(rois.dtype)))
            offset += rois.shape[0]
        pos_rows_t = torch.cat(pos_rows)
        pos_labels = samples.labels[pos_rows_t]
        reg_pos = reg.view(reg.shape[0], self.num_classes, 4)[pos_rows_t, pos_labels]
        loss_bbox = F.l1_loss(reg_pos, torch.cat(pos_targets), reduction="sum") / num
        losses = {"loss_cls": loss_cls, "loss_bbox": loss_bbox}
        if self.mask_head is not None:
            losses["loss_mask"] = self._mask_loss(feats, samples, targets)
        return losses

    def _mask_loss(self, feats, samples: _Samples, targets) -> torch.Tensor:
        pos_rois = [r[:n] for r, n in zip(samples.rois, samples.num_pos, strict=True)]
        if sum(samples.num_pos) == 0:
            return feats[0].sum() * 0  # keeps the graph connected
        logits = self.mask_head(self.mask_roi_extractor(feats, _with_batch_index(pos_rois)))
        mask_targets, labels = [], []
        for rois, t, gt_idx in zip(pos_rois, targets, samples.pos_gt, strict=True):
            if rois.shape[0] == 0:
                continue
            gt_masks = t["masks"].to(rois.dtype)[:, None]  # (G, 1, H, W); each RoI samples its matched gt
            boxes = torch.cat([gt_idx.to(rois.dtype)[:, None], rois], 1)
            # Crop-and-resize each matched mask to the 28x28 grid of its RoI, then binarise (MMDetection).
            mask_targets.append(roi_align(gt_masks, boxes, logits.shape[-1], 1.0, 0, aligned=True)[:, 0] >= 0.5)
            labels.append(t["labels"][gt_idx])
        labels_t = torch.cat(labels)
        pred = logits[torch.arange(logits.shape[0], device=logits.device), labels_t]
        return F.binary_cross_entropy_with_logits(pred, torch.cat(mask_targets).to(pred.dtype))

    @torch.no_grad()
    def predict(self, feats, proposals, image_size) -> list[dict[str, torch.Tensor]]:
        cfg = self.test_cfg
        cls, reg = self.bbox_head(self.box_roi_extractor(feats, _with_batch_index(proposals)))
        scores_all = F.softmax(cls, dim=-1)
        results = []
        start = 0
        for props in proposals:
            n = props.shape[0]
            scores = scores_all[start : start + n, : self.num_classes]
            deltas = reg[start : start + n].view(n, self.num_classes, 4)
            start += n
            boxes = self.coder.decode(props[:, None].expand(-1, self.num_classes, -1).reshape(-1, 4),
                                      deltas.reshape(-1, 4), image_size).view(n, self.num_classes, 4)  # fmt: skip
            keep_mask = scores > cfg.score_thr
            box_idx, labels = torch.nonzero(keep_mask, as_tuple=True)
            boxes_k, scores_k = boxes[box_idx, labels], scores[box_idx, labels]
            keep = batched_nms(boxes_k, scores_k, labels, cfg.nms_iou)[: cfg.max_per_img]
            results.append({"boxes_xyxy": boxes_k[keep], "scores": scores_k[keep], "labels": labels[keep]})
        if self.mask_head is not None:
            self._predict_masks(feats, results, image_size)
        return results

    def _predict_masks(self, feats, results, image_size) -> None:
        rois = _with_batch_index([r["boxes_xyxy"] for r in results])
        logits = self.mask_head(self.mask_roi_extractor(feats, rois)) if rois.shape[0] else None
        start = 0
        for r in results:
            n = r["boxes_xyxy"].shape[0]
            if n == 0:
                r["masks"] = feats[0].new_zeros((0, *image_size))
                continue
            probs = logits[start : start + n][torch.arange(n, device=rois.device), r["labels"]].sigmoid()
            start += n
            r["masks"] = paste_masks(probs, r["boxes_xyxy"], image_size)


def paste_masks(masks: torch.Tensor, boxes_xyxy: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Resample ``(N, M, M)`` box-relative masks into ``(N, H, W)`` image masks (0 outside each box).

    Pixel ``(i, j)`` is sampled at its centre ``(j + 0.5, i + 0.5)`` (MMDetection's ``_do_paste_mask``).
    """
    h, w = image_size
    x1, y1, x2, y2 = (t[:, None] for t in boxes_xyxy.unbind(-1))
    xs = torch.arange(w, device=masks.device, dtype=masks.dtype) + 0.5
    ys = torch.arange(h, device=masks.device, dtype=masks.dtype) + 0.5
    gx = (xs[None] - x1) / (x2 - x1).clamp(min=1e-6) * 2 - 1  # (N, W)
    gy = (ys[None] - y1) / (y2 - y1).clamp(min=1e-6) * 2 - 1  # (N, H)
    grid = torch.stack([gx[:, None, :].expand(-1, h, -1), gy[:, :, None].expand(-1, -1, w)], dim=-1)
    return F.grid_sample(masks[:, None], grid, align_corners=False)[:, 0]


class RotatedRoIHeads(_TwoStageHead):
    """Oriented R-CNN's second stage on rotated proposals ``(P, 5)``.

    Eval returns per image ``{"boxes_cxcywha", "scores", "labels"}``; default test config: score 0.05,
    rotated NMS IoU 0.1 per class, 2000 detections.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        strides: tuple[int, ...] = (4, 8, 16, 32),
        test_cfg: DetectionConfig | dict | None = None,
        num_samples: int = 512,
        pos_fraction: float = 0.25,
        nms_pre: int = 2000,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.box_roi_extractor = MultiLevelRoIAlign(strides, 7, sampling_ratio=2, rotated=True)
        self.bbox_head = BoxHead(num_classes, 5, in_channels)
        self.coder = DeltaXYWHACoder()
        self.test_cfg = _as_detection_config(test_cfg, DetectionConfig(score_thr=0.05, nms_iou=0.1, max_per_img=2000))
        self.num_samples = num_samples
        self.pos_fraction = pos_fraction
        self.nms_pre = nms_pre

    def forward(self, feats, proposals, image_size, targets=None):
        if self.training:
            if targets is None:
                raise ValueError("RotatedRoIHeads in training mode needs targets")
            return self.loss(feats, proposals, targets)
        return self.predict(feats, proposals)

    def loss(self, feats, proposals, targets) -> dict[str, torch.Tensor]:
        gt_boxes = [t["boxes_cxcywha"] for t in targets]
        samples = self._sample(proposals, gt_boxes, [t["labels"] for t in targets], rbox_iou)
        cls, reg = self.bbox_head(self.box_roi_extractor(feats, _with_batch_index(samples.rois)))
        num = max(samples.labels.numel(), 1)
        loss_cls = F.cross_entropy(cls, samples.labels, reduction="sum") / num
        reg_pos, reg_t = [], []
        offset = 0
        for rois, gts, gt_idx, n_pos in zip(samples.rois, gt_boxes, samples.pos_gt, samples.num_pos, strict=True):
            reg_pos.append(reg[offset : offset + n_pos])
            reg_t.append(self.coder.encode(rois[:n_pos], gts[gt_idx].to(rois.dtype)))
            offset += rois.shape[0]
        loss_bbox = F.smooth_l1_loss(torch.cat(reg_pos), torch.cat(reg_t), beta=1.0, reduction="sum") / num
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}

    @torch.no_grad()
    def predict(self, feats, proposals) -> list[dict[str, torch.Tensor]]:
        cfg = self.test_cfg
        cls, reg = self.bbox_head(self.box_roi_extractor(feats, _with_batch_index(proposals)))
        scores_all = F.softmax(cls, dim=-1)
        boxes_all = self.coder.decode(torch.cat(proposals), reg)
        results = []
        start = 0
        for props in proposals:
            n = props.shape[0]
            scores = scores_all[start : start + n, : self.num_classes]
            boxes = boxes_all[start : start + n]
            start += n
            box_idx, labels = torch.nonzero(scores > cfg.score_thr, as_tuple=True)
            scores_k = scores[box_idx, labels]
            if scores_k.numel() > self.nms_pre * 4:  # bound the quadratic rotated NMS on untrained models
                top = scores_k.topk(self.nms_pre * 4).indices
                box_idx, labels, scores_k = box_idx[top], labels[top], scores_k[top]
            boxes_k = boxes[box_idx]
            keep = batched_rotated_nms(boxes_k, scores_k, labels, cfg.nms_iou)[: cfg.max_per_img]
            results.append({"boxes_cxcywha": boxes_k[keep], "scores": scores_k[keep], "labels": labels[keep]})
        return results

