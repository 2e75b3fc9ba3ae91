"""ORPPT, the Object-Region-Pixel Phylogenetic Tree fusion head of E2E-MFD.

A pixel branch (PFMM) reads the raw images at full resolution; K region branches (RFRM)
read the shared pyramid P2..P(K+1); a gate lets the regions modulate the pixels, and a
decoder predicts two per-pixel weight maps. The fused luminance is
``F = w_ir * IR + w_vis * Y_vis``, clamped to [0, 1].

Unlike the public code, every PFMM weight is a trained parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from e2emfd.config import FusionConfig
from e2emfd.models.color import luminance
from e2emfd.ops.upsample import read_span, upsample_sum


def make_norm(kind: str, channels: int) -> nn.Module:
    """``bn``: BatchNorm (the paper's); ``gn``: GroupNorm, which does not depend on the
    batch, so a multi-process CPU run (no SyncBatchNorm there) matches one process."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
    raise ValueError(f"model.fusion.norm must be bn or gn, got {kind!r}")


def conv3x3_relu(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)
    )


class FusionBlock(nn.Module):
    """Three conv3x3+ReLU, then two parallel conv3x3+ReLU heads, concatenated:
    (B, cin, H, W) -> (B, 2 * width, H, W).

    The two heads are stored as one convolution with 2 * width outputs: the same function
    and parameters as two convolutions followed by a concatenation, in one kernel call.
    """

    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv3x3_relu(cin, width), conv3x3_relu(width, width), conv3x3_relu(width, width)
        )
        self.heads = conv3x3_relu(width, 2 * width)

    def forward(self, x: Tensor) -> Tensor:
        return self.heads(self.body(x))


class PixelBranch(nn.Module):
    """PFMM: two fusion blocks at stride 1 on x0 = [IR, RGB] (B, 4, H, W) -> (B, 4w, H, W)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.block1 = FusionBlock(4, width)
        self.block2 = FusionBlock(2 * width, 2 * width)
        self.out_channels = 4 * width

    def forward(self, x0: Tensor) -> Tensor:
        return self.block2(self.block1(x0))


class SelectiveKernelAttention(nn.Module):
    """M attention maps from a selective-kernel unit over one pyramid level.

    Two conv3x3 paths (dilation 1 and 2, BN + ReLU) each predict M maps; global pooling of
    their sum -> FC M->32 -> ReLU -> FC -> a softmax over the paths per map; the weighted
    sum of the paths is the M maps. (B, C, h, w) -> (B, M, h, w).

    ``softmax="maps"`` is the public code's variant: the FC's outputs are laid out (map,
    path) and the softmax runs over the maps for each path (its ``view(B, -1, paths)`` then
    ``softmax(dim=1)``), so the paths' weights of one map need not sum to one.
    """

    def __init__(
        self,
        channels: int,
        maps: int = 2,
        reduction: int = 32,
        paths: int = 2,
        norm: str = "bn",
        softmax: str = "paths",
    ) -> None:
        super().__init__()
        self.paths = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, maps, 3, padding=d, dilation=d, bias=False),
                make_norm(norm, maps),
                nn.ReLU(inplace=True),
            )
            for d in range(1, paths + 1)
        )
        self.squeeze = nn.Sequential(nn.Linear(maps, reduction), nn.ReLU(inplace=True))
        self.select = nn.Linear(reduction, maps * paths)
        self.maps = maps
        if softmax not in ("paths", "maps"):
            raise ValueError(f"model.fusion.sk_softmax must be paths or maps, got {softmax!r}")
        self.softmax = softmax

    def forward(self, feat: Tensor) -> Tensor:
        outs = torch.stack([path(feat) for path in self.paths], 1)  # (B, P, M, h, w)
        z = self.squeeze(outs.sum(1).mean((2, 3)))  # (B, reduction)
        if self.softmax == "maps":
            logits = self.select(z).view(feat.shape[0], self.maps, len(self.paths))
            weights = logits.softmax(1).transpose(1, 2)  # (B, P, M)
        else:
            weights = self.select(z).view(feat.shape[0], len(self.paths), self.maps).softmax(1)
        return (outs * weights[..., None, None]).sum(1)


class RegionBranch(nn.Module):
    """RFRM: features re-weighted by each attention map, concatenated:
    (B, C, h, w) -> (B, M * C, h, w)."""

    def __init__(
        self, channels: int, maps: int = 2, norm: str = "bn", softmax: str = "paths"
    ) -> None:
        super().__init__()
        self.attention = SelectiveKernelAttention(channels, maps, norm=norm, softmax=softmax)

    def forward(self, feat: Tensor) -> Tensor:
        attn = self.attention(feat)
        return torch.cat([feat * attn[:, m : m + 1] for m in range(attn.shape[1])], 1)


def stack_channels(tensors: list[Tensor], like: Tensor) -> Tensor:
    """``torch.cat(tensors, 1)`` laid out like the conv weight ``like``: channels-last
    when the convolutions run channels-last, so the first one needs no layout copy."""
    if like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        return torch.cat([t.permute(0, 2, 3, 1) for t in tensors], 3).permute(0, 3, 1, 2)
    return torch.cat(tensors, 1)


def conv1x1_bn_relu(cin: int, cout: int, norm: str = "bn") -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 1, bias=False), make_norm(norm, cout), nn.ReLU(inplace=True)
    )


class ORPPTHead(nn.Module):
    """Predicts the fused luminance from the shared pyramid and the raw images.

    ``forward(features, vis, ir)``: features ``p2``.. (B, C, H/s, W/s), vis (B, 3, H, W) and
    ir (B, 1, H, W) in [0, 1]. Returns ``fused`` (B, 1, H, W) in [0, 1], the weight maps
    ``w_ir`` and ``w_vis`` (B, 1, H, W), and ``luminance`` (B, 1, H, W), the visible
    channel that was fused.
    """

    level_names = ("p2", "p3", "p4", "p5")

    def __init__(self, cfg: FusionConfig, in_channels: int = 256) -> None:
        super().__init__()
        if not 0 <= cfg.num_regions <= 4:
            raise ValueError(f"model.fusion.num_regions must be in 0..4, got {cfg.num_regions}")
        self.color = cfg.color
        self.levels = self.level_names[: cfg.num_regions]
        hidden = cfg.hidden
        self.pixel = PixelBranch(cfg.pixel_channels)
        self.regions = nn.ModuleList(
            RegionBranch(in_channels, cfg.region_paths, cfg.norm, cfg.sk_softmax)
            for _ in self.levels
        )
        self.align_corners = cfg.region_align_corners
        self.upsampling = cfg.region_upsampling
        # The 1x1 reduction of the summed, upsampled branch outputs is linear, and so is
        # bilinear upsampling: reducing each branch at its own resolution first and then
        # upsampling gives the same R with 4x fewer full-resolution channels.
        self.region_reduce = nn.Conv2d(cfg.region_paths * in_channels, hidden, 1, bias=False)
        self.region_bias = nn.Parameter(torch.zeros(hidden))
        self.pixel_proj = conv1x1_bn_relu(self.pixel.out_channels, hidden, cfg.norm)
        self.gate = conv1x1_bn_relu(hidden, hidden, cfg.norm)
        widths = [hidden, hidden // 2, hidden // 2, hidden // 2, hidden // 4]
        self.decoder = nn.Sequential(
            *(conv3x3_relu(a, b) for a, b in zip(widths[:-1], widths[1:])),
            nn.Conv2d(widths[-1], 2, 1),
        )

    def regions_at(
        self,
        features: dict[str, Tensor],
        size: tuple[int, int],
        window: tuple[int, int, int, int] | None = None,
    ) -> Tensor | None:
        """R (B, hidden, H, W): the region branches, reduced, upsampled and summed; with
        ``window`` (top, left, bottom, right) only that part of the frame's R,
        (B, hidden, bottom - top, right - left)."""
        if not self.levels:
            return None
        reduced = [
            self.region_reduce(branch(features[name]))
            for name, branch in zip(self.levels, self.regions)
        ]
        if self.upsampling == "matmul":
            total = upsample_sum(reduced, size, window, self.align_corners, self.region_bias)
            return torch.relu_(total)  # the product's own output: nothing else reads it
        total = sum(self.upsample(x, size, window) for x in reduced)
        return F.relu(total + self.region_bias.view(1, -1, 1, 1))

    def upsample(
        self, x: Tensor, size: tuple[int, int], window: tuple[int, int, int, int] | None
    ) -> Tensor:
        """Bilinear upsampling of ``x`` to the frame ``size``, or to its ``window``.

        Where the frame is a whole multiple of ``x`` (a padded frame and its pyramid) and
        corners are not aligned, each output pixel reads at most the two input rows and
        columns around ``(i + 0.5) / stride - 0.5``: upsampling only the input rows and
        columns that the window reads, one more on each side so that nothing inside is
        clamped, gives the window of the whole-frame result with the same interpolation
        weights (equal up to float rounding), at a fraction of the cost (training on
        crops, ``model.fusion.train_crop``).
        """
        h, w = x.shape[-2:]
        sy, sx = size[0] // h, size[1] // w
        whole = window is None or self.align_corners or (h * sy, w * sx) != tuple(size)
        if whole:
            up = F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)
            if window is None:
                return up
            top, left, bottom, right = window
            return up[..., top:bottom, left:right]
        top, left, bottom, right = window
        r0, r1 = read_span(top, bottom, h, size[0], align_corners=False)
        c0, c1 = read_span(left, right, w, size[1], align_corners=False)
        up = F.interpolate(
            x[..., r0:r1, c0:c1].contiguous(),
            scale_factor=(float(sy), float(sx)),
            mode="bilinear",
            align_corners=False,
        )
        return up[..., top - r0 * sy : bottom - r0 * sy, left - c0 * sx : right - c0 * sx]

    @property
    def receptive_radius(self) -> int:
        """How far (pixels) a full-resolution output depends on the full-resolution input
        (the pixel branch's and the decoder's convolutions): a window computed with this
        margin around a region gives exactly the whole-image output on that region."""
        return sum(
            (m.kernel_size[0] // 2) * m.dilation[0]
            for part in (self.pixel, self.decoder)
            for m in part.modules()
            if isinstance(m, nn.Conv2d)
        )

    def forward(
        self,
        features: dict[str, Tensor],
        vis: Tensor,
        ir: Tensor,
        window: tuple[int, int, int, int] | None = None,
    ) -> dict[str, Tensor]:
        """``window`` = (top, left, bottom, right): compute only that part of the full-
        resolution output (the pyramid is read whole, the regions upsampled to the full
        frame and cropped); all outputs are then (B, 1, bottom - top, right - left)."""
        size = (vis.shape[-2], vis.shape[-1])
        regions = self.regions_at(features, size, window)
        if window is not None:
            top, left, bottom, right = window
            vis, ir = vis[..., top:bottom, left:right], ir[..., top:bottom, left:right]
        x0 = stack_channels([ir, vis], self.pixel.block1.body[0][0].weight)
        pixels = self.pixel_proj(self.pixel(x0))
        # pixels * hsigmoid(gate) + pixels in two full-resolution passes instead of five
        gated = (
            pixels
            if regions is None
            else torch.addcmul(pixels, pixels, F.hardsigmoid(self.gate(regions)))
        )
        hidden = self.decoder[:-1](gated)
        # The weight logits in float32 even under autocast: bf16 rounding of the logits
        # alone moves fused pixels by up to ~4e-3 (one bf16 step at |logit| 2-4).
        last = self.decoder[-1]
        with torch.autocast(hidden.device.type, enabled=False):
            logits = F.conv2d(hidden.float(), last.weight.float(), last.bias.float())
        weights = torch.sigmoid(logits)
        w_ir, w_vis = weights[:, :1], weights[:, 1:]
        lum = luminance(vis.float(), self.color)
        fused = (w_ir * ir.float() + w_vis * lum).clamp(0.0, 1.0)
        return {"fused": fused, "w_ir": w_ir, "w_vis": w_vis, "luminance": lum}
