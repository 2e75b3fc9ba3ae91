"""Axis-aligned RoIAlign (torchvision's ``roi_align(aligned=True)``) with a faster backward on
the CPU, and the sampling rule it shares with the gather pooling of the detection head.

torchvision's CPU backward recomputes every sample's bilinear weights for every channel and
adds them one value at a time; written as the transpose of the pooling's sparse linear map
(each bilinear sample a fixed combination of at most 4 feature pixels), the same gradient
is one sparse-dense product over channel-last rows, several times faster at the demo's
sizes (``benchmarks/RESULTS.md``). On CUDA torchvision's own kernels are used both ways.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align

# False: torchvision's backward on the CPU too (``benchmarks/train_step.py --before-after``
# times both). The two backwards differ only in float32 summation order.
SPARSE_CPU_BACKWARD = True


def aligned_sample_points(boxes: Tensor, output_size: int, ratio: int) -> tuple[Tensor, Tensor]:
    """torchvision's aligned RoIAlign samples of (K, 4) pixel xyxy boxes: sample q of bin j
    at ``(j + (q + 0.5) / ratio)`` bins. Returns x (K, 1, S * ratio) and y (K, S * ratio, 1)."""
    steps = output_size * ratio
    frac = (torch.arange(steps, device=boxes.device, dtype=boxes.dtype) + 0.5) / steps
    x = boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * frac
    y = boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * frac
    return x[:, None, :], y[:, :, None]


def bilinear_neighbours(pos: Tensor, size: Tensor | float) -> tuple[tuple[Tensor, Tensor], ...]:
    """The two pixels (index, bilinear weight) around each position >= 0 along one axis of
    a map ``size`` pixels long; past the last pixel centre both are the last pixel."""
    low = pos.floor()
    at_end = low >= size - 1
    low = torch.where(at_end, size - 1, low)
    frac = torch.where(at_end, torch.zeros_like(pos), pos - low)
    high = torch.where(at_end, low, low + 1)
    return (low.long(), 1 - frac), (high.long(), frac)


def bilinear_taps(fx: Tensor, fy: Tensor, height, width):
    """The four ``(row, col, weight)`` pixels that torchvision's aligned bilinear sampling
    reads at feature coordinates (fx, fy) of a ``height`` x ``width`` map (numbers, or
    tensors that broadcast): a sample more than one pixel outside the map reads 0, one
    closer reads the border."""
    inside = ((fx >= -1) & (fx <= width) & (fy >= -1) & (fy <= height)).to(fx.dtype)
    for row, wy in bilinear_neighbours(fy.clamp(min=0), height):
        for col, wx in bilinear_neighbours(fx.clamp(min=0), width):
            yield row, col, wy * wx * inside


def sampling_matrix(
    rois: Tensor, shape: torch.Size, output_size: int, spatial_scale: float, ratio: int
) -> Tensor:
    """The sparse (B * H * W, K * (S * ratio) ** 2) map of aligned RoIAlign's bilinear
    samples: column ``(k * S * ratio + i) * S * ratio + j`` (sample row i, column j of roi k)
    holds the weights of the feature pixels (row ``(b * H + y) * W + x``) it reads; a bin
    is the mean of its ``ratio ** 2`` samples. rois (K, 5) [batch index, x1, y1, x2, y2].

    Each column has its own four entries (two coincide only where the sample is clamped to
    the last pixel, and then one of them weighs exactly 0), so the product sums every
    pixel's samples in column order: the same sums, whatever other images share the batch.
    """
    batch, _, height, width = shape
    k, steps = rois.shape[0], output_size * ratio
    x, y = aligned_sample_points(rois[:, 1:].float(), output_size, ratio)
    fx, fy = x * spatial_scale - 0.5, y * spatial_scale - 0.5
    image = rois[:, 0].long()[:, None, None]
    columns = torch.arange(k * steps * steps, device=rois.device).view(k, steps, steps)
    pixels, weights = [], []
    for row, col, weight in bilinear_taps(fx, fy, float(height), float(width)):
        pixels.append(((image * height + row) * width + col).expand_as(columns))
        weights.append(weight.expand_as(columns))
    indices = torch.stack([torch.stack(pixels).reshape(-1), columns.reshape(-1).repeat(4)])
    return torch.sparse_coo_tensor(
        indices,
        torch.stack(weights).reshape(-1),
        (batch * height * width, k * steps * steps),
        check_invariants=False,
    )


class _RoIAlignSparseGrad(torch.autograd.Function):
    """torchvision's RoIAlign forward; the feature gradient as ``sampling_matrix @ grad``
    with each bin's gradient shared out equally to its samples."""

    @staticmethod
    def forward(ctx, feature, rois, output_size, spatial_scale, ratio):
        ctx.save_for_backward(rois)
        ctx.shape, ctx.args = feature.shape, (output_size, spatial_scale, ratio)
        return tv_roi_align(feature, rois, output_size, spatial_scale, ratio, aligned=True)

    @staticmethod
    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        batch, channels, height, width = ctx.shape
        ratio = ctx.args[2]
        matrix = sampling_matrix(rois, ctx.shape, *ctx.args).to(grad.dtype)
        per_sample = (grad / ratio**2).permute(0, 2, 3, 1)  # (K, S, S, C)
        per_sample = per_sample.repeat_interleave(ratio, 1).repeat_interleave(ratio, 2)
        pixels = torch.sparse.mm(matrix, per_sample.reshape(-1, channels))  # (B * H * W, C)
        feature_grad = pixels.view(batch, height, width, channels).permute(0, 3, 1, 2)
        return feature_grad, None, None, None, None


def roi_align(
    feature: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int
) -> Tensor:
    """``torchvision.ops.roi_align(..., aligned=True)`` of (B, C, H, W) ``feature`` over
    (K, 5) ``rois``, with the sparse backward on the CPU. Returns (K, C, S, S)."""
    sparse = SPARSE_CPU_BACKWARD and not feature.is_cuda
    if not (sparse and torch.is_grad_enabled() and feature.requires_grad):
        return tv_roi_align(feature, rois, output_size, spatial_scale, sampling_ratio, aligned=True)
    if sampling_ratio < 1:
        raise ValueError(
            f"sampling_ratio must be >= 1 (no adaptive sampling), got {sampling_ratio}"
        )
    return _RoIAlignSparseGrad.apply(feature, rois, output_size, spatial_scale, sampling_ratio)


__all__ = [
    "aligned_sample_points",
    "bilinear_neighbours",
    "bilinear_taps",
    "roi_align",
    "sampling_matrix",
]
