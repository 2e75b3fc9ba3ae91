"""From per-proposal class logits and boxes to the final detections of each image."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from .boxes import clip_boxes


def topk_candidates(logits: Tensor, boxes: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` best (proposal, class) pairs of each image under sigmoid scores.

    A proposal may appear under several classes (multi-label sigmoid scores).
    logits: (B, N, C); boxes: (B, N, 4). Returns scores (B, k) float32, labels (B, k)
    int64 and boxes (B, k, 4).
    """
    b, n, c = logits.shape
    scores, flat_idx = logits.float().sigmoid().flatten(1).topk(min(k, n * c), dim=1)
    labels = flat_idx % c
    proposal = flat_idx // c
    picked = boxes.gather(1, proposal[..., None].expand(-1, -1, boxes.shape[-1]))
    return scores, labels, picked


def select_detections(
    scores: Tensor,
    labels: Tensor,
    boxes: Tensor,
    whwh: Tensor,
    num_classes: int,
    nms_threshold: float = 0.5,
    max_detections: int = 100,
    score_threshold: float = 0.0,
) -> list[dict[str, Tensor]]:
    """Clip, drop empty boxes, per-class NMS, keep the best ``max_detections`` per image.

    scores, labels: (B, K); boxes: (B, K, 4) pixel xyxy; whwh: (B, 4). NMS runs once for
    the whole batch (images and classes kept apart by the NMS group index).
    Returns B dicts {"boxes": (D, 4), "scores": (D,), "labels": (D,)}, best first.
    """
    b, k = scores.shape
    boxes = clip_boxes(boxes.float(), whwh.float())
    groups = torch.arange(b, device=labels.device).repeat_interleave(k) * num_classes
    keep = batched_nms(
        boxes.reshape(-1, 4), scores.reshape(-1), groups + labels.reshape(-1), nms_threshold
    )
    kept = torch.zeros(b * k, dtype=torch.bool, device=scores.device)
    kept[keep] = True
    # boxes clipped to nothing (proposals outside the image) are dropped
    nonempty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    kept = kept.view(b, k) & nonempty & (scores > score_threshold)
    # sigmoid scores are >= 0, so -1 marks what NMS or the threshold removed
    ranked, order = torch.where(kept, scores, torch.full_like(scores, -1.0)).topk(
        min(max_detections, k), dim=1
    )
    counts = (ranked >= 0).sum(1).tolist()  # the one host sync: output sizes
    out_boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
    out_labels = labels.gather(1, order)
    return [
        {"boxes": out_boxes[i, :m], "scores": ranked[i, :m], "labels": out_labels[i, :m]}
        for i, m in enumerate(counts)
    ]
