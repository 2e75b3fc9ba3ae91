"""From per-proposal class logits and boxes to the candidates of each image (the box kind's
codec then selects the detections among them: :meth:`e2emfd.boxes.BoxCodec.select`)."""

from __future__ import annotations

from torch import Tensor


def topk_candidates(logits: Tensor, boxes: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` best (proposal, class) pairs of each image under sigmoid scores.

    A proposal may appear under several classes (multi-label sigmoid scores).
    logits: (B, N, C); boxes: (B, N, dim). Returns scores (B, k) float32, labels (B, k)
    int64 and boxes (B, k, dim).
    """
    b, n, c = logits.shape
    scores, flat_idx = logits.float().sigmoid().flatten(1).topk(min(k, n * c), dim=1)
    labels = flat_idx % c
    proposal = flat_idx // c
    picked = boxes.gather(1, proposal[..., None].expand(-1, -1, boxes.shape[-1]))
    return scores, labels, picked
