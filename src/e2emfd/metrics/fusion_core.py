"""Building blocks shared by both fusion-metric conventions.

Every function works on batches of same-size greyscale images ``(B, H, W)`` in float64 on
any device and reduces over the last two dimensions, returning ``(B,)``. Nothing here knows
about a convention; :mod:`e2emfd.metrics.fusion_python` and
:mod:`e2emfd.metrics.fusion_matlab` combine these pieces with each convention's scaling and
quirks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

LN2 = math.log(2.0)


def image_mean(x: Tensor) -> Tensor:
    """Mean over the last two dimensions: ``(B, H, W) -> (B,)``."""
    return x.mean(dim=(-2, -1))


def gaussian_taps(size: int, sigma: float) -> list[float]:
    """1-D factor of MATLAB ``fspecial('gaussian', size, sigma)``.

    ``fspecial`` zeroes taps below ``eps * max`` of the 2-D window and normalises it to sum
    1. For the windows used here no tap is that small, so the 2-D window is exactly the
    outer product of this normalised 1-D factor (mathematically; in floating point the
    separable filter differs from the 2-D one by a few ulps).
    """
    half = (size - 1) / 2.0
    taps = [math.exp(-((i - half) ** 2) / (2.0 * sigma * sigma)) for i in range(size)]
    if taps[0] * taps[0] < torch.finfo(torch.float64).eps:
        raise ValueError(f"gaussian window {size}x{size}, sigma {sigma} is not separable")
    total = math.fsum(taps)
    return [t / total for t in taps]


def correlate_valid(x: Tensor, taps: Sequence[float], dim: int, stride: int = 1) -> Tensor:
    """'valid' 1-D correlation of ``x`` with ``taps`` along ``dim``, keeping every ``stride``-th
    output (the first one included).

    Shape along ``dim``: ``n -> ceil((n - len(taps) + 1) / stride)``. Computed as a sum of
    shifted slices, which is exact summation in tap order and several times faster than
    ``conv2d`` in float64 on CPU. Strided output skips the work for discarded samples.
    """
    n = len(taps)
    valid = x.shape[dim] - n + 1
    if valid < 1:
        raise ValueError(f"image side {x.shape[dim]} is smaller than a {n}-tap window")
    count = (valid - 1) // stride + 1
    span = (count - 1) * stride + 1
    index: list[slice] = [slice(None)] * x.dim()

    def shifted(k: int) -> Tensor:
        index[dim] = slice(k, k + span, stride)
        return x[tuple(index)]

    acc = shifted(0) * taps[0]
    for k in range(1, n):
        acc.add_(shifted(k), alpha=taps[k])
    return acc


def filter2_valid(x: Tensor, taps: Sequence[float], stride: int = 1) -> Tensor:
    """Separable 2-D 'valid' filtering of ``(..., H, W)`` with the window ``outer(taps, taps)``
    (symmetric windows only, so correlation and convolution coincide), optionally keeping
    every ``stride``-th row and column. ``(..., H, W) -> (..., H', W')``."""
    return correlate_valid(correlate_valid(x, taps, -1, stride), taps, -2, stride)


def entropy_from_counts(counts: Tensor) -> Tensor:
    """Shannon entropy in nats of histograms ``(B, K) -> (B,)`` (empty bins contribute 0)."""
    p = counts / counts.sum(dim=-1, keepdim=True)
    return -torch.special.xlogy(p, p).sum(dim=-1)


def grey_histogram(levels: Tensor, bins: int = 256) -> Tensor:
    """Per-image histogram of integer grey levels ``(B, H, W) -> (B, bins)`` (float64)."""
    b = levels.shape[0]
    offset = torch.arange(b, device=levels.device).view(b, 1) * bins
    flat = (levels.reshape(b, -1) + offset).reshape(-1)
    return torch.bincount(flat, minlength=b * bins).view(b, bins).double()


def joint_histogram(x: Tensor, y: Tensor, bins: int = 256) -> Tensor:
    """Per-image joint histogram of integer grey levels ``(B, H, W) x2 -> (B, bins * bins)``."""
    b = x.shape[0]
    offset = torch.arange(b, device=x.device).view(b, 1) * (bins * bins)
    flat = (x.reshape(b, -1) * bins + y.reshape(b, -1) + offset).reshape(-1)
    return torch.bincount(flat, minlength=b * bins * bins).view(b, bins * bins).double()


def to_levels(x: Tensor) -> Tensor:
    """Integer grey levels (int64) of a float image: rounded half to even, clipped to 0..255,
    as ``np.uint8(np.round(x))`` does for values in range."""
    return torch.round(x).clamp_(0, 255).long()


def entropy_bits(x: Tensor) -> Tensor:
    """EN: entropy in bits of the 256-bin histogram of the grey levels. ``(B, H, W) -> (B,)``."""
    return entropy_from_counts(grey_histogram(to_levels(x))) / LN2


def pearson(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation over all pixels of each image (``corr2``). ``(B, H, W) -> (B,)``."""
    xc = x - image_mean(x)[:, None, None]
    yc = y - image_mean(y)[:, None, None]
    num = (xc * yc).sum(dim=(-2, -1))
    return num / torch.sqrt((xc * xc).sum(dim=(-2, -1)) * (yc * yc).sum(dim=(-2, -1)))


def spatial_frequency(x: Tensor) -> Tensor:
    """SF = sqrt(mean(row diff^2) + mean(column diff^2)) in the units of ``x``. ``(B,)``."""
    dy = x[:, 1:, :] - x[:, :-1, :]
    dx = x[:, :, 1:] - x[:, :, :-1]
    return torch.sqrt(image_mean(dy * dy) + image_mean(dx * dx))


def gradient_magnitude_sum(x: Tensor) -> Tensor:
    """Sum over all pixels of sqrt((gx^2 + gy^2) / 2), where gx, gy are MATLAB ``gradient``
    (central differences inside, one-sided differences on the first/last row and column).
    Needs H, W >= 2. ``(B, H, W) -> (B,)``."""
    if x.shape[-1] < 2 or x.shape[-2] < 2:
        raise ValueError(f"AG needs images of at least 2x2 pixels, got {tuple(x.shape[-2:])}")
    gx = torch.empty_like(x)
    gx[:, :, 1:-1] = (x[:, :, 2:] - x[:, :, :-2]) / 2
    gx[:, :, 0] = x[:, :, 1] - x[:, :, 0]
    gx[:, :, -1] = x[:, :, -1] - x[:, :, -2]
    gy = torch.empty_like(x)
    gy[:, 1:-1, :] = (x[:, 2:, :] - x[:, :-2, :]) / 2
    gy[:, 0, :] = x[:, 1, :] - x[:, 0, :]
    gy[:, -1, :] = x[:, -1, :] - x[:, -2, :]
    return torch.sqrt((gx * gx + gy * gy) / 2).sum(dim=(-2, -1))


def mse_pair(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """(mean((F - A)^2) + mean((F - B)^2)) / 2 in the units of the inputs. ``(B,)``."""
    da = f - a
    db = f - b
    return (image_mean(da * da) + image_mean(db * db)) / 2


def scd(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Sum of the correlations of differences: corr(F - B, A) + corr(F - A, B). ``(B,)``."""
    return pearson(f - b, a) + pearson(f - a, b)


# Sobel kernels of Xydeas-Petrovic Qabf, indexed [row p][column q] like the MATLAB source.
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))


def conv2_same(x: Tensor, kernel: Sequence[Sequence[float]]) -> Tensor:
    """MATLAB ``conv2(x, kernel, 'same')`` for a 3x3 kernel with zero padding, summed in
    MATLAB's order.

    ``out[i, j] = sum_{p,q} k[p, q] * x[i + 1 - p, j + 1 - q]`` accumulated from 0 with ``p``
    varying fastest (the kernel in column-major order). The order matters for Qabf, whose
    exact-equality branch compares gradients of 0-1 images bit for bit. Zero taps are
    skipped: adding 0 leaves the running sum unchanged. ``(B, H, W) -> (B, H, W)``.
    """
    h, w = x.shape[-2:]
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    acc = torch.zeros_like(x)
    for q in range(3):
        for p in range(3):
            k = kernel[p][q]
            if k != 0.0:
                # k is +-1 or +-2, so k * x is exact and a fused multiply-add cannot differ.
                acc = acc + k * xp[:, 2 - p : 2 - p + h, 2 - q : 2 - q + w]
    return acc


def qabf(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Xydeas-Petrovic edge-preservation Qabf on images in whatever scale the caller chose.

    Sobel responses Sx, Sy (``conv2_same``), strength g = sqrt(Sx^2 + Sy^2), orientation
    atan(Sy / Sx) (pi/2 where Sx == 0). Relative strength G_XF = min(gX, gF) / max(gX, gF);
    where gX == gF exactly, both reference implementations set G_XF = gF instead of 1 (kept
    on purpose: it is part of both conventions' values). A_XF = 1 - |aX - aF| / (pi/2).
    Q_XF = 0.9994 / (1 + exp(-15 (G - 0.5))) * 0.9879 / (1 + exp(-22 (A - 0.8))), and
    Qabf = sum(Q_AF gA + Q_BF gB) / sum(gA + gB). ``(B, H, W) x3 -> (B,)``.
    """

    def edges(x: Tensor) -> tuple[Tensor, Tensor]:
        sx = conv2_same(x, SOBEL_X)
        sy = conv2_same(x, SOBEL_Y)
        strength = torch.sqrt(sx * sx + sy * sy)
        angle = torch.where(sx == 0, math.pi / 2, torch.atan(sy / sx))
        return strength, angle

    g_f, a_f = edges(f)

    def preservation(g_x: Tensor, a_x: Tensor) -> Tensor:
        ratio = torch.where(g_x > g_f, g_f / g_x, g_x / g_f)
        rel_g = torch.where(g_x == g_f, g_f, ratio)
        rel_a = 1 - torch.abs(a_x - a_f) / (math.pi / 2)
        q_g = 0.9994 / (1 + torch.exp(-15 * (rel_g - 0.5)))
        q_a = 0.9879 / (1 + torch.exp(-22 * (rel_a - 0.8)))
        return q_g * q_a

    g_a, a_a = edges(a)
    num = (preservation(g_a, a_a) * g_a).sum(dim=(-2, -1))
    den = g_a.sum(dim=(-2, -1))
    del a_a
    g_b, a_b = edges(b)
    num = num + (preservation(g_b, a_b) * g_b).sum(dim=(-2, -1))
    den = den + g_b.sum(dim=(-2, -1))
    return num / den
