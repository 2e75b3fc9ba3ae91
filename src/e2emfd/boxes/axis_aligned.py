"""Axis-aligned boxes ``(x1, y1, x2, y2)`` in pixels of their image (pixel edges: a box
``[0, W]`` spans the whole width).

Normalised boxes are ``(cx, cy, w, h) / (W, H, W, H)``; the diffusion signal maps them to
``[-signal_scale, signal_scale]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_convert, box_iou, generalized_box_iou

from e2emfd.config import DetectionConfig
from e2emfd.ops.roi_align import aligned_sample_points, roi_align

from .base import BoxCodec

# detectron2 / Sparse R-CNN defaults: the centre deltas are down-weighted so that the
# regression layer starts close to the identity, and exp() is capped to stay finite.
DELTA_WEIGHTS = (2.0, 2.0, 1.0, 1.0)
DELTA_SCALE_CLAMP = math.log(100000.0 / 16)


def image_whwh(image_sizes: Tensor) -> Tensor:
    """(B, 2) ``[h, w]`` -> (B, 4) float ``[w, h, w, h]`` (the scale of pixel xyxy boxes)."""
    wh = image_sizes.flip(-1).to(torch.float32)
    return torch.cat([wh, wh], dim=-1)


def normalize_boxes(boxes: Tensor, whwh: Tensor) -> Tensor:
    """Pixel xyxy (..., 4) -> normalised cxcywh (..., 4); ``whwh`` broadcasts against it."""
    return box_convert(boxes / whwh, "xyxy", "cxcywh")


def denormalize_boxes(boxes: Tensor, whwh: Tensor) -> Tensor:
    """Normalised cxcywh (..., 4) -> pixel xyxy (..., 4)."""
    return box_convert(boxes, "cxcywh", "xyxy") * whwh


def signal_to_boxes(signal: Tensor, whwh: Tensor, scale: float) -> Tensor:
    """Diffusion signal (..., 4) -> pixel xyxy (..., 4); the signal is clamped first so that
    widths and heights are never negative."""
    normalised = (signal.clamp(-scale, scale) / scale + 1.0) / 2.0
    return denormalize_boxes(normalised, whwh)


def random_normalized_boxes(
    num: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(num, 4) normalised cxcywh placeholders padding the ground truth in training.

    Centres and sizes are drawn around 0.5 with sigma 1/6 (3 sigma = half the image);
    sizes are kept positive.
    """
    if generator is not None:  # a CPU generator: draw on the CPU, then move
        boxes = torch.randn(num, 4, dtype=dtype, generator=generator).to(device)
    else:
        boxes = torch.randn(num, 4, device=device, dtype=dtype)
    boxes = boxes / 6.0 + 0.5
    boxes[:, 2:] = boxes[:, 2:].clamp(min=1e-4)
    return boxes


def apply_deltas(
    deltas: Tensor,
    boxes: Tensor,
    weights: tuple[float, float, float, float] = DELTA_WEIGHTS,
    scale_clamp: float = DELTA_SCALE_CLAMP,
) -> Tensor:
    """Refine pixel xyxy ``boxes`` (..., 4) by ``(dx, dy, dw, dh)`` deltas (..., 4).

    Centres move by a fraction of the box size, sizes scale by ``exp``. Done in float32
    whatever the autocast dtype: box coordinates of 1000 px do not survive bfloat16.
    """
    deltas = deltas.float()
    boxes = boxes.float()
    sizes = boxes[..., 2:] - boxes[..., :2]
    centres = boxes[..., :2] + 0.5 * sizes
    # Python-scalar weights per component: a weight tensor would be a host-to-device copy
    # on every call, which a CUDA graph capture does not allow
    d = torch.stack([c / w for c, w in zip(deltas.unbind(-1), weights)], dim=-1)
    new_centres = centres + d[..., :2] * sizes
    new_sizes = torch.exp(d[..., 2:].clamp(max=scale_clamp)) * sizes
    return torch.cat([new_centres - 0.5 * new_sizes, new_centres + 0.5 * new_sizes], dim=-1)


def clip_boxes(boxes: Tensor, whwh: Tensor) -> Tensor:
    """Clip pixel xyxy boxes (B, K, 4) to their images; ``whwh`` is (B, 4)."""
    upper = whwh[:, None, :]
    return torch.minimum(boxes.clamp(min=0), upper)


def centre_prior(boxes: Tensor, gt_boxes: Tensor, radius: float = 2.5) -> tuple[Tensor, Tensor]:
    """Where proposal centres lie relative to the ground truth; pixel xyxy (N, 4), (G, 4).

    Returns two (N, G) bool masks: centre strictly inside the box, and centre strictly
    inside the box's centre region (its centre +- ``radius`` x its width / height).
    """
    centres = (boxes[:, None, :2] + boxes[:, None, 2:]) / 2  # (N, 1, 2)
    in_box = ((centres > gt_boxes[None, :, :2]) & (centres < gt_boxes[None, :, 2:])).all(-1)
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    reach = radius * (gt_boxes[:, 2:] - gt_boxes[:, :2])
    in_centre = ((centres - gt_centres[None]).abs() < reach[None]).all(-1)
    return in_box, in_centre


class AxisAlignedBoxes(BoxCodec):
    """Axis-aligned xyxy boxes (see the module docstring)."""

    kind, dim = "hbb", 4

    # data side
    def rescale(self, boxes: Tensor, sx: float, sy: float) -> Tensor:
        return boxes * boxes.new_tensor([sx, sy, sx, sy])

    def hflip(self, boxes: Tensor, width: float) -> Tensor:
        flipped = boxes.clone()
        flipped[..., 0], flipped[..., 2] = width - boxes[..., 2], width - boxes[..., 0]
        return flipped

    def mask(self, boxes: Tensor, height: int, width: int) -> Tensor:
        out = torch.zeros(height, width, dtype=torch.bool, device=boxes.device)
        if len(boxes) == 0:
            return out
        ys = torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5
        xs = torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5
        b = boxes.float()
        in_y = (ys[None, :] >= b[:, 1:2]) & (ys[None, :] < b[:, 3:4])  # (N, H)
        in_x = (xs[None, :] >= b[:, 0:1]) & (xs[None, :] < b[:, 2:3])  # (N, W)
        return (in_y[:, :, None] & in_x[:, None, :]).any(0)

    def area(self, boxes: Tensor) -> Tensor:
        return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])

    # the diffusion signal and the stages' deltas
    image_scale = staticmethod(image_whwh)
    normalize = staticmethod(normalize_boxes)
    from_signal = staticmethod(signal_to_boxes)
    random_normalized = staticmethod(random_normalized_boxes)
    apply_deltas = staticmethod(apply_deltas)

    # pooling
    def roi_align(self, feature, rois, output_size, spatial_scale, sampling_ratio) -> Tensor:
        # float32 sampling: bf16 box coordinates would be off by pixels
        return roi_align(feature.float(), rois, output_size, spatial_scale, sampling_ratio)

    def sample_points(self, boxes: Tensor, output_size: int, ratio: int) -> tuple[Tensor, Tensor]:
        return aligned_sample_points(boxes, output_size, ratio)

    # matching cost
    def l1_cost(self, boxes: Tensor, gt: Tensor, scale: Tensor) -> Tensor:
        return torch.cdist(boxes / scale, gt / scale, p=1)

    def overlap_cost(self, boxes: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
        return generalized_box_iou(boxes, gt), box_iou(boxes, gt)

    centre_prior = staticmethod(centre_prior)

    # inference
    def select(self, candidates, scale: Tensor, cfg: DetectionConfig) -> list[dict[str, Tensor]]:
        """Clip, drop empty boxes, per-class NMS, keep the best ``cfg.max_detections`` per
        image. scores, labels: (B, K); boxes: (B, K, 4) pixel xyxy; scale: (B, 4) whwh. NMS
        runs once for the whole batch (images and classes kept apart by the NMS group
        index). Returns B dicts {"boxes": (D, 4), "scores": (D,), "labels": (D,)}, best
        first."""
        scores, labels, boxes = candidates
        b, k = scores.shape
        boxes = clip_boxes(boxes.float(), scale.float())
        groups = torch.arange(b, device=labels.device).repeat_interleave(k) * cfg.num_classes
        keep = batched_nms(
            boxes.reshape(-1, 4), scores.reshape(-1), groups + labels.reshape(-1), cfg.nms_threshold
        )
        kept = torch.zeros(b * k, dtype=torch.bool, device=scores.device)
        kept[keep] = True
        # boxes clipped to nothing (proposals outside the image) are dropped
        nonempty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        kept = kept.view(b, k) & nonempty & (scores > cfg.score_threshold)
        # sigmoid scores are >= 0, so -1 marks what NMS or the threshold removed
        ranked, order = torch.where(kept, scores, torch.full_like(scores, -1.0)).topk(
            min(cfg.max_detections, k), dim=1
        )
        counts = (ranked >= 0).sum(1).tolist()  # the one host sync: output sizes
        out_boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
        out_labels = labels.gather(1, order)
        return [
            {"boxes": out_boxes[i, :m], "scores": ranked[i, :m], "labels": out_labels[i, :m]}
            for i, m in enumerate(counts)
        ]
