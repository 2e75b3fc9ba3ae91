"""Multi-level RoIAlign: each box pooled from the pyramid level that suits its size."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from e2emfd.boxes import BoxCodec
from e2emfd.ops.roi_align import bilinear_taps


def assign_levels(
    areas: Tensor,
    strides: tuple[int, ...],
    canonical_size: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    """Index into ``strides`` of the level each box of the given areas (...,) is pooled from.

    FPN's rule (Lin et al. 2017, eq. 1) on the side ``sqrt(area)``: a box of side
    ``canonical_size`` goes to stride ``2 ** canonical_level``, one level finer per halving
    of the side. Rotated boxes use their own area, the rule is the same.
    """
    side = areas.clamp(min=0).sqrt()
    level = torch.floor(canonical_level + torch.log2(side / canonical_size + 1e-8))
    first = math.log2(strides[0])
    return (level - first).clamp(0, len(strides) - 1).long()


class FlatPyramid(NamedTuple):
    """A pyramid laid out for :meth:`MultiLevelRoIAlign.pool_gather`: every level's pixels
    channel-last in one (B, sum of H_l * W_l, C) tensor, and per level (height, width,
    offset of its first pixel)."""

    pixels: Tensor
    shapes: list[tuple[int, int, int]]


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign (aligned, fixed sampling ratio) of B x N boxes over a feature pyramid, with
    the box kind's sample points (a grid along the box's own axes for rotated boxes).

    Two strategies with the same result. On CUDA at inference every box samples its own
    level in one fixed-shape gather from a channel-last copy of the whole pyramid
    (:meth:`prepare` makes it once per cascade): no data-dependent shapes, so no host
    synchronisation (the forward stays asynchronous and capturable), and each box is
    pooled once. Otherwise (CPU, or training, which synchronises in the matcher anyway)
    each level pools only its own boxes with the box kind's RoIAlign (torchvision's for
    axis-aligned boxes), whose backward training needs.
    """

    def __init__(
        self,
        codec: BoxCodec,
        strides: tuple[int, ...] = (4, 8, 16, 32),
        output_size: int = 7,
        sampling_ratio: int = 2,
        canonical_size: float = 224.0,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        for a, b in zip(strides[:-1], strides[1:]):
            if b != 2 * a:
                raise ValueError(f"strides must double from level to level, got {strides}")
        self.codec = codec
        self.strides = tuple(strides)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level

    def prepare(self, features: list[Tensor]) -> list[Tensor] | FlatPyramid:
        """The pyramid as :meth:`forward` reads it fastest: a :class:`FlatPyramid` on CUDA
        at inference (it gathers), else the list as it is. Call once per cascade."""
        if not (features[0].is_cuda and not torch.is_grad_enabled()):
            return features
        return flatten_pyramid(features)

    def forward(self, features: list[Tensor] | FlatPyramid, boxes: Tensor) -> Tensor:
        """features: one (B, C, H_l, W_l) map per stride, or :meth:`prepare`'s output;
        boxes: (B, N, dim) pixels.

        Returns (B * N, C, S, S), image-major (box n of image b at row b * N + n).
        """
        b, n = boxes.shape[:2]
        flat = boxes.reshape(b * n, self.codec.dim).float()
        levels = assign_levels(
            self.codec.area(flat), self.strides, self.canonical_size, self.canonical_level
        )
        if isinstance(features, FlatPyramid):
            return self.pool_gather(features, flat, levels, n)
        # expand, not repeat_interleave: its int form may build the counts on the host
        batch_idx = torch.arange(b, device=boxes.device, dtype=flat.dtype)[:, None].expand(b, n)
        rois = torch.cat([batch_idx.reshape(-1, 1), flat], dim=1)
        return self.pool_own_level(features, rois, levels)

    def roi_align(self, feature: Tensor, rois: Tensor, stride: int) -> Tensor:
        """One level's RoIAlign of (K, 1 + dim) rois, in the feature map's dtype."""
        pooled = self.codec.roi_align(
            feature, rois, self.output_size, 1.0 / stride, self.sampling_ratio
        )
        return pooled.to(feature.dtype)

    def pool_own_level(self, features: list[Tensor], rois: Tensor, levels: Tensor) -> Tensor:
        """Each box pooled once, at its own level, one RoIAlign call per level."""
        size = self.output_size
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], size, size))
        for i, (feature, stride) in enumerate(zip(features, self.strides)):
            index = torch.nonzero(levels == i).squeeze(1)
            if index.numel():
                out = out.index_copy(0, index, self.roi_align(feature, rois[index], stride))
        return out

    def pool_gather(
        self, pyramid: FlatPyramid, boxes: Tensor, levels: Tensor, per_image: int
    ) -> Tensor:
        """Every box (K, dim) bilinearly sampled at its own level in one gather, with
        torchvision's aligned RoIAlign rule: feature pixel i is centred at input (i + 0.5) *
        stride; a sample more than one pixel outside the map reads 0, one closer reads the
        border. Boxes are image-major, ``per_image`` per image."""
        s, g = self.output_size, self.sampling_ratio
        k, device, dtype = boxes.shape[0], boxes.device, boxes.dtype
        # per box: its level's 1 / stride, height, width and first pixel in the flat pyramid
        table = torch.tensor(
            [(1.0 / st, h, w, off) for st, (h, w, off) in zip(self.strides, pyramid.shapes)],
            device=device,
            dtype=torch.float64,
        )[levels]
        scale, height, width = (table[:, i, None, None].to(dtype) for i in range(3))
        first = table[:, 3, None, None].long()
        x, y = self.codec.sample_points(boxes, s, g)
        fx, fy = x * scale - 0.5, y * scale - 0.5
        image = (torch.arange(k, device=device) // per_image)[:, None]
        out = None
        for row, col, weight in bilinear_taps(fx, fy, height, width):
            index = (first + row * width.long() + col).expand(k, s * g, s * g)
            term = pyramid.pixels[image, index.reshape(k, -1)]
            term = term * weight.expand(k, s * g, s * g).reshape(k, -1, 1).to(term.dtype)
            out = term if out is None else out + term
        channels = pyramid.pixels.shape[-1]
        # the mean of each bin's g x g samples, channel-first like torchvision's output
        return out.view(k, s, g, s, g, channels).mean((2, 4)).permute(0, 3, 1, 2)


def flatten_pyramid(features: list[Tensor]) -> FlatPyramid:
    """(B, C, H_l, W_l) maps -> one channel-last (B, sum H_l W_l, C) tensor and the levels'
    (height, width, offset)."""
    shapes, offset = [], 0
    for f in features:
        shapes.append((f.shape[-2], f.shape[-1], offset))
        offset += f.shape[-2] * f.shape[-1]
    return FlatPyramid(torch.cat([f.flatten(2).transpose(1, 2) for f in features], 1), shapes)
