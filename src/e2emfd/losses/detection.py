"""Set-prediction loss of the CFDP detection head: focal + L1 + GIoU on matched pairs.

Proposals are matched to ground truth per image (by a matcher passed in, e.g. the
dynamic-k matcher of :mod:`e2emfd.models.detection.matcher`); every proposal is
classified (unmatched ones as background, i.e. all-zero one-hot under a sigmoid focal
loss), matched ones are also regressed. Every term is summed and divided by the number of
ground-truth boxes in the batch (at least 1), as in DETR / DiffusionDet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

# (logits (N, C), boxes (N, 4), gt_boxes (G, 4), gt_labels (G,), whwh (4,))
#   -> (proposal_idx (M,), gt_idx (M,))
Matcher = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


class SetCriterion:
    """Weighted detection loss of one or several (deep supervision) stages."""

    def __init__(
        self,
        matcher: Matcher,
        weight_class: float = 2.0,
        weight_l1: float = 5.0,
        weight_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        self.matcher = matcher
        self.weight_class = weight_class
        self.weight_l1 = weight_l1
        self.weight_giou = weight_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def stage_loss(
        self, logits: Tensor, boxes: Tensor, targets: Sequence[dict[str, Tensor]], whwh: Tensor
    ) -> dict[str, Tensor]:
        """Unweighted losses of one stage.

        logits: (B, N, C); boxes: (B, N, 4) pixel xyxy; targets: B dicts with "boxes"
        (G_i, 4) pixel xyxy and "labels" (G_i,) int64; whwh: (B, 4) image ``[w, h, w, h]``.
        Returns scalar "loss_cls", "loss_l1", "loss_giou".
        """
        logits, boxes, whwh = logits.float(), boxes.float(), whwh.float()
        b, n, c = logits.shape
        batch_idx, prop_idx, gt_boxes, gt_labels = [], [], [], []
        for i, target in enumerate(targets):
            p, g = self.matcher(
                logits[i].detach(), boxes[i].detach(), target["boxes"], target["labels"], whwh[i]
            )
            batch_idx.append(torch.full_like(p, i))
            prop_idx.append(p)
            gt_boxes.append(target["boxes"][g].float())
            gt_labels.append(target["labels"][g])
        bi, pi = torch.cat(batch_idx), torch.cat(prop_idx)
        tgt_boxes, tgt_labels = torch.cat(gt_boxes), torch.cat(gt_labels)
        num_gt = _mean_across_ranks(sum(len(t["labels"]) for t in targets), logits.device)

        onehot = torch.zeros_like(logits)
        onehot[bi, pi, tgt_labels] = 1.0
        loss_cls = sigmoid_focal_loss(
            logits, onehot, self.focal_alpha, self.focal_gamma, reduction="sum"
        )
        src = boxes[bi, pi]  # (M, 4); empty when no image has objects: the sums are then 0
        scale = whwh[bi]
        loss_l1 = (src / scale - tgt_boxes / scale).abs().sum()
        loss_giou = generalized_box_iou_loss(src, tgt_boxes, reduction="sum")
        return {
            "loss_cls": loss_cls / num_gt,
            "loss_l1": loss_l1 / num_gt,
            "loss_giou": loss_giou / num_gt,
        }

    def __call__(
        self,
        stage_logits: Sequence[Tensor],
        stage_boxes: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]],
        whwh: Tensor,
    ) -> dict[str, Tensor]:
        """Weighted losses summed over stages, each stage matched on its own predictions.

        stage_logits / stage_boxes: per stage (B, N, C) / (B, N, 4) (a stacked (S, B, N, .)
        tensor works too).
        """
        weights = {
            "loss_cls": self.weight_class,
            "loss_l1": self.weight_l1,
            "loss_giou": self.weight_giou,
        }
        total: dict[str, Tensor] = {}
        for logits, boxes in zip(stage_logits, stage_boxes):
            for key, value in self.stage_loss(logits, boxes, targets, whwh).items():
                weighted = weights[key] * value
                total[key] = total[key] + weighted if key in total else weighted
        return total


def _mean_across_ranks(count: int, device: torch.device) -> float:
    """The number of ground-truth boxes per process, averaged over processes (at least 1).

    Normalising each process's loss sum by the average count makes DDP's averaged gradient
    equal the gradient of (sum over the global batch) / (global count / world size), i.e.
    the same update as one process on the whole batch.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        total = torch.tensor(float(count), device=device)
        dist.all_reduce(total)
        return max(total.item() / dist.get_world_size(), 1.0)
    return float(max(count, 1))
