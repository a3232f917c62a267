"""Training-target selection: max-IoU assignment and random positive/negative sampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["AssignResult", "max_iou_assign", "random_sample"]


@dataclass
class AssignResult:
    """Per candidate box: ``gt_index`` >= 0 is positive (index into the gts), -1 negative, -2 ignored."""

    gt_index: torch.Tensor  # (N,) int64
    max_iou: torch.Tensor  # (N,) float


def max_iou_assign(
    iou: torch.Tensor,
    pos_iou_thr: float,
    neg_iou_thr: float,
    min_pos_iou: float,
    match_low_quality: bool = True,
) -> AssignResult:
    """MMDetection ``MaxIoUAssigner`` rule.

    Args:
        iou: ``(G, N)`` IoU between G ground truths and N candidates.
        pos_iou_thr: candidates with max IoU >= this are positive.
        neg_iou_thr: candidates with ``0 <= max IoU < neg_iou_thr`` are negative.
        min_pos_iou: with ``match_low_quality``, every candidate whose IoU to a gt equals that gt's best IoU
            (and is >= this) becomes positive for it, so every gt gets at least one candidate.

    Returns:
        :class:`AssignResult`; candidates between the thresholds are ignored (-2).
    """
    g, n = iou.shape
    gt_index = torch.full((n,), -2, dtype=torch.long, device=iou.device)
    if g == 0:
        gt_index.fill_(-1)
        return AssignResult(gt_index, iou.new_zeros(n))
    if n == 0:
        return AssignResult(gt_index, iou.new_zeros(0))
    max_iou, argmax = iou.max(dim=0)
    gt_index[(max_iou >= 0) & (max_iou < neg_iou_thr)] = -1
    pos = max_iou >= pos_iou_thr
    gt_index[pos] = argmax[pos]
    if match_low_quality:
        gt_best = iou.max(dim=1).values  # (G,)
        for k in range(g):
            if gt_best[k] >= min_pos_iou:
                gt_index[iou[k] == gt_best[k]] = k
    return AssignResult(gt_index, max_iou)


def random_sample(
    gt_index: torch.Tensor, num: int, pos_fraction: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick at most ``num * pos_fraction`` positives, fill up to ``num`` with negatives.

    Returns:
        ``(pos_indices, neg_indices)`` into the candidates (int64).
    """
    pos = torch.nonzero(gt_index >= 0).flatten()
    neg = torch.nonzero(gt_index == -1).flatten()
    num_pos = min(int(num * pos_fraction), pos.numel())
    pos = pos[torch.randperm(pos.numel(), generator=generator, device="cpu")[:num_pos].to(pos.device)]
    num_neg = min(num - num_pos, neg.numel())
    neg = neg[torch.randperm(neg.numel(), generator=generator, device="cpu")[:num_neg].to(neg.device)]
    return pos, neg
