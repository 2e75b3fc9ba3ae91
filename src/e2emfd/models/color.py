"""Luminance / colour conversions for the fused image (YCbCr as in TarDAL and SeAFusion;
HSV value as in the public E2E-MFD code)."""

from __future__ import annotations

import torch
from torch import Tensor

COLOR_MODES = ("ycbcr", "hsv", "gray")


def rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 3, H, W) Y, Cb, Cr (BT.601 full range, Cb/Cr
    centred on 0.5)."""
    r, g, b = rgb.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = (b - y) * 0.564 + 0.5
    cr = (r - y) * 0.713 + 0.5
    return torch.stack([y, cb, cr], 1)


def ycbcr_to_rgb(ycbcr: Tensor) -> Tensor:
    y, cb, cr = ycbcr.unbind(1)
    r = y + 1.403 * (cr - 0.5)
    g = y - 0.714 * (cr - 0.5) - 0.344 * (cb - 0.5)
    b = y + 1.773 * (cb - 0.5)
    return torch.stack([r, g, b], 1).clamp(0.0, 1.0)


def luminance(vis: Tensor, mode: str) -> Tensor:
    """The channel that is fused with the infrared image: (B, 1, H, W)."""
    if mode == "hsv":
        return vis.amax(1, keepdim=True)
    if mode in ("ycbcr", "gray"):
        return rgb_to_ycbcr(vis)[:, :1]
    raise ValueError(f"colour mode must be one of {COLOR_MODES}, got {mode!r}")


def restore_color(fused_lum: Tensor, vis: Tensor, mode: str) -> Tensor:
    """Put the visible image's chroma back on the fused luminance.

    fused_lum (B, 1, H, W), vis (B, 3, H, W) -> (B, 3, H, W) RGB, or (B, 1, H, W) for gray.
    HSV keeps hue and saturation by scaling RGB by F / V (black pixels become grey F).
    """
    if mode == "gray":
        return fused_lum
    if mode == "ycbcr":
        ycbcr = rgb_to_ycbcr(vis)
        return ycbcr_to_rgb(torch.cat([fused_lum, ycbcr[:, 1:]], 1))
    if mode == "hsv":
        value = vis.amax(1, keepdim=True)
        ratio = fused_lum / value.clamp_min(1e-6)
        return torch.where(value > 1e-6, vis * ratio, fused_lum.expand_as(vis)).clamp(0.0, 1.0)
    raise ValueError(f"colour mode must be one of {COLOR_MODES}, got {mode!r}")
