"""SimOTA-style dynamic-k matching of proposals to ground truth (YOLOX, as in DiffusionDet).

Each ground-truth box takes the ``k`` cheapest proposals, where ``k`` is the rounded-down
sum of its ``ota_k`` best IoUs (at least 1); a proposal claimed by several boxes keeps
only its cheapest one, and a box left with none then takes the cheapest free proposal.
The cost is the focal classification cost + L1 on normalised boxes - an overlap term, plus
a large penalty for proposals whose centre is not both inside the box and inside its
centre region, and a larger one for proposals whose centre is near no box at all. The box
kind's codec supplies the geometric terms: for axis-aligned boxes GIoU (and IoU for
dynamic k), for rotated boxes the exact rotated IoU, an angle term in the L1 and a centre
prior in each box's own frame.
"""

from __future__ import annotations

import torch
from torch import Tensor

from e2emfd.boxes import BoxCodec
from e2emfd.config import DetectionConfig


def focal_class_cost(prob: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """(N, C) probabilities, (G,) labels -> (N, G): the focal loss of calling proposal n
    class ``labels[g]`` minus that of calling it background (the negative-term baseline)."""
    p = prob[:, labels]
    pos = alpha * (1 - p) ** gamma * -(p + 1e-8).log()
    neg = (1 - alpha) * p**gamma * -(1 - p + 1e-8).log()
    return pos - neg


def dynamic_k_assign(cost: Tensor, iou: Tensor, ota_k: int) -> Tensor:
    """Dynamic-k assignment from (N, G) cost and IoU; returns an (N, G) bool matching with
    at most one True per row and, when N >= G, at least one per column."""
    n, g = cost.shape
    matching = torch.zeros_like(cost, dtype=torch.bool)
    if n == 0 or g == 0:
        return matching
    topk_iou = iou.topk(min(ota_k, n), dim=0).values
    dynamic_k = topk_iou.sum(0).int().clamp(min=1)  # (G,), <= min(ota_k, n)
    # each column takes its dynamic_k cheapest rows: rank rows per column, compare to k
    order = cost.argsort(dim=0)
    take = torch.arange(n, device=cost.device)[:, None] < dynamic_k[None, :]
    matching.scatter_(0, order, take)

    # a proposal claimed by several boxes keeps the box it is cheapest for
    multi = matching.sum(1) > 1
    cheapest = torch.zeros_like(matching).scatter_(1, cost.argmin(1, keepdim=True), True)
    matching = torch.where(multi[:, None], cheapest, matching)

    # a box left without a proposal takes the cheapest free one, or, when none is free,
    # the cheapest one of a box that has several; one box at a time so that no proposal
    # is given twice (rare: a few host syncs)
    for col in (~matching.any(0)).nonzero().flatten().tolist():
        used = matching.any(1)
        shared = used & (matching.sum(0)[matching.int().argmax(1)] > 1)
        pool = ~used if not bool(used.all()) else shared
        if not bool(pool.any()):
            break  # more boxes than proposals
        row = cost[:, col].masked_fill(~pool, float("inf")).argmin()
        matching[row] = False
        matching[row, col] = True
    return matching


# The centre prior of SimOTA as DiffusionDet uses it: a proposal whose centre is outside a
# box or its centre region (radius x the box's size around its centre) costs this much more
# for that box, and one near no box at all this much more for every box.
CENTRE_RADIUS = 2.5
OUTSIDE_PENALTY = 100.0
BACKGROUND_PENALTY = 10000.0


class DynamicKMatcher:
    """Match one image's proposals to its ground truth (see the module docstring), with the
    box ``codec``'s geometry and the cost weights of ``cfg`` (the loss weights, as in
    DiffusionDet: ``loss_class``, ``loss_l1``, ``loss_giou``; ``ota_k``, focal alpha and
    gamma). All cost terms are computed in float32 without gradients.
    """

    def __init__(self, codec: BoxCodec, cfg: DetectionConfig) -> None:
        self.codec = codec
        self.cfg = cfg

    @torch.no_grad()
    def cost_matrix(
        self, logits: Tensor, boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, scale: Tensor
    ) -> tuple[Tensor, Tensor]:
        """logits (N, C), boxes (N, dim) pixels, gt_boxes (G, dim), gt_labels (G,), scale
        (4,) the image's box scale -> (cost (N, G), IoU (N, G)), both float32."""
        boxes, gt_boxes, scale = boxes.float(), gt_boxes.float(), scale.float()
        prob = logits.float().sigmoid()
        cfg = self.cfg
        cost_class = focal_class_cost(prob, gt_labels, cfg.focal_alpha, cfg.focal_gamma)
        cost_l1 = self.codec.l1_cost(boxes, gt_boxes, scale)
        overlap, iou = self.codec.overlap_cost(boxes, gt_boxes)
        in_box, in_centre = self.codec.centre_prior(boxes, gt_boxes, CENTRE_RADIUS)
        cost = (
            cfg.loss_class * cost_class
            + cfg.loss_l1 * cost_l1
            - cfg.loss_giou * overlap
            + OUTSIDE_PENALTY * (~(in_box & in_centre)).float()
        )
        near_none = ~(in_box.any(1) | in_centre.any(1))
        cost = cost + BACKGROUND_PENALTY * near_none[:, None].float()
        return cost, iou

    @torch.no_grad()
    def __call__(
        self, logits: Tensor, boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, scale: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Shapes as in :meth:`cost_matrix`. Returns ``(proposal_idx, gt_idx)``, two (M,)
        int64 tensors: proposal ``proposal_idx[m]`` is matched to box ``gt_idx[m]``."""
        if gt_boxes.shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.long, device=logits.device)
            return empty, empty
        with torch.autocast(logits.device.type, enabled=False):
            cost, iou = self.cost_matrix(logits, boxes, gt_boxes, gt_labels, scale)
            matching = dynamic_k_assign(cost, iou, self.cfg.ota_k)
        proposal_idx = matching.any(1).nonzero().flatten()
        gt_idx = matching[proposal_idx].int().argmax(1)
        return proposal_idx, gt_idx
