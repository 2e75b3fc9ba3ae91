"""Classical fusion baselines, so every learned result can be compared side by side.

Each fuses the infrared image with the visible luminance; colour is restored the same
way as for the network (:func:`e2emfd.models.color.restore_color`).

- ``average``: (IR + Y) / 2;
- ``max``: the brighter source per pixel ("max-abs" on non-negative intensities);
- ``laplacian``: Laplacian-pyramid fusion (Burt & Adelson): detail levels take the
  coefficient of larger magnitude, the coarsest level is averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from e2emfd.models.color import luminance, restore_color

BASELINES = ("average", "max", "laplacian")

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: Tensor) -> Tensor:
    k = _BINOMIAL.to(x)
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 5))
    return F.conv2d(x, k.view(1, 1, 5, 1))


def _down(x: Tensor) -> Tensor:
    return _blur(x)[..., ::2, ::2]


def _up(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def laplacian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """Detail levels (fine to coarse) followed by the low-pass residual; exact inverse in
    :func:`collapse_pyramid`."""
    pyramid = []
    for _ in range(levels):
        if min(x.shape[-2:]) < 8:
            break
        low = _down(x)
        pyramid.append(x - _up(low, x.shape[-2:]))
        x = low
    pyramid.append(x)
    return pyramid


def collapse_pyramid(pyramid: list[Tensor]) -> Tensor:
    x = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        x = detail + _up(x, detail.shape[-2:])
    return x


def fuse_luminance(ir: Tensor, lum: Tensor, method: str, levels: int = 4) -> Tensor:
    """ir, lum: (B, 1, H, W) in [0, 1] -> fused luminance (B, 1, H, W) in [0, 1]."""
    if method == "average":
        return (ir + lum) / 2
    if method == "max":
        return torch.maximum(ir, lum)
    if method == "laplacian":
        pa, pb = laplacian_pyramid(ir, levels), laplacian_pyramid(lum, levels)
        fused = [torch.where(a.abs() >= b.abs(), a, b) for a, b in zip(pa[:-1], pb[:-1])]
        fused.append((pa[-1] + pb[-1]) / 2)
        return collapse_pyramid(fused).clamp(0.0, 1.0)
    raise ValueError(f"unknown fusion method {method!r}; choose from {', '.join(BASELINES)}")


def fuse_baseline(vis: Tensor, ir: Tensor, method: str, color: str = "ycbcr") -> Tensor:
    """vis (B, 3, H, W), ir (B, 1, H, W) in [0, 1] -> fused (B, 3, H, W), or (B, 1, H, W)
    for ``color="gray"``."""
    lum = luminance(vis, color)
    return restore_color(fuse_luminance(ir, lum, method), vis, color)
