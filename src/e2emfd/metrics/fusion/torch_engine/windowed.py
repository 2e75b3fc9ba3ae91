"""Window-based fusion metrics shared by both conventions: VIF, SSIM and Nabf.

All functions take batches of same-size greyscale images ``(B, H, W)`` in float64 (any
device) in the scale the caller chose, and return one value per image, ``(B,)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from e2emfd.metrics.fusion.torch_engine.core import (
    filter2_valid,
    filter2_valid_maps,
    gaussian_taps,
    sobel_separable,
)

# Smallest side for which every VIF scale still has a non-empty 'valid' region:
# 17 -> (9, /2) -> 9 -> (5, /2) -> 5 -> (3, /2) -> 3.
VIF_MIN_SIDE = 41


def vifp(refs: Sequence[Tensor], dist: Tensor, saturate_uint8: bool = False) -> list[Tensor]:
    """Multiscale pixel-domain VIF (Sheikh & Bovik, LIVE ``vifp_mscale``) of ``dist`` against
    each reference in ``refs``.

    Four scales; scale s uses the normalised Gaussian window of size n = 2^(5-s) + 1 and
    sigma n/5, applied as 'valid' filtering. Before scales 2-4 the images are filtered with
    that scale's window and subsampled by 2 (rows/columns 0, 2, 4, ...). With sigma_n^2 = 2
    and the LIVE 1e-10 guards, VIFp = sum log10(1 + g^2 s1^2 / (sv^2 + 2)) /
    sum log10(1 + s1^2 / 2) over all scales.

    ``saturate_uint8`` reproduces MATLAB on uint8 inputs: at scale 1 the products ref*ref,
    dist*dist and ref*dist are uint8 products and saturate at 255 before filtering (the
    means are not affected; later scales work on doubles).

    Args:
        refs: reference images, each ``(B, H, W)``, H and W >= 41.
        dist: distorted (fused) image ``(B, H, W)``.
    Returns:
        one ``(B,)`` tensor per reference.
    """
    h, w = dist.shape[-2:]
    if min(h, w) < VIF_MIN_SIDE:
        raise ValueError(f"VIF needs images of at least {VIF_MIN_SIDE}x{VIF_MIN_SIDE}, got {h}x{w}")
    eps = 1e-10
    sigma_nsq = 2.0
    refs = list(refs)
    count = len(refs)
    nums = [dist.new_zeros(dist.shape[0]) for _ in refs]
    dens = [dist.new_zeros(dist.shape[0]) for _ in refs]
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        taps = gaussian_taps(n, n / 5.0)
        if scale > 1:
            dist = filter2_valid(dist, taps, stride=2)
            refs = [filter2_valid(ref, taps, stride=2) for ref in refs]

        def product(x: Tensor, y: Tensor, scale: int = scale) -> Tensor:
            p = x * y
            return p.clamp_(max=255.0) if saturate_uint8 and scale == 1 else p

        # Maps to filter: dist, dist^2, then (ref, ref^2, ref*dist) for each reference.
        maps = [dist, product(dist, dist)]
        for ref in refs:
            maps += [ref, product(ref, ref), product(ref, dist)]
        filtered = filter2_valid_maps(maps, taps)
        mu2 = filtered[0]
        sigma2_sq = (filtered[1] - mu2 * mu2).clamp_(min=0)
        low2 = sigma2_sq < eps
        for i in range(count):
            mu1, ref_sq, cross = filtered[2 + 3 * i : 5 + 3 * i]
            sigma1_sq = ref_sq.sub_(mu1 * mu1).clamp_(min=0)
            sigma12 = cross.sub_(mu1 * mu2)
            g = sigma12 / (sigma1_sq + eps)
            sv_sq = (sigma2_sq - g * sigma12).clamp_(min=eps)
            # The LIVE guards collapse to: g = 0 where sigma1^2 or sigma2^2 is below eps or g
            # is negative (then the numerator term is 0 and sv^2 is irrelevant), and
            # sigma1^2 = 0 where it is below eps. Elsewhere sv^2 = max(sv^2, eps) as above.
            low1 = sigma1_sq < eps
            g.masked_fill_(low1 | low2 | (g < 0), 0.0)
            sigma1_sq.masked_fill_(low1, 0.0)
            num = torch.log10(g.mul_(g).mul_(sigma1_sq).div_(sv_sq.add_(sigma_nsq)).add_(1))
            nums[i] += num.sum(dim=(-2, -1))
            dens[i] += torch.log10(sigma1_sq.div_(sigma_nsq).add_(1)).sum(dim=(-2, -1))
    return [num / den for num, den in zip(nums, dens)]


def ssim(
    refs: Sequence[Tensor],
    img: Tensor,
    taps: Sequence[float],
    data_range: float,
    cov_norm: float = 1.0,
) -> list[Tensor]:
    """Mean SSIM (Wang et al. 2004) of ``img`` against each reference over the 'valid' region.

    Local statistics use the separable window ``outer(taps, taps)``; variances and the
    covariance are multiplied by ``cov_norm`` (``NP / (NP - 1)`` for a sample covariance).
    C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = ``data_range``. The mean over the valid region
    equals scikit-image's mean over the image with a (window // 2)-pixel border cropped.

    Args:
        refs: reference images, each ``(B, H, W)``.
        img: the compared (fused) image ``(B, H, W)``; H, W >= len(taps).
    Returns:
        one ``(B,)`` tensor per reference.
    """
    h, w = img.shape[-2:]
    if min(h, w) < len(taps):
        raise ValueError(f"SSIM needs images of at least {len(taps)}x{len(taps)}, got {h}x{w}")
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    maps = [img, img * img]
    for ref in refs:
        maps += [ref, ref * ref, ref * img]
    filtered = filter2_valid_maps(maps, taps)
    mu_x = filtered[0]
    var_x = cov_norm * (filtered[1] - mu_x * mu_x)
    out = []
    for i in range(len(refs)):
        mu_y, yy, xy = filtered[2 + 3 * i : 5 + 3 * i]
        var_y = cov_norm * (yy - mu_y * mu_y)
        cov = cov_norm * (xy - mu_x * mu_y)
        num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
        den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
        out.append((num / den).mean(dim=(-2, -1)))
    return out


def nabf(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Modified fusion-artefact measure N_abf of B. K. Shreyamsha Kumar (SIViP 2013).

    Petrovic's edge model with Kumar's parameters: Sobel/8 responses on a mirror-extended
    image, gv (horizontal derivative) and gh (vertical), strength g and orientation
    alpha = atan(gv / gh) (0 where both are 0); relative strength G_XF = min/max of gX, gF
    (0 if either is 0); relative orientation A_XF = | |alpha_X - alpha_F| - pi/2 | * 2/pi;
    Q_XF = sqrt(Qg Qa) with Qg = 0.9999 / (1 + exp(-19 (G - 0.5))) and
    Qa = 0.9995 / (1 + exp(-22 (A - 0.5))). Weights w_X = g_X^1.5 where g_X >= 2, else
    0.001. Artefacts count only where the fused edge is stronger than both source edges
    (gF > gA and gF > gB): N_abf = sum(n ((1 - Q_AF) w_A + (1 - Q_BF) w_B)) / sum(w_A + w_B),
    which lies in [0, 1]. The threshold 2 assumes 0-255 grey levels. ``(B, H, W) x3 -> (B,)``.
    """
    if min(f.shape[-2:]) < 2:
        raise ValueError(f"Nabf needs images of at least 2x2, got {tuple(f.shape[-2:])}")

    def edges(x: Tensor) -> tuple[Tensor, Tensor]:
        # gv = -Sx / 8 and gh = Sy / 8; scaling by 1/8 is exact, so g and the comparisons
        # are those of Kumar's sobel_fn.
        sx, sy = sobel_separable(x, mode="reflect")
        g = torch.sqrt(sx * sx + sy * sy).div_(8)
        alpha = torch.atan(sx.neg().div_(sy)).masked_fill_((sx == 0) & (sy == 0), 0.0)
        return g, alpha

    g_f, alpha_f = edges(f)
    num = f.new_zeros(f.shape[0])
    den = f.new_zeros(f.shape[0])
    stronger = None
    losses = []
    for x in (a, b):
        g, alpha = edges(x)
        # 0 / 0 where both edges vanish; Kumar's rule gives 0 there too.
        rel_g = torch.minimum(g, g_f).div_(torch.maximum(g, g_f)).nan_to_num_(nan=0.0)
        rel_a = alpha.sub_(alpha_f).abs_().sub_(math.pi / 2).abs_().mul_(2 / math.pi)
        q_g = rel_g.sub_(0.5).mul_(-19).exp_().add_(1).reciprocal_().mul_(0.9999)
        q_a = rel_a.sub_(0.5).mul_(-22).exp_().add_(1).reciprocal_().mul_(0.9995)
        weight = torch.where(g >= 2, g * torch.sqrt(g), 0.001)
        losses.append(q_g.mul_(q_a).sqrt_().neg_().add_(1).mul_(weight))
        den += weight.sum(dim=(-2, -1))
        stronger = g_f > g if stronger is None else stronger & (g_f > g)
    assert stronger is not None
    num = torch.where(stronger, losses[0] + losses[1], 0.0).sum(dim=(-2, -1))
    return num / den
