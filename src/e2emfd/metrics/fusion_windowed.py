"""Window-based fusion metrics shared by both conventions: VIF, SSIM and Nabf.

All functions take batches of same-size greyscale images ``(B, H, W)`` in float64 (any
device) in the scale the caller chose, and return one value per image, ``(B,)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from e2emfd.metrics.fusion_core import filter2_valid, gaussian_taps

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
    nums = [dist.new_zeros(dist.shape[0]) for _ in refs]
    dens = [dist.new_zeros(dist.shape[0]) for _ in refs]
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        taps = gaussian_taps(n, n / 5.0)
        if scale > 1:
            subsampled = filter2_valid(torch.stack([dist, *refs]), taps, stride=2)
            dist, refs = subsampled[0], list(subsampled[1:])

        def product(x: Tensor, y: Tensor, scale: int = scale) -> Tensor:
            p = x * y
            return p.clamp_(max=255.0) if saturate_uint8 and scale == 1 else p

        # One stacked filtering call: dist, dist^2, then (ref, ref^2, ref*dist) per reference.
        maps = [dist, product(dist, dist)]
        for ref in refs:
            maps += [ref, product(ref, ref), product(ref, dist)]
        filtered = filter2_valid(torch.stack(maps), taps)
        mu2 = filtered[0]
        sigma2_sq = (filtered[1] - mu2 * mu2).clamp_(min=0)
        for i in range(len(refs)):
            mu1, ref_sq, cross = filtered[2 + 3 * i : 5 + 3 * i]
            sigma1_sq = (ref_sq - mu1 * mu1).clamp_(min=0)
            sigma12 = cross - mu1 * mu2
            g = sigma12 / (sigma1_sq + eps)
            sv_sq = sigma2_sq - g * sigma12
            # The LIVE guards, in this order (later ones see the earlier fixes).
            low1 = sigma1_sq < eps
            g = torch.where(low1, 0.0, g)
            sv_sq = torch.where(low1, sigma2_sq, sv_sq)
            sigma1_sq = torch.where(low1, 0.0, sigma1_sq)
            low2 = sigma2_sq < eps
            g = torch.where(low2, 0.0, g)
            sv_sq = torch.where(low2, 0.0, sv_sq)
            negative = g < 0
            sv_sq = torch.where(negative, sigma2_sq, sv_sq)
            g = torch.where(negative, 0.0, g)
            sv_sq = sv_sq.clamp(min=eps)
            nums[i] += torch.log10(1 + g * g * sigma1_sq / (sv_sq + sigma_nsq)).sum(dim=(-2, -1))
            dens[i] += torch.log10(1 + sigma1_sq / sigma_nsq).sum(dim=(-2, -1))
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
    filtered = filter2_valid(torch.stack(maps), taps)
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


def _sobel_reflect(x: Tensor) -> tuple[Tensor, Tensor]:
    """Kumar's ``sobel_fn``: 3x3 Sobel correlation divided by 8 on a mirror-extended image
    (edge pixel not repeated). Returns (horizontal derivative gv, vertical derivative gh),
    named as in the original code. ``(B, H, W) -> 2 x (B, H, W)``."""
    xp = torch.nn.functional.pad(x.unsqueeze(1), (1, 1, 1, 1), mode="reflect").squeeze(1)
    h, w = x.shape[-2:]

    def at(dy: int, dx: int) -> Tensor:
        return xp[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    left = at(-1, -1) + 2 * at(0, -1) + at(1, -1)
    right = at(-1, 1) + 2 * at(0, 1) + at(1, 1)
    top = at(-1, -1) + 2 * at(-1, 0) + at(-1, 1)
    bottom = at(1, -1) + 2 * at(1, 0) + at(1, 1)
    return (right - left) / 8, (bottom - top) / 8


def nabf(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Modified fusion-artefact measure N_abf of B. K. Shreyamsha Kumar (SIViP 2013).

    Petrovic's edge model with Kumar's parameters: Sobel/8 responses on a mirror-extended
    image, strength g and orientation alpha = atan(gv / gh) (0 where both are 0); relative
    strength G_XF = min/max of gX, gF (0 if either is 0); relative orientation
    A_XF = | |alpha_X - alpha_F| - pi/2 | * 2/pi; Q_XF = sqrt(Qg Qa) with
    Qg = 0.9999 / (1 + exp(-19 (G - 0.5))), Qa = 0.9995 / (1 + exp(-22 (A - 0.5))).
    Weights w_X = g_X^1.5 where g_X >= 2, else 0.001. Artefacts are counted only where
    the fused edge is stronger than both source edges (gF > gA and gF > gB):
    N_abf = sum(n * ((1 - Q_AF) w_A + (1 - Q_BF) w_B)) / sum(w_A + w_B), in [0, 1].
    The threshold 2 assumes 0-255 grey levels. ``(B, H, W) x3 -> (B,)``.
    """
    gv_f, gh_f = _sobel_reflect(f)
    g_f = torch.sqrt(gh_f * gh_f + gv_f * gv_f)
    alpha_f = torch.where((gv_f == 0) & (gh_f == 0), 0.0, torch.atan(gv_f / gh_f))

    def loss_term(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        gv, gh = _sobel_reflect(x)
        g = torch.sqrt(gh * gh + gv * gv)
        alpha = torch.where((gv == 0) & (gh == 0), 0.0, torch.atan(gv / gh))
        rel_g = torch.where(
            (g == 0) | (g_f == 0), 0.0, torch.minimum(g, g_f) / torch.maximum(g, g_f)
        )
        rel_a = torch.abs(torch.abs(alpha - alpha_f) - math.pi / 2) * (2 / math.pi)
        q_g = 0.9999 / (1 + torch.exp(-19 * (rel_g - 0.5)))
        q_a = 0.9995 / (1 + torch.exp(-22 * (rel_a - 0.5)))
        weight = torch.where(g >= 2, g**1.5, 0.001)
        return (1 - torch.sqrt(q_g * q_a)) * weight, weight, g

    loss_a, w_a, g_a = loss_term(a)
    loss_b, w_b, g_b = loss_term(b)
    artefact = (g_f > g_a) & (g_f > g_b)
    num = torch.where(artefact, loss_a + loss_b, 0.0).sum(dim=(-2, -1))
    return num / (w_a + w_b).sum(dim=(-2, -1))
