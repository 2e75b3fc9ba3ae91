"""Bilinear upsampling of several pyramid levels to one frame and their sum, in one pass.

Bilinear resizing is separable and linear: a (h, w) map resized to (H, W) is
``A_y @ X @ A_x^T`` with fixed (H, h) and (W, w) interpolation matrices of at most two
non-zeros per row. The sum over levels is then one matrix product: each level is resized
along its width first (cheap, at its own height), the results are stacked along the
height, and one (H, sum of h) matrix, the levels' ``A_y`` side by side, resizes and sums
them at once. Working on (B, h, w, C) views of channels-last maps, neither the input nor
the (B, C, H, W) channels-last result is copied into another layout, and in bf16 the
matrices are exact for strides up to 64 (their weights are multiples of 1/128).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor


def source_position(index: float, in_size: int, out_size: int, align_corners: bool) -> float:
    """Where output pixel ``index`` of a bilinear resize ``in_size -> out_size`` reads the
    input (``torch.nn.functional.interpolate``'s rule: pixel centres, clamped at 0, or
    aligned corners)."""
    if align_corners:
        return index * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    return max((index + 0.5) * in_size / out_size - 0.5, 0.0)


@functools.lru_cache(maxsize=64)
def bilinear_matrix(
    in_size: int, out_size: int, align_corners: bool, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """The (out_size, in_size) matrix of a bilinear resize along one axis."""
    # Built outside inference mode: a matrix first cached during evaluation is later
    # saved for backward by training steps.
    with torch.inference_mode(False), torch.no_grad():
        src = torch.tensor(
            [source_position(i, in_size, out_size, align_corners) for i in range(out_size)],
            dtype=torch.float64,
        )
        low = src.floor().clamp(max=in_size - 1)
        frac = src - low
        high = (low + 1).clamp(max=in_size - 1)
        rows = torch.arange(out_size)
        matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
        matrix.index_put_((rows, low.long()), 1 - frac, accumulate=True)
        matrix.index_put_((rows, high.long()), frac, accumulate=True)
        return matrix.to(device=device, dtype=dtype)


def read_span(start: int, stop: int, in_size: int, out_size: int, align_corners: bool):
    """The input rows ``[lo, hi)`` that output rows ``[start, stop)`` read, one more on each
    side (so that float rounding of a position on a pixel centre cannot drop a weight)."""
    first = math.floor(source_position(start, in_size, out_size, align_corners))
    last = math.floor(source_position(stop - 1, in_size, out_size, align_corners))
    return max(first - 1, 0), min(last + 3, in_size)


def upsample_sum(
    maps: Sequence[Tensor],
    size: tuple[int, int],
    window: tuple[int, int, int, int] | None = None,
    align_corners: bool = False,
    bias: Tensor | None = None,
) -> Tensor:
    """``sum(F.interpolate(x, size, mode="bilinear") for x in maps) + bias`` cropped to
    ``window`` (top, left, bottom, right), computed only over the window.

    maps: (B, C, h_l, w_l) each, any sizes; bias: (C,). Returns (B, C, bottom - top,
    right - left), channels-last strided (a permuted view of one contiguous product).
    """
    height, width = size
    top, left, bottom, right = window if window is not None else (0, 0, height, width)
    batch, channels = maps[0].shape[:2]
    row_weights, parts = [], []
    for x in maps:
        h, w = x.shape[-2:]
        r0, r1 = read_span(top, bottom, h, height, align_corners)
        c0, c1 = read_span(left, right, w, width, align_corners)
        across = bilinear_matrix(w, width, align_corners, x.device, x.dtype)[left:right, c0:c1]
        # (Wwin, w') @ (B, h', w', C) -> (B, h', Wwin, C): every row resized along its width
        parts.append(torch.matmul(across, x[:, :, r0:r1, c0:c1].permute(0, 2, 3, 1)))
        row_weights.append((h, r0, r1))
    dtype = parts[0].dtype
    rows = [
        bilinear_matrix(h, height, align_corners, maps[0].device, dtype)[top:bottom, r0:r1]
        for h, r0, r1 in row_weights
    ]
    if bias is not None:  # one more input row, constant per channel, weighted 1 everywhere
        rows.append(rows[0].new_ones(bottom - top, 1))
        parts.append(bias.to(dtype).view(1, 1, 1, channels).expand(batch, 1, right - left, -1))
    stacked = torch.cat(parts, 1).flatten(2)  # (B, sum h', Wwin * C)
    out = torch.matmul(torch.cat(rows, 1), stacked)  # (B, Hwin, Wwin * C)
    return out.view(batch, bottom - top, right - left, channels).permute(0, 3, 1, 2)


__all__ = ["bilinear_matrix", "read_span", "source_position", "upsample_sum"]
