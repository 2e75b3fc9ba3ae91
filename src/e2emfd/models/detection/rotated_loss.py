"""Matching cost and set loss of the rotated CFDP head.

Choices (documented here, used by :class:`~.rotated.RotatedCFDPHead`):

* matching cost = focal class cost + L1 on normalised ``(cx, cy, w, h)`` - exact rotated
  IoU (:func:`e2emfd.ops.rotated.rotated_box_iou`, which also sets dynamic k), with the
  centre prior measured in each ground-truth box's own frame;
* loss = focal classification + L1 on normalised ``(cx, cy, w, h)`` + a Gaussian shape
  term: the KLD loss of Yang et al. (NeurIPS 2021), ``1 - 1 / (1 + ln(1 + KLD))``, with
  each box seen as the Gaussian ``N((cx, cy), R diag(w^2/4, h^2/4) R^T)``. KLD does not
  change between the equivalent forms ``(w, h, a)``, ``(h, w, a + pi/2)`` and
  ``(w, h, a + pi)``, so the loss has no jump at the le90 boundaries, an angle error costs
  more on a long box than on a square one (as the IoU does), and, unlike an IoU loss, it
  still has a gradient when boxes do not overlap. The L1 term leaves the angle out for
  the same boundary reason; in le90 both boxes have ``w >= h``, so L1 on the sizes only
  jumps for near-squares, where ``w ~ h`` makes the jump small.
* ``cfg.loss_giou`` weighs the KLD term (the axis-aligned head's GIoU weight), reported
  as ``loss_kld``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from e2emfd.losses.detection import _mean_across_ranks
from e2emfd.ops.rotated import rotated_box_iou

from .matcher import DynamicKMatcher, focal_class_cost


def gaussian_kld(pred: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """KL divergence KL(N_pred || N_target) of the Gaussians of paired boxes (N, 5) -> (N,).

    Closed form in the target's frame: with half-sizes ``a = w/2``, ``b = h/2``, relative
    angle ``t = angle_p - angle_t`` and the centre offset ``(du, dv)`` along the target's
    axes, ``KLD = [(a_p^2 cos^2 t + b_p^2 sin^2 t) / a_t^2 + (a_p^2 sin^2 t + b_p^2 cos^2 t)
    / b_t^2 + du^2 / a_t^2 + dv^2 / b_t^2] / 2 + ln(a_t b_t / (a_p b_p)) - 1``. Sizes below
    ``eps`` pixels are raised to it, so degenerate boxes stay finite.
    """
    ap, bp = (pred[:, 2] / 2).clamp(min=eps), (pred[:, 3] / 2).clamp(min=eps)
    at, bt = (target[:, 2] / 2).clamp(min=eps), (target[:, 3] / 2).clamp(min=eps)
    t = pred[:, 4] - target[:, 4]
    c2, s2 = torch.cos(t) ** 2, torch.sin(t) ** 2
    ct, st = torch.cos(target[:, 4]), torch.sin(target[:, 4])
    dx, dy = pred[:, 0] - target[:, 0], pred[:, 1] - target[:, 1]
    du, dv = dx * ct + dy * st, -dx * st + dy * ct
    trace = (ap**2 * c2 + bp**2 * s2) / at**2 + (ap**2 * s2 + bp**2 * c2) / bt**2
    mahalanobis = du**2 / at**2 + dv**2 / bt**2
    return 0.5 * (trace + mahalanobis) + torch.log(at * bt / (ap * bp)) - 1.0


def kld_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``1 - 1 / (1 + ln(1 + KLD))`` per pair (N,): 0 for equal boxes, below 1 always."""
    kld = gaussian_kld(pred, target).clamp(min=0)
    return 1.0 - 1.0 / (1.0 + torch.log1p(kld))


def rotated_centre_prior(
    boxes: Tensor, gt_boxes: Tensor, radius: float = 2.5
) -> tuple[Tensor, Tensor]:
    """Where proposal centres lie relative to rotated ground truth; (N, 5), (G, 5).

    Returns two (N, G) bool masks, in each ground-truth box's own frame: centre strictly
    inside the box, and strictly inside its centre region (+- ``radius`` x its w and h),
    the rotated counterpart of :func:`.matcher.centre_prior`.
    """
    d = boxes[:, None, :2] - gt_boxes[None, :, :2]  # (N, G, 2)
    c, s = torch.cos(gt_boxes[:, 4]), torch.sin(gt_boxes[:, 4])
    u = (d[..., 0] * c + d[..., 1] * s).abs()
    v = (-d[..., 0] * s + d[..., 1] * c).abs()
    w, h = gt_boxes[:, 2], gt_boxes[:, 3]
    in_box = (u < w / 2) & (v < h / 2)
    in_centre = (u < radius * w) & (v < radius * h)
    return in_box, in_centre


class RotatedDynamicKMatcher(DynamicKMatcher):
    """Dynamic-k matching on rotated boxes: the cost of the module docstring; assignment
    (:func:`.matcher.dynamic_k_assign`) unchanged. ``scale`` is the image's ``[W, H, D, D]``
    (:func:`.rotated_boxes.image_scale`) where the axis-aligned matcher takes ``whwh``."""

    @torch.no_grad()
    def cost_matrix(
        self, logits: Tensor, boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, scale: Tensor
    ) -> tuple[Tensor, Tensor]:
        """logits (N, C), boxes (N, 5), gt_boxes (G, 5), gt_labels (G,), scale (4,) ->
        (cost (N, G), rotated IoU (N, G)), both float32."""
        boxes, gt_boxes, scale = boxes.float(), gt_boxes.float(), scale.float()
        prob = logits.float().sigmoid()
        cost_class = focal_class_cost(prob, gt_labels, self.focal_alpha, self.focal_gamma)
        cost_l1 = torch.cdist(boxes[:, :4] / scale, gt_boxes[:, :4] / scale, p=1)
        iou = rotated_box_iou(boxes, gt_boxes)
        in_box, in_centre = rotated_centre_prior(boxes, gt_boxes, self.centre_radius)
        cost = (
            self.cost_class * cost_class
            + self.cost_l1 * cost_l1
            - self.cost_giou * iou
            + self.outside_penalty * (~(in_box & in_centre)).float()
        )
        near_none = ~(in_box.any(1) | in_centre.any(1))
        cost = cost + self.background_penalty * near_none[:, None].float()
        return cost, iou


class RotatedSetCriterion:
    """Weighted loss of one or several (deep supervision) stages on rotated boxes: focal +
    L1 + KLD on matched pairs, every term summed and divided by the number of ground-truth
    boxes (averaged over processes), as in the axis-aligned :class:`SetCriterion`."""

    def __init__(
        self,
        matcher: RotatedDynamicKMatcher,
        weight_class: float = 2.0,
        weight_l1: float = 5.0,
        weight_kld: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        self.matcher = matcher
        self.weights = {"loss_cls": weight_class, "loss_l1": weight_l1, "loss_kld": weight_kld}
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def stage_loss(
        self, logits: Tensor, boxes: Tensor, targets: Sequence[dict[str, Tensor]], scale: Tensor
    ) -> dict[str, Tensor]:
        """Unweighted losses of one stage: logits (B, N, C); boxes (B, N, 5) le90 pixels;
        targets: B dicts with "boxes" (G_i, 5) and "labels" (G_i,); scale (B, 4)."""
        logits, boxes, scale = logits.float(), boxes.float(), scale.float()
        batch_idx, prop_idx, gt_boxes, gt_labels = [], [], [], []
        for i, target in enumerate(targets):
            gt = target["boxes"].to(device=boxes.device, dtype=torch.float32).reshape(-1, 5)
            labels = target["labels"].to(boxes.device)
            p, g = self.matcher(logits[i].detach(), boxes[i].detach(), gt, labels, scale[i])
            batch_idx.append(torch.full_like(p, i))
            prop_idx.append(p)
            gt_boxes.append(gt[g])
            gt_labels.append(labels[g])
        bi, pi = torch.cat(batch_idx), torch.cat(prop_idx)
        tgt_boxes, tgt_labels = torch.cat(gt_boxes), torch.cat(gt_labels)
        num_gt = _mean_across_ranks(sum(len(t["labels"]) for t in targets), logits.device)

        onehot = torch.zeros_like(logits)
        onehot[bi, pi, tgt_labels] = 1.0
        loss_cls = sigmoid_focal_loss(
            logits, onehot, self.focal_alpha, self.focal_gamma, reduction="sum"
        )
        src = boxes[bi, pi]  # (M, 5); empty when no image has objects: the sums are then 0
        norm = scale[bi]
        loss_l1 = (src[:, :4] / norm - tgt_boxes[:, :4] / norm).abs().sum()
        loss_kld = kld_loss(src, tgt_boxes).sum()
        return {
            "loss_cls": loss_cls / num_gt,
            "loss_l1": loss_l1 / num_gt,
            "loss_kld": loss_kld / num_gt,
        }

    def __call__(
        self,
        stage_logits: Sequence[Tensor],
        stage_boxes: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]],
        scale: Tensor,
    ) -> dict[str, Tensor]:
        """Weighted losses summed over stages, each stage matched on its own predictions."""
        total: dict[str, Tensor] = {}
        for logits, boxes in zip(stage_logits, stage_boxes):
            for key, value in self.stage_loss(logits, boxes, targets, scale).items():
                weighted = self.weights[key] * value
                total[key] = total[key] + weighted if key in total else weighted
        return total
