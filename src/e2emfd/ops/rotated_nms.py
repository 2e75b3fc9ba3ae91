"""Greedy non-maximum suppression of rotated boxes (le90 ``(cx, cy, w, h, angle)``)."""

from __future__ import annotations

import torch
from torch import Tensor

from .rotated import _check_boxes, hbb_overlap_pairs, paired_rotated_box_iou

__all__ = ["rotated_batched_nms", "rotated_nms"]


def rotated_batched_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float
) -> Tensor:
    """Greedy NMS of rotated boxes within each group, like torchvision's ``batched_nms``.

    boxes (N, 5), scores (N,), idxs (N,) int group (e.g. class) of each box. A box is
    removed when a higher-scoring kept box of its group overlaps it with IoU >
    ``iou_threshold``. Returns the kept indices (int64) by decreasing score (ties: input
    order).

    Only pairs in one group whose axis-aligned hulls overlap get a polygon IoU. The greedy
    pass is solved as a fixed point: "kept = not suppressed by a kept box ranked higher"
    determines box k from boxes 0..k-1 only, so iterating it from "all kept" fixes at
    least one more box per round and stops at the greedy answer.
    """
    _check_boxes(boxes, "boxes")
    if scores.shape != (boxes.shape[0],) or idxs.shape != (boxes.shape[0],):
        raise ValueError(
            f"scores {tuple(scores.shape)} and idxs {tuple(idxs.shape)} must be ({len(boxes)},)"
        )
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    ranked = boxes[order].double()
    groups = idxs[order]

    def same_group_later(rows: Tensor) -> Tensor:
        cols = torch.arange(n, device=boxes.device)
        return (groups[rows, None] == groups[None, :]) & (cols[None, :] > rows[:, None])

    i, j = hbb_overlap_pairs(ranked, ranked, same_group_later)
    over = paired_rotated_box_iou(ranked[i], ranked[j]) > iou_threshold
    i, j = i[over], j[over]
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    while True:
        suppressed = torch.zeros_like(keep)
        suppressed[j[keep[i]]] = True
        new_keep = ~suppressed
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return order[keep]


def rotated_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy rotated NMS over all boxes (N, 5); see :func:`rotated_batched_nms`."""
    idxs = torch.zeros(boxes.shape[0], dtype=torch.long, device=boxes.device)
    return rotated_batched_nms(boxes, scores, idxs, iou_threshold)
