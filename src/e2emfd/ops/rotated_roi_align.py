"""Rotated RoIAlign by bilinear sampling (``grid_sample``); the CFDP head's multi-level
pooler (:class:`e2emfd.models.detection.pooler.MultiLevelRoIAlign`) calls it per level.

A rotated RoI ``(batch, cx, cy, w, h, angle)`` (input pixels, the convention of
:mod:`e2emfd.ops.rotated`) is cut into ``S_h x S_w`` bins in its own frame: output column
``j`` runs along the ``w`` side (direction ``(cos angle, sin angle)``), row ``i`` along the
``h`` side (``(-sin angle, cos angle)``). Each bin averages ``sampling_ratio ** 2`` bilinear
samples placed as torchvision's ``roi_align(aligned=True)`` places them, so at angle 0 the
two agree exactly, borders included: a sample more than one feature pixel outside the
map reads 0, one closer than that reads the nearest border pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def rotated_sample_points(
    boxes: Tensor, out_h: int, out_w: int, ratio: int
) -> tuple[Tensor, Tensor]:
    """Input-pixel coordinates x, y (K, out_h * ratio, out_w * ratio) of every sample point
    of rotated boxes (K, 5) ``(cx, cy, w, h, angle)``: column j runs along the w side."""
    cx, cy, w, h, a = boxes.unbind(1)
    # bin j, sample q sits at (j + (q + 0.5) / ratio) / out_w of the side, i.e. the centre
    # of sub-cell j * ratio + q of out_w * ratio equal sub-cells
    fu = (torch.arange(out_w * ratio, device=boxes.device, dtype=boxes.dtype) + 0.5) / (
        out_w * ratio
    ) - 0.5
    fv = (torch.arange(out_h * ratio, device=boxes.device, dtype=boxes.dtype) + 0.5) / (
        out_h * ratio
    ) - 0.5
    u = (w[:, None] * fu[None])[:, None, :]  # (K, 1, Ws) along the w side
    v = (h[:, None] * fv[None])[:, :, None]  # (K, Hs, 1) along the h side
    c, s = torch.cos(a)[:, None, None], torch.sin(a)[:, None, None]
    x = cx[:, None, None] + u * c - v * s
    y = cy[:, None, None] + u * s + v * c
    return x, y


def rotated_roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
) -> Tensor:
    """Pool rotated RoIs from a feature map.

    features: (B, C, H, W); rois: (K, 6) ``(batch_index, cx, cy, w, h, angle)`` in input
    pixels (any angle, not only le90); ``spatial_scale``: feature pixels per input pixel
    (1 / stride). Returns (K, C, S_h, S_w) in the features' dtype (sampling runs in float32,
    or float64 for float64 features). Gradients flow to ``features`` (and to ``rois``).
    """
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, H, W), got {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 6:
        raise ValueError(
            f"rois must be (K, 6) (batch, cx, cy, w, h, angle), got {tuple(rois.shape)}"
        )
    if sampling_ratio < 1:
        raise ValueError(
            f"sampling_ratio must be >= 1 (no adaptive sampling), got {sampling_ratio}"
        )
    out_h, out_w = _pair(output_size)
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    feats = features.to(dtype)
    rois = rois.to(dtype)
    b, c, height, width = feats.shape
    k = rois.shape[0]
    x, y = rotated_sample_points(rois[:, 1:], out_h, out_w, sampling_ratio)
    # torchvision's aligned convention: feature pixel i has its centre at input (i + 0.5) / scale
    fx, fy = x * spatial_scale - 0.5, y * spatial_scale - 0.5
    inside = (fx >= -1) & (fx <= width) & (fy >= -1) & (fy <= height)
    fx, fy = fx.clamp(0, width - 1), fy.clamp(0, height - 1)
    # grid_sample(align_corners=False): -1 and 1 are the outer edges of the border pixels
    grid = torch.stack([(fx + 0.5) * (2 / width) - 1, (fy + 0.5) * (2 / height) - 1], dim=-1)
    hs, ws = grid.shape[1:3]
    samples = feats.new_zeros(k, c, hs, ws)
    batch = rois[:, 0].round().long()
    for i in range(b):
        sel = (batch == i).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        g = grid[sel].reshape(1, -1, ws, 2)
        got = F.grid_sample(
            feats[i : i + 1], g, mode="bilinear", padding_mode="border", align_corners=False
        )
        samples = samples.index_copy(0, sel, got.view(c, -1, hs, ws).transpose(0, 1))
    samples = samples * inside[:, None].to(dtype)
    pooled = samples.view(k, c, out_h, sampling_ratio, out_w, sampling_ratio).mean((3, 5))
    return pooled.to(features.dtype)
