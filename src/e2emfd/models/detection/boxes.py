"""The box parameterisation of the CFDP head, kept in one place.

Three frames are in use:

* pixel boxes ``(x1, y1, x2, y2)`` in the frame of ``image_sizes`` (what RoIAlign, the
  losses and the outputs use);
* normalised boxes ``(cx, cy, w, h) / (W, H, W, H)`` in ``[0, 1]``;
* the diffusion *signal*: normalised boxes mapped affinely to ``[-scale, scale]``.

A later issue extends the head to rotated boxes ``(cx, cy, w, h, angle)``; only this module
(and the regression width ``BOX_DIM``) should need a rotated counterpart.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_convert

BOX_DIM = 4  # numbers per box (a rotated variant adds the angle)

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


def boxes_to_signal(boxes: Tensor, whwh: Tensor, scale: float) -> Tensor:
    """Pixel xyxy (..., 4) -> diffusion signal in ``[-scale, scale]`` (clamped)."""
    signal = (normalize_boxes(boxes, whwh) * 2.0 - 1.0) * scale
    return signal.clamp(-scale, scale)


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
        boxes = torch.randn(num, BOX_DIM, dtype=dtype, generator=generator).to(device)
    else:
        boxes = torch.randn(num, BOX_DIM, device=device, dtype=dtype)
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
