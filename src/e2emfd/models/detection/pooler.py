"""Multi-level RoIAlign: each box pooled from the pyramid level that suits its size."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from e2emfd.boxes import BoxCodec


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


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign (aligned, fixed sampling ratio) of B x N boxes over a feature pyramid, with
    the box kind's single-level RoIAlign (torchvision's for axis-aligned boxes, bilinear
    sampling in the box's frame for rotated ones).

    Two equivalent strategies: on CUDA at inference every level is pooled for all boxes and
    the right one is selected per box (a few more bilinear samples, but no data-dependent
    shapes, so no host synchronisation: the forward stays asynchronous and capturable).
    Otherwise (CPU, or training, which synchronises in the matcher anyway) each level pools
    only its own boxes, which is about 4x less RoIAlign work forward and backward.
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

    def forward(self, features: list[Tensor], boxes: Tensor) -> Tensor:
        """features: one (B, C, H_l, W_l) map per stride; boxes: (B, N, dim) pixels.

        Returns (B * N, C, S, S), image-major (box n of image b at row b * N + n).
        """
        b, n = boxes.shape[:2]
        flat = boxes.reshape(b * n, self.codec.dim).float()
        # expand, not repeat_interleave: its int form may build the counts on the host,
        # which a CUDA graph capture does not allow
        batch_idx = torch.arange(b, device=boxes.device, dtype=flat.dtype)[:, None].expand(b, n)
        rois = torch.cat([batch_idx.reshape(-1, 1), flat], dim=1)
        levels = assign_levels(
            self.codec.area(flat), self.strides, self.canonical_size, self.canonical_level
        )
        if boxes.is_cuda and not torch.is_grad_enabled():
            return self.pool_all_levels(features, rois, levels)
        return self.pool_own_level(features, rois, levels)

    def roi_align(self, feature: Tensor, rois: Tensor, stride: int) -> Tensor:
        """One level's RoIAlign of (K, 1 + dim) rois, in the feature map's dtype."""
        pooled = self.codec.roi_align(
            feature, rois, self.output_size, 1.0 / stride, self.sampling_ratio
        )
        return pooled.to(feature.dtype)

    def pool_all_levels(self, features: list[Tensor], rois: Tensor, levels: Tensor) -> Tensor:
        """Fixed shapes: every box at every level, each keeping its own level's result."""
        out: Tensor | None = None
        for i, (feature, stride) in enumerate(zip(features, self.strides)):
            pooled = self.roi_align(feature, rois, stride)
            # boxes of level 0 keep the first map's values; later levels overwrite theirs
            out = (
                pooled
                if out is None
                else torch.where((levels == i)[:, None, None, None], pooled, out)
            )
        assert out is not None
        return out

    def pool_own_level(self, features: list[Tensor], rois: Tensor, levels: Tensor) -> Tensor:
        """Each box pooled once, at its own level."""
        size = self.output_size
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], size, size))
        for i, (feature, stride) in enumerate(zip(features, self.strides)):
            index = torch.nonzero(levels == i).squeeze(1)
            if index.numel():
                out = out.index_copy(0, index, self.roi_align(feature, rois[index], stride))
        return out
