"""The box parameterisation of the rotated CFDP head (counterpart of :mod:`.boxes`).

Three frames, as for axis-aligned boxes:

* pixel boxes ``(cx, cy, w, h, angle)``, le90 (:mod:`e2emfd.ops.rotated`), in the frame of
  ``image_sizes`` (what rotated RoIAlign, the losses and the outputs use);
* normalised boxes ``(cx / W, cy / H, w / D, h / D, angle / pi + 1/2)`` with ``D`` the
  image diagonal: every box inside the image has all five numbers in ``[0, 1]`` whatever its
  angle (``w / W`` would exceed 1 for a long box turned along the diagonal);
* the diffusion *signal*: normalised boxes mapped affinely to ``[-scale, scale]``. The
  angle is periodic, so decoding wraps it into range instead of clamping it (a clamp
  would pile noisy angles up at -pi/2); centres and sizes are clamped as before.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from e2emfd.ops.rotated import normalize_le90

from .boxes import DELTA_SCALE_CLAMP

BOX_DIM = 5
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


def obb_to_signal(boxes: Tensor, scale: Tensor, signal_scale: float) -> Tensor:
    """Pixel boxes (..., 5) -> diffusion signal in ``[-signal_scale, signal_scale]``."""
    signal = (normalize_obb(boxes, scale) * 2.0 - 1.0) * signal_scale
    return signal.clamp(-signal_scale, signal_scale)


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
