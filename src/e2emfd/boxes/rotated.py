"""Rotated boxes ``(cx, cy, w, h, angle)``, le90, in pixels of their image (the convention
of :mod:`e2emfd.ops.rotated`, which holds the polygon geometry).

Normalised boxes are ``(cx / W, cy / H, w / D, h / D, angle / pi + 1/2)`` with ``D`` the
image diagonal: every box inside the image has all five numbers in ``[0, 1]`` whatever its
angle (``w / W`` would exceed 1 for a long box turned along the diagonal). The diffusion
signal maps them to ``[-signal_scale, signal_scale]``; the angle is periodic, so decoding
wraps it into range instead of clamping it (a clamp would pile noisy angles up at
-pi/2), centres and sizes are clamped.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from e2emfd.config import DetectionConfig
from e2emfd.ops.rotated import (
    hflip_obb,
    normalize_le90,
    rotated_box_iou,
    rotated_box_mask,
    rotated_roi_align,
    scale_obb,
)
from e2emfd.ops.rotated_nms import rotated_batched_nms
from e2emfd.ops.rotated_roi_align import rotated_sample_points

from .axis_aligned import DELTA_SCALE_CLAMP
from .base import BoxCodec

# centre deltas as for axis-aligned boxes; the angle delta is in radians
DELTA_WEIGHTS = (2.0, 2.0, 1.0, 1.0, 1.0)
MIN_SIZE = 1e-4  # normalised: decoded boxes keep a positive area (the Gaussian loss needs it)


def image_scale(image_sizes: Tensor) -> Tensor:
    """(B, 2) ``[h, w]`` -> (B, 4) float ``[W, H, D, D]``, D = sqrt(W^2 + H^2)."""
    wh = image_sizes.flip(-1).to(torch.float32)
    diag = wh.norm(dim=-1, keepdim=True)
    return torch.cat([wh, diag, diag], dim=-1)


def normalize_obb(boxes: Tensor, scale: Tensor) -> Tensor:
    """Pixel boxes (..., 5) -> normalised (..., 5); ``scale`` (..., 4) broadcasts."""
    return torch.cat([boxes[..., :4] / scale, boxes[..., 4:] / math.pi + 0.5], dim=-1)


def denormalize_obb(boxes: Tensor, scale: Tensor) -> Tensor:
    """Normalised (..., 5) -> le90 pixel boxes (..., 5)."""
    pixels = torch.cat([boxes[..., :4] * scale, (boxes[..., 4:] - 0.5) * math.pi], dim=-1)
    return normalize_le90(pixels)


def signal_to_obb(signal: Tensor, scale: Tensor, signal_scale: float) -> Tensor:
    """Diffusion signal (..., 5) -> le90 pixel boxes (..., 5): centres and sizes clamped
    into range (sizes at least ``MIN_SIZE``), the angle wrapped (period ``2 * scale``)."""
    s = signal_scale
    box = (signal[..., :4].clamp(-s, s) / s + 1.0) / 2.0
    box = torch.cat([box[..., :2], box[..., 2:].clamp(min=MIN_SIZE)], dim=-1)
    angle = (torch.remainder(signal[..., 4:] + s, 2 * s) - s) / s  # [-1, 1)
    return denormalize_obb(torch.cat([box, (angle + 1.0) / 2.0], dim=-1), scale)


def random_normalized_obb(
    num: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(num, 5) normalised placeholder boxes padding the ground truth in training:
    centres and sizes around 0.5 with sigma 1/6 (sizes kept positive), uniform angles."""
    if generator is not None:  # a CPU generator: draw on the CPU, then move
        boxes = torch.randn(num, 4, dtype=dtype, generator=generator)
        angles = torch.rand(num, 1, dtype=dtype, generator=generator)
        boxes, angles = boxes.to(device), angles.to(device)
    else:
        boxes = torch.randn(num, 4, device=device, dtype=dtype)
        angles = torch.rand(num, 1, device=device, dtype=dtype)
    boxes = boxes / 6.0 + 0.5
    boxes[:, 2:] = boxes[:, 2:].clamp(min=MIN_SIZE)
    return torch.cat([boxes, angles], dim=1)


def apply_obb_deltas(
    deltas: Tensor,
    boxes: Tensor,
    weights: tuple[float, ...] = DELTA_WEIGHTS,
    scale_clamp: float = DELTA_SCALE_CLAMP,
) -> Tensor:
    """Refine le90 pixel ``boxes`` (..., 5) by deltas ``(dx, dy, dw, dh, da)`` (..., 5).

    The centre moves by ``dx * w`` along the box's ``w`` side and ``dy * h`` along its
    ``h`` side (the box's own frame, the frame its rotated RoI features are pooled in);
    sizes scale by ``exp``; the angle turns by ``da`` radians. The result is le90
    normalised. Float32 whatever the autocast dtype.
    """
    deltas = deltas.float()
    boxes = boxes.float()
    # per-component Python scalars: no host-to-device copy (CUDA-graph capturable)
    d = torch.stack([c / w for c, w in zip(deltas.unbind(-1), weights)], dim=-1)
    cx, cy, w, h, a = boxes.unbind(-1)
    c, s = torch.cos(a), torch.sin(a)
    du, dv = d[..., 0] * w, d[..., 1] * h
    sizes = torch.exp(d[..., 2:4].clamp(max=scale_clamp)) * boxes[..., 2:4]
    out = torch.stack(
        [cx + du * c - dv * s, cy + du * s + dv * c, sizes[..., 0], sizes[..., 1], a + d[..., 4]],
        dim=-1,
    )
    return normalize_le90(out)


def angle_cost(pred_angle: Tensor, target: Tensor) -> Tensor:
    """``|wrap(a_p - a_t)| / pi * (1 - h_t / w_t)``: angles (...,) against target boxes
    (..., 5) (broadcasting), wrapped to [-pi/2, pi/2). The difference of two angles of the
    same rectangle is a multiple of pi, so it costs nothing, and the elongation weight makes
    a square's arbitrary angle free."""
    diff = torch.remainder(pred_angle - target[..., 4] + math.pi / 2, math.pi) - math.pi / 2
    elongation = (1 - target[..., 3] / target[..., 2].clamp(min=1e-6)).clamp(0, 1)
    return diff.abs() / math.pi * elongation


def rotated_centre_prior(
    boxes: Tensor, gt_boxes: Tensor, radius: float = 2.5
) -> tuple[Tensor, Tensor]:
    """Where proposal centres lie relative to rotated ground truth; (N, 5), (G, 5).

    Returns two (N, G) bool masks, in each ground-truth box's own frame: centre strictly
    inside the box, and strictly inside its centre region (+- ``radius`` x its w and h),
    the rotated counterpart of the axis-aligned centre prior.
    """
    d = boxes[:, None, :2] - gt_boxes[None, :, :2]  # (N, G, 2)
    c, s = torch.cos(gt_boxes[:, 4]), torch.sin(gt_boxes[:, 4])
    u = (d[..., 0] * c + d[..., 1] * s).abs()
    v = (-d[..., 0] * s + d[..., 1] * c).abs()
    w, h = gt_boxes[:, 2], gt_boxes[:, 3]
    in_box = (u < w / 2) & (v < h / 2)
    in_centre = (u < radius * w) & (v < radius * h)
    return in_box, in_centre


class RotatedBoxes(BoxCodec):
    """Rotated le90 boxes (see the module docstring)."""

    kind, dim = "obb", 5

    # data side (the geometry of :mod:`e2emfd.ops.rotated`)
    rescale = staticmethod(scale_obb)
    hflip = staticmethod(hflip_obb)
    mask = staticmethod(rotated_box_mask)

    def area(self, boxes: Tensor) -> Tensor:
        return boxes[..., 2] * boxes[..., 3]

    # the diffusion signal and the stages' deltas
    image_scale = staticmethod(image_scale)
    normalize = staticmethod(normalize_obb)
    from_signal = staticmethod(signal_to_obb)
    random_normalized = staticmethod(random_normalized_obb)
    apply_deltas = staticmethod(apply_obb_deltas)

    # pooling, in the box's own frame; samples in float32 (float64 for float64 maps)
    # whatever the autocast dtype
    roi_align = staticmethod(rotated_roi_align)

    def sample_points(self, boxes: Tensor, output_size: int, ratio: int) -> tuple[Tensor, Tensor]:
        return rotated_sample_points(boxes, output_size, output_size, ratio)

    # matching cost
    def l1_cost(self, boxes: Tensor, gt: Tensor, scale: Tensor) -> Tensor:
        cost = torch.cdist(boxes[:, :4] / scale, gt[:, :4] / scale, p=1)
        return cost + angle_cost(boxes[:, None, 4], gt[None])

    def overlap_cost(self, boxes: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
        # the exact rotated IoU both rewards overlap and sets dynamic k (a rotated GIoU
        # for every proposal-box pair would cost a minimum-area rectangle each)
        iou = rotated_box_iou(boxes, gt)
        return iou, iou

    centre_prior = staticmethod(rotated_centre_prior)

    # inference
    def select(self, candidates, scale: Tensor, cfg: DetectionConfig) -> list[dict[str, Tensor]]:
        """Per image: drop boxes whose centre is outside the image (or empty, or
        non-finite), per-class rotated NMS, keep the best ``cfg.max_detections``. Boxes are
        not clipped (a rotated box cut by the image border is no longer a rectangle).
        scores, labels: (B, K); boxes: (B, K, 5) le90 pixels; scale: (B, 4) [W, H, D, D].
        Returns B dicts {"boxes": (D, 5), "scores": (D,), "labels": (D,)}, best first."""
        out = []
        for score, label, box, (width, height) in zip(
            *candidates[:2], candidates[2].float(), scale[:, :2]
        ):
            ok = (
                torch.isfinite(box).all(1)
                & (box[:, 0] >= 0)
                & (box[:, 0] <= width)
                & (box[:, 1] >= 0)
                & (box[:, 1] <= height)
                & (box[:, 2] > 0)
                & (box[:, 3] > 0)
                & (score > cfg.score_threshold)
            )
            idx = ok.nonzero().squeeze(1)
            # the class is the NMS group: no box suppresses one of another class
            keep = idx[rotated_batched_nms(box[idx], score[idx], label[idx], cfg.nms_threshold)]
            keep = keep[: cfg.max_detections]
            out.append({"boxes": box[keep], "scores": score[keep], "labels": label[keep]})
        return out
